package raftstore

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/nodedb/nodedb-cluster/internal/storage"
)

// Exactly-once records of idle clients expire. Every write of a client with
// an identity leaves a client record in its vShard (dedup.go), and a client
// that goes away never removes its records: without expiry a node's records
// grow with every client process that ever wrote. A record whose last write
// is older than Config.ClientIdleExpiry is dropped by a sweep that a group's
// leader proposes as log entries, so every replica drops the same records
// at the same point of the log:
//
//	kind(1)=5 cutoff(8) vshard(4) client(8) limit(4)
//
// Applying the entry drops the group's client records whose last write is
// before cutoff (the proposer's clock minus the expiry), scanning from the
// record of (vshard, client) on and stopping after limit records. All three
// are fixed in the entry, so that replicas with other settings or versions
// apply it alike;
// the leader proposes the next entry from where that one stopped, until a
// scan reaches the end of the group's range. A sweep starts every
// ClientIdleExpiry/8.
//
// What expiry gives up: a write retried more than ClientIdleExpiry after
// the client's last write in that vShard was applied is no longer
// recognised, and applies again. The Go client never retries a write for
// longer than client.MaxRetryAge (10 minutes), well inside the default hour.
// Records in the format before 'c' records ('w') carry no time and are
// left alone; a client's next write there replaces them.
const (
	kindExpireClients byte = 5
	expiryLength           = 1 + 8 + 4 + 8 + 4
	maxExpiryLimit         = 1 << 20 // an entry asking for more is malformed
)

// maxExpiryScan is the limit this node proposes: it bounds the client
// records one expiry entry looks at, so that applying it stays short
// whatever the number of records (a variable for tests).
var maxExpiryScan = 4096

// expiryCursor is where a sweep continues: the client record of client in
// vshard, or the start of the group's range when zero.
type expiryCursor struct {
	vshard uint32
	client uint64
}

type expiryEntry struct {
	cutoff int64 // records last written before this (UnixNano) go
	from   expiryCursor
	limit  uint32 // records looked at, at most
}

func encodeExpiry(x expiryEntry) []byte {
	b := make([]byte, 0, expiryLength)
	b = append(b, kindExpireClients)
	b = binary.BigEndian.AppendUint64(b, uint64(x.cutoff))
	b = binary.BigEndian.AppendUint32(b, x.from.vshard)
	b = binary.BigEndian.AppendUint64(b, x.from.client)
	return binary.BigEndian.AppendUint32(b, x.limit)
}

func decodeExpiry(b []byte) (expiryEntry, error) {
	if len(b) != expiryLength || b[0] != kindExpireClients {
		return expiryEntry{}, fmt.Errorf("%w: client expiry entry of %d bytes", errMalformedEntry, len(b))
	}
	x := expiryEntry{
		cutoff: int64(binary.BigEndian.Uint64(b[1:])),
		from:   expiryCursor{vshard: binary.BigEndian.Uint32(b[9:]), client: binary.BigEndian.Uint64(b[13:])},
		limit:  binary.BigEndian.Uint32(b[21:]),
	}
	if x.limit == 0 || x.limit > maxExpiryLimit {
		return expiryEntry{}, fmt.Errorf("%w: client expiry entry with a limit of %d records", errMalformedEntry, x.limit)
	}
	return x, nil
}

// expirySweep is a leader's progress through its group's client records.
// Owned by the replica, guarded by its mutex.
type expirySweep struct {
	lastEnd time.Time    // when the last sweep's last entry was proposed (or the replica loaded)
	cursor  expiryCursor // where the sweep in progress continues
	running bool         // a sweep is in progress
	pending bool         // an entry is proposed and not yet applied
	pendAt  time.Time    // when it was proposed
}

// maybeProposeExpiry starts or continues a sweep if this replica leads its
// group. Caller holds r.mu.
func (r *replica) maybeProposeExpiry() {
	h := r.h
	ttl := h.cfg.ClientIdleExpiry
	if ttl <= 0 || !r.isLeader.Load() {
		return
	}
	now := h.cfg.Now()
	s := &r.expiry
	if s.pending {
		// An entry lost to a leadership change is never applied; after a
		// while, propose again.
		if now.Sub(s.pendAt) < 10*time.Duration(h.cfg.ElectionTicks)*h.cfg.TickInterval {
			return
		}
		s.pending = false
	}
	if !s.running && now.Sub(s.lastEnd) < ttl/8 {
		return
	}
	x := expiryEntry{cutoff: now.Add(-ttl).UnixNano(), from: s.cursor, limit: uint32(maxExpiryScan)}
	if err := r.rn.Propose(encodeExpiry(x)); err != nil {
		return // proposed again at a later tick
	}
	s.running, s.pending, s.pendAt = true, true, now
	h.stats.ClientExpiriesProposed.Add(1)
}

// applyExpiry drops the client records x covers into b. Caller holds r.mu.
func (r *replica) applyExpiry(b *pebble.Batch, x expiryEntry) error {
	next, done, err := r.expireClients(b, x)
	if err != nil {
		return err
	}
	s := &r.expiry
	s.pending = false
	if done {
		// The sweep ends as of the time its last entry was proposed (the
		// clock may have moved on since).
		s.running, s.cursor = false, expiryCursor{}
		s.lastEnd = time.Unix(0, x.cutoff).Add(r.h.cfg.ClientIdleExpiry)
	} else {
		s.running, s.cursor = true, next
	}
	return nil
}

// expireClients drops, into b, the group's client records from x.from on
// whose last write is before x.cutoff, with their spilled results, looking at
// no more than x.limit records. It returns where the next scan starts,
// or done when this one reached the end of the group's range. Deterministic:
// it depends only on x and the group's state.
func (r *replica) expireClients(b *pebble.Batch, x expiryEntry) (next expiryCursor, done bool, err error) {
	g := r.group
	upper := storage.PrefixEnd(storage.GroupStatePrefix(g))
	it, err := b.NewIter(&pebble.IterOptions{UpperBound: upper})
	if err != nil {
		return next, false, fmt.Errorf("expire clients of %s: %w", g, err)
	}
	type expired struct {
		vs      uint32
		client  uint64
		spilled []uint64 // sequences whose results have their own key
	}
	var drop []expired
	scanned := 0
	valid := it.SeekGE(clientKey(g, x.from.vshard, x.from.client))
	done = true
	for valid {
		k := it.Key()
		vs, sub, ok := vshardSubOf(k)
		if !ok {
			break // nothing but vShard areas lives in a group's state range
		}
		if sub != storage.SubClient {
			// Before this vShard's client records (no sub-area sorts before
			// them today), or past them: on to the next vShard's.
			if sub < storage.SubClient {
				valid = it.SeekGE(clientKey(g, vs, 0))
				continue
			}
			if vs == math.MaxUint32 {
				break
			}
			valid = it.SeekGE(clientKey(g, vs+1, 0))
			continue
		}
		if len(k) != clientKeyLength {
			valid = it.Next() // not a record of ours
			continue
		}
		client := binary.BigEndian.Uint64(k[len(k)-8:])
		if scanned == int(x.limit) {
			next, done = expiryCursor{vshard: vs, client: client}, false
			break
		}
		scanned++
		rec, ok := decodeClientRecord(it.Value())
		if !ok {
			// Left alone, as every replica does: a write of this client
			// reports the corruption.
			r.h.log.Warn("undecodable client record left by the expiry sweep", "group", uint64(g), "vshard", vs, "client", client)
		} else if rec.lastWrite < x.cutoff {
			d := expired{vs: vs, client: client}
			for _, l := range rec.live {
				if l.spilled {
					d.spilled = append(d.spilled, l.seq)
				}
			}
			drop = append(drop, d)
		}
		valid = it.Next()
	}
	if err := it.Close(); err != nil {
		return next, false, fmt.Errorf("expire clients of %s: %w", g, err)
	}
	for _, d := range drop {
		for _, seq := range d.spilled {
			if err := b.Delete(dedupKey(g, d.vs, d.client, seq), nil); err != nil {
				return next, false, err
			}
		}
		if err := b.Delete(clientKey(g, d.vs, d.client), nil); err != nil {
			return next, false, err
		}
		delete(r.clients, clientID{d.vs, d.client})
	}
	r.h.stats.ClientRecordsExpired.Add(uint64(len(drop)))
	return next, done, nil
}

// clientKeyLength is the length of every clientKey.
const clientKeyLength = 1 + 8 + 4 + 1 + 8

// vshardSubOf returns the vShard and sub-area of a key in a group's state
// range.
func vshardSubOf(k []byte) (vs uint32, sub byte, ok bool) {
	const at = 1 + 8 // prefix, group
	if len(k) < at+4+1 {
		return 0, 0, false
	}
	return binary.BigEndian.Uint32(k[at:]), k[at+4], true
}
