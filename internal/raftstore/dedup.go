package raftstore

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/storage"
)

// Exactly-once records live in the vShard's range, so they move with it:
//
//	'c' client(8)        -> version(1)=1 lastWrite(varint) watermark(uvarint) count(uvarint)
//	                        { seq(uvarint) n(uvarint) result(n-1) }*
//	'd' client(8) seq(8) -> timestamp(8) result        (spilled results only)
//
// The 'c' record of a client lists the sequences it has results for in this
// vShard, the watermark below which it promised never to retry, and the
// time of its last write (for a future expiry of idle clients). Small
// results are kept in the record itself (n > 0), so the common write costs
// one key written, not three (result, client record, deletion of the result
// it replaces): a memtable insertion is the most expensive step of an apply.
// A result that would make the record too large is spilled to its own 'd'
// key (n = 0), so a client that keeps many writes in flight does not make
// every write rewrite a large record. Which results are inline depends only
// on the record and the result, so every replica decides the same.
//
// Records written before the 'c' format ('w' client(8) -> watermark count
// seq*, every result in a 'd' key) are still read; the client's next write
// replaces them with a 'c' record.

// maxLiveSeqs bounds the live sequences one client record lists. A client
// that keeps more writes unacknowledged in one vShard loses exactly-once
// protection for its oldest ones (they are refused as stale, never applied
// twice).
const maxLiveSeqs = 1024

// maxInlineResult and maxInlineBytes bound the results kept in a client
// record: one result, and all of a record's together.
const (
	maxInlineResult = 256
	maxInlineBytes  = 2048
)

const clientRecordVersion = 1

// liveSeq is a sequence of a client with its result, or with spilled set if
// the result is in the sequence's 'd' key.
type liveSeq struct {
	seq     uint64
	res     []byte
	spilled bool
}

type clientRecord struct {
	lastWrite int64
	watermark uint64
	live      []liveSeq // sorted by seq
	inline    int       // bytes of the inline results
	legacy    bool      // read from a 'w' record: its next store replaces it
}

func (rec *clientRecord) find(seq uint64) (int, bool) {
	return slices.BinarySearchFunc(rec.live, seq, func(l liveSeq, s uint64) int { return cmp.Compare(l.seq, s) })
}

func dedupKey(g ids.GroupID, vs uint32, client, seq uint64) []byte {
	k := storage.AppendVShardSubPrefix(make([]byte, 0, 30), g, vs, storage.SubDedup)
	k = binary.BigEndian.AppendUint64(k, client)
	return binary.BigEndian.AppendUint64(k, seq)
}

func clientKey(g ids.GroupID, vs uint32, client uint64) []byte {
	k := storage.AppendVShardSubPrefix(make([]byte, 0, 22), g, vs, storage.SubClient)
	return binary.BigEndian.AppendUint64(k, client)
}

func legacyClientKey(g ids.GroupID, vs uint32, client uint64) []byte {
	k := storage.AppendVShardSubPrefix(make([]byte, 0, 22), g, vs, storage.SubWatermark)
	return binary.BigEndian.AppendUint64(k, client)
}

// decodeClientRecord decodes a 'c' record. v is owned by the record.
func decodeClientRecord(v []byte) (clientRecord, bool) {
	var rec clientRecord
	if len(v) == 0 || v[0] != clientRecordVersion {
		return rec, false
	}
	r := storage.NewRecordReader(v[1:])
	rec.lastWrite = r.Varint()
	rec.watermark = r.Uvarint()
	cnt := r.Uvarint()
	if r.Err() != nil || cnt > uint64(len(r.Rest()))/2 || cnt > maxLiveSeqs+1 {
		return rec, false
	}
	rec.live = make([]liveSeq, 0, cnt)
	for range cnt {
		l := liveSeq{seq: r.Uvarint()}
		n := r.Uvarint()
		if n == 0 {
			l.spilled = true
		} else {
			l.res = r.Bytes(n - 1)
			rec.inline += len(l.res)
		}
		if r.Err() != nil || (len(rec.live) > 0 && rec.live[len(rec.live)-1].seq >= l.seq) {
			return rec, false
		}
		rec.live = append(rec.live, l)
	}
	return rec, len(r.Rest()) == 0
}

func encodeClientRecord(rec *clientRecord) []byte {
	v := make([]byte, 0, 16+4*len(rec.live)+rec.inline)
	v = append(v, clientRecordVersion)
	v = binary.AppendVarint(v, rec.lastWrite)
	v = binary.AppendUvarint(v, rec.watermark)
	v = binary.AppendUvarint(v, uint64(len(rec.live)))
	for _, l := range rec.live {
		v = binary.AppendUvarint(v, l.seq)
		if l.spilled {
			v = append(v, 0)
			continue
		}
		v = binary.AppendUvarint(v, uint64(len(l.res))+1)
		v = append(v, l.res...)
	}
	return v
}

// decodeLegacyClientRecord decodes a 'w' record: every live sequence's
// result is in its 'd' key.
func decodeLegacyClientRecord(v []byte) (clientRecord, bool) {
	rec := clientRecord{legacy: true}
	r := storage.NewRecordReader(v)
	rec.watermark = r.Uvarint()
	cnt := r.Uvarint()
	if r.Err() != nil || cnt > uint64(len(r.Rest())) {
		return rec, false
	}
	rec.live = make([]liveSeq, 0, cnt)
	for range cnt {
		s := r.Uvarint()
		if r.Err() != nil {
			return rec, false
		}
		rec.live = append(rec.live, liveSeq{seq: s, spilled: true})
	}
	return rec, true
}

func loadClientRecord(b *pebble.Batch, g ids.GroupID, vs uint32, client uint64) (clientRecord, error) {
	v, ok, err := storage.Get(b, clientKey(g, vs, client))
	if err != nil {
		return clientRecord{}, err
	}
	if ok {
		rec, ok := decodeClientRecord(v)
		if !ok {
			return rec, fmt.Errorf("%w: client record of %d", storage.ErrCorrupt, client)
		}
		return rec, nil
	}
	v, ok, err = storage.Get(b, legacyClientKey(g, vs, client))
	if err != nil || !ok {
		return clientRecord{}, err
	}
	rec, ok := decodeLegacyClientRecord(v)
	if !ok {
		return rec, fmt.Errorf("%w: client record of %d", storage.ErrCorrupt, client)
	}
	slices.SortFunc(rec.live, func(a, b liveSeq) int { return cmp.Compare(a.seq, b.seq) })
	return rec, nil
}

func storeClientRecord(b *pebble.Batch, g ids.GroupID, vs uint32, client uint64, rec *clientRecord) error {
	if rec.legacy {
		if err := b.Delete(legacyClientKey(g, vs, client), nil); err != nil {
			return err
		}
		rec.legacy = false
	}
	return b.Set(clientKey(g, vs, client), encodeClientRecord(rec), nil)
}

// The replicas' storage.ValueCaches share valueCacheBudget, each at most
// valueCacheMost (sized for a group's working set of recently written keys)
// and at least minCacheShare: 16 groups get 1 MiB each, 256 get 64 KiB.
const (
	valueCacheBudget = 16 << 20
	valueCacheMost   = 1 << 20
)

// maxCachedClients bounds a replica's cache of client records; past it the
// cache starts over.
const maxCachedClients = 1024

type clientID struct {
	vshard uint32
	client uint64
}

// dedupCache mirrors, write-through, the client records a replica has read or
// written, so the common write reads none from storage. It holds exactly what
// storage holds: it is only updated together with the apply batch, and it is
// dropped whenever the vShard ranges change behind it (snapshot install,
// vShard import). Owned by the replica, guarded by its mutex.
type dedupCache map[clientID]*clientRecord

func (c dedupCache) get(b *pebble.Batch, g ids.GroupID, vs uint32, client uint64) (*clientRecord, error) {
	id := clientID{vs, client}
	if rec := c[id]; rec != nil {
		return rec, nil
	}
	rec, err := loadClientRecord(b, g, vs, client)
	if err != nil {
		return nil, err
	}
	if len(c) >= maxCachedClients {
		clear(c)
	}
	c[id] = &rec
	return &rec, nil
}

// lookup reports whether (client, seq) was already applied in this vShard
// (and its result), or is below the client's watermark.
func (c dedupCache) lookup(b *pebble.Batch, g ids.GroupID, vs uint32, client, seq uint64) (res []byte, found, stale bool, err error) {
	rec, err := c.get(b, g, vs, client)
	if err != nil {
		return nil, false, false, err
	}
	if seq < rec.watermark {
		return nil, false, true, nil
	}
	i, ok := rec.find(seq)
	if !ok {
		return nil, false, false, nil
	}
	if !rec.live[i].spilled {
		return rec.live[i].res, true, false, nil
	}
	v, ok, err := storage.Get(b, dedupKey(g, vs, client, seq))
	if err != nil {
		return nil, false, false, err
	}
	if !ok || len(v) < 8 {
		return nil, false, false, fmt.Errorf("%w: exactly-once record of client %d seq %d", storage.ErrCorrupt, client, seq)
	}
	return v[8:], true, false, nil
}

// record remembers the result of (client, seq) and forgets results the
// client will never ask for again. res is kept by the record.
func (c dedupCache) record(b *pebble.Batch, g ids.GroupID, vs uint32, client, seq, ackedBelow uint64, ts int64, res []byte) error {
	rec, err := c.get(b, g, vs, client)
	if err != nil {
		return err
	}
	rec.lastWrite = ts
	if ackedBelow > rec.watermark {
		if err := rec.dropBelow(b, g, vs, client, ackedBelow); err != nil {
			return err
		}
	}
	// A client that says it will never retry seq itself needs no result.
	if i, ok := rec.find(seq); !ok && seq >= rec.watermark {
		l := liveSeq{seq: seq, res: res}
		if len(res) > maxInlineResult || rec.inline+len(res) > maxInlineBytes {
			v := make([]byte, 8, 8+len(res))
			binary.BigEndian.PutUint64(v, uint64(ts))
			if err := b.Set(dedupKey(g, vs, client, seq), append(v, res...), nil); err != nil {
				return err
			}
			l = liveSeq{seq: seq, spilled: true}
		}
		rec.inline += len(l.res)
		rec.live = slices.Insert(rec.live, i, l)
	}
	if len(rec.live) > maxLiveSeqs {
		if err := rec.dropBelow(b, g, vs, client, rec.live[len(rec.live)-maxLiveSeqs].seq); err != nil {
			return err
		}
	}
	return storeClientRecord(b, g, vs, client, rec)
}

// dropBelow raises the watermark to w and forgets the results below it.
func (rec *clientRecord) dropBelow(b *pebble.Batch, g ids.GroupID, vs uint32, client, w uint64) error {
	rec.watermark = w
	n := 0
	for n < len(rec.live) && rec.live[n].seq < w {
		l := rec.live[n]
		if l.spilled {
			if err := b.Delete(dedupKey(g, vs, client, l.seq), nil); err != nil {
				return err
			}
		}
		rec.inline -= len(l.res)
		n++
	}
	rec.live = slices.Delete(rec.live, 0, n)
	return nil
}
