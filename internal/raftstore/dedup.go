package raftstore

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/storage"
)

// Exactly-once records live in the vShard's range, so they move with it:
//
//	'd' client(8) seq(8) -> timestamp(8) result
//	'w' client(8)        -> watermark(uvarint) count(uvarint) seq(uvarint)*
//
// The 'w' record of a client lists the sequences it has records for in this
// vShard and the watermark below which it promised never to retry. Keeping
// the live sequences in one record makes the common write cost one read and
// two writes: a new sequence is recognized from the client record alone, and
// records below a raised watermark are deleted by key without a scan.

// maxLiveSeqs bounds the live sequences one client record lists. A client
// that keeps more writes unacknowledged in one vShard loses exactly-once
// protection for its oldest ones (they are refused as stale, never applied
// twice).
const maxLiveSeqs = 1024

type clientRecord struct {
	watermark uint64
	live      []uint64 // sorted
}

func dedupKey(g ids.GroupID, vs uint32, client, seq uint64) []byte {
	k := storage.AppendVShardSubPrefix(make([]byte, 0, 30), g, vs, storage.SubDedup)
	k = binary.BigEndian.AppendUint64(k, client)
	return binary.BigEndian.AppendUint64(k, seq)
}

func clientKey(g ids.GroupID, vs uint32, client uint64) []byte {
	k := storage.AppendVShardSubPrefix(make([]byte, 0, 22), g, vs, storage.SubWatermark)
	return binary.BigEndian.AppendUint64(k, client)
}

func loadClientRecord(b *pebble.Batch, g ids.GroupID, vs uint32, client uint64) (clientRecord, error) {
	var rec clientRecord
	v, ok, err := storage.Get(b, clientKey(g, vs, client))
	if err != nil || !ok {
		return rec, err
	}
	wm, n := binary.Uvarint(v)
	if n <= 0 {
		return rec, fmt.Errorf("%w: client record of %d", storage.ErrCorrupt, client)
	}
	v = v[n:]
	cnt, n := binary.Uvarint(v)
	if n <= 0 || cnt > uint64(len(v)) {
		return rec, fmt.Errorf("%w: client record of %d", storage.ErrCorrupt, client)
	}
	v = v[n:]
	rec.watermark = wm
	rec.live = make([]uint64, 0, cnt)
	for range cnt {
		s, n := binary.Uvarint(v)
		if n <= 0 {
			return rec, fmt.Errorf("%w: client record of %d", storage.ErrCorrupt, client)
		}
		v = v[n:]
		rec.live = append(rec.live, s)
	}
	return rec, nil
}

func storeClientRecord(b *pebble.Batch, g ids.GroupID, vs uint32, client uint64, rec *clientRecord) error {
	v := binary.AppendUvarint(nil, rec.watermark)
	v = binary.AppendUvarint(v, uint64(len(rec.live)))
	for _, s := range rec.live {
		v = binary.AppendUvarint(v, s)
	}
	return b.Set(clientKey(g, vs, client), v, nil)
}

// valueCacheBytes bounds each replica's storage.ValueCache. Sized for a
// group's working set of recently written keys; 16 groups per node make
// 16 MiB at most.
const valueCacheBytes = 1 << 20

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

// lookupDedup reports whether (client, seq) was already applied in this
// vShard (and its result), or is below the client's watermark.
func (c dedupCache) lookup(b *pebble.Batch, g ids.GroupID, vs uint32, client, seq uint64) (res []byte, found, stale bool, err error) {
	rec, err := c.get(b, g, vs, client)
	if err != nil {
		return nil, false, false, err
	}
	if seq < rec.watermark {
		return nil, false, true, nil
	}
	if _, ok := slices.BinarySearch(rec.live, seq); !ok {
		return nil, false, false, nil
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

// record remembers the result of (client, seq) and forgets records the
// client will never retry.
func (c dedupCache) record(b *pebble.Batch, g ids.GroupID, vs uint32, client, seq, ackedBelow uint64, ts int64, res []byte) error {
	rec, err := c.get(b, g, vs, client)
	if err != nil {
		return err
	}
	v := make([]byte, 8, 8+len(res))
	binary.BigEndian.PutUint64(v, uint64(ts))
	if err := b.Set(dedupKey(g, vs, client, seq), append(v, res...), nil); err != nil {
		return err
	}
	if i, ok := slices.BinarySearch(rec.live, seq); !ok {
		rec.live = slices.Insert(rec.live, i, seq)
	}
	if len(rec.live) > maxLiveSeqs {
		ackedBelow = max(ackedBelow, rec.live[len(rec.live)-maxLiveSeqs])
	}
	if ackedBelow > rec.watermark {
		rec.watermark = ackedBelow
		n := 0
		for n < len(rec.live) && rec.live[n] < ackedBelow {
			if err := b.Delete(dedupKey(g, vs, client, rec.live[n]), nil); err != nil {
				return err
			}
			n++
		}
		rec.live = rec.live[n:]
	}
	return storeClientRecord(b, g, vs, client, rec)
}
