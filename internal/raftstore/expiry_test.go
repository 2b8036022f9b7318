package raftstore

import (
	"bytes"
	"context"
	"errors"
	"math"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/kv"
	"github.com/nodedb/nodedb-cluster/internal/storage"
)

func TestExpiryEntryRoundTrip(t *testing.T) {
	for _, x := range []expiryEntry{
		{limit: 1},
		{cutoff: -5, from: expiryCursor{vshard: 1, client: 2}, limit: 4096},
		{cutoff: math.MaxInt64, from: expiryCursor{vshard: math.MaxUint32, client: math.MaxUint64}, limit: maxExpiryLimit},
	} {
		got, err := decodeExpiry(encodeExpiry(x))
		if err != nil || got != x {
			t.Fatalf("%+v: decoded %+v, %v", x, got, err)
		}
	}
	good := encodeExpiry(expiryEntry{cutoff: 9, limit: 10})
	for _, bad := range [][]byte{nil, good[:len(good)-1], append(append([]byte(nil), good...), 0), append([]byte{kindTruncate}, good[1:]...),
		encodeExpiry(expiryEntry{limit: 0}), encodeExpiry(expiryEntry{limit: maxExpiryLimit + 1})} {
		if _, err := decodeExpiry(bad); !errors.Is(err, errMalformedEntry) {
			t.Fatalf("% x: %v, want a malformed entry", bad, err)
		}
	}
}

// A sweep drops exactly the records last written before its cutoff, with
// their spilled results, in every vShard of the group and no other group,
// leaves user data alone, visits every record once however it is cut into
// entries, and forgets the dropped records in the replica's cache.
func TestExpireClientsScan(t *testing.T) {
	eng := openDedupEngine(t)
	vshards := []uint32{0, 42, 43, 1000, math.MaxUint32}
	other := dedupGroup + 1
	big := bytes.Repeat([]byte("r"), maxInlineResult+1) // spilled to a 'd' key
	setup := eng.DB().NewIndexedBatch()
	writers := map[ids.GroupID]dedupCache{dedupGroup: {}, other: {}}
	for _, vs := range vshards {
		for client := uint64(1); client <= 5; client++ {
			res := []byte("ok")
			if client == 2 {
				res = big
			}
			for _, g := range []ids.GroupID{dedupGroup, other} {
				if err := writers[g].record(setup, g, vs, client, 1, 0, int64(client*100), res); err != nil {
					t.Fatal(err)
				}
			}
		}
		// User data on both sides of the client records.
		user := storage.AppendVShardSubPrefix(nil, dedupGroup, vs, storage.SubUser)
		if err := setup.Set(append(user, "key"...), []byte("value"), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := setup.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	countKeys := func(g ids.GroupID) (clients, results, user int) {
		t.Helper()
		it, err := eng.DB().NewIter(&pebble.IterOptions{LowerBound: storage.GroupStatePrefix(g), UpperBound: storage.PrefixEnd(storage.GroupStatePrefix(g))})
		if err != nil {
			t.Fatal(err)
		}
		defer it.Close()
		for it.First(); it.Valid(); it.Next() {
			switch _, sub, _ := vshardSubOf(it.Key()); sub {
			case storage.SubClient:
				clients++
			case storage.SubDedup:
				results++
			case storage.SubUser:
				user++
			}
		}
		return
	}
	if c, d, u := countKeys(dedupGroup); c != 25 || d != 5 || u != 5 {
		t.Fatalf("set up %d client records, %d spilled results, %d user keys", c, d, u)
	}

	r := &replica{h: &Host{}, group: dedupGroup, clients: dedupCache{}}
	// The replica's cache holds a record that expires and one that stays.
	for _, client := range []uint64{1, 4} {
		if _, err := r.clients.get(setup, dedupGroup, 42, client); err != nil {
			t.Fatal(err)
		}
	}
	x := expiryEntry{cutoff: 300, limit: 3} // clients 1 and 2 (written at 100, 200) go
	entries := 0
	for {
		entries++
		b := eng.DB().NewIndexedBatch()
		next, done, err := r.expireClients(b, x)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(pebble.NoSync); err != nil {
			t.Fatal(err)
		}
		if done {
			break
		}
		if next == x.from || entries > 100 {
			t.Fatalf("sweep stuck at %+v", next)
		}
		x.from = next
	}
	// 25 records, 3 per entry: the ninth entry looks at the last one.
	if entries != 9 {
		t.Fatalf("sweep took %d entries, want 9 (each record once)", entries)
	}
	if c, d, u := countKeys(dedupGroup); c != 15 || d != 0 || u != 5 {
		t.Fatalf("after the sweep: %d client records (want 15), %d spilled results (want 0), %d user keys (want 5)", c, d, u)
	}
	if c, d, _ := countKeys(other); c != 25 || d != 5 {
		t.Fatalf("another group's records touched: %d client records, %d spilled results", c, d)
	}
	if got := r.h.stats.ClientRecordsExpired.Load(); got != 10 {
		t.Fatalf("%d records counted as expired, want 10", got)
	}
	if _, ok := r.clients[clientID{42, 1}]; ok {
		t.Fatal("the cache still holds an expired record")
	}
	if _, ok := r.clients[clientID{42, 4}]; !ok {
		t.Fatal("the cache lost a live record")
	}
	for _, vs := range vshards {
		for client := uint64(1); client <= 5; client++ {
			b := eng.DB().NewIndexedBatch()
			rec, err := loadClientRecord(b, dedupGroup, vs, client)
			_ = b.Close()
			if err != nil {
				t.Fatal(err)
			}
			if kept := len(rec.live) > 0; kept != (client >= 3) {
				t.Fatalf("vShard %d client %d: record kept %v", vs, client, kept)
			}
		}
	}
}

// fakeClock is a settable clock for Config.Now.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }
func newFakeClock(at time.Time) *fakeClock   { c := &fakeClock{}; c.ns.Store(at.UnixNano()); return c }

// On a running node, the leader sweeps its group: the exactly-once record of
// a client idle for longer than ClientIdleExpiry goes (a retry of its last
// write then applies again, the documented price), an active client's stays
// (its retry is answered from the record, not applied twice).
func TestIdleClientRecordsExpire(t *testing.T) {
	clock := newFakeClock(time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC))
	h, eng := openTestHost(t, t.TempDir(), 4<<20, Config{ClientIdleExpiry: time.Hour, Now: clock.Now})
	defer func() { h.Stop(); _ = eng.Close() }()
	leadGroupAlone(t, h)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	put := func(client, seq uint64, vs uint32, key string) uint64 {
		t.Helper()
		cmd, err := kv.EncodePut([]byte(key), []byte("v"), nil, kv.DefaultLimits())
		if err != nil {
			t.Fatal(err)
		}
		res, err := h.Propose(ctx, 1, Proposal{VShard: vs, Client: client, Seq: seq, Payload: cmd})
		if err != nil {
			t.Fatalf("client %d seq %d: %v", client, seq, err)
		}
		r, err := kv.DecodeResult(res)
		if err != nil || len(r.Ops) != 1 {
			t.Fatalf("result %+v: %v", r, err)
		}
		return r.Ops[0].Version
	}
	waitExpired := func(n uint64) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); h.stats.ClientRecordsExpired.Load() < n; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d records expired, want %d (%d sweep entries proposed)", h.stats.ClientRecordsExpired.Load(), n, h.stats.ClientExpiriesProposed.Load())
			}
		}
	}
	// Client 1 writes in two vShards; 50 minutes later client 2 writes.
	if v := put(1, 1, 3, "a"); v != 1 {
		t.Fatalf("first put: version %d", v)
	}
	put(1, 2, 9, "b")
	clock.Advance(50 * time.Minute)
	put(2, 1, 3, "c")
	// A sweep now (the last one "ended" when the node started) finds every
	// record younger than an hour.
	waitSweeps := func(n uint64) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); h.stats.ClientExpiriesProposed.Load() < n; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d sweep entries proposed, want %d", h.stats.ClientExpiriesProposed.Load(), n)
			}
		}
	}
	waitSweeps(1)
	put(2, 2, 4, "d") // applied after the sweep's entry
	if got := h.stats.ClientRecordsExpired.Load(); got != 0 {
		t.Fatalf("%d records expired at 50 minutes", got)
	}
	// 70 minutes after client 1's writes, its records are over an hour
	// old; client 2's are 20 minutes old.
	clock.Advance(20 * time.Minute)
	waitExpired(2)
	// Let the sweep finish and another start: nothing more may go.
	clock.Advance(10 * time.Minute)
	waitSweeps(h.stats.ClientExpiriesProposed.Load() + 1)
	put(2, 3, 4, "d") // applied after the sweep's entry
	if got := h.stats.ClientRecordsExpired.Load(); got != 2 {
		t.Fatalf("%d records expired, want client 1's 2", got)
	}
	// Client 2's retry is recognised; client 1's is not any more.
	if v := put(2, 1, 3, "c"); v != 1 {
		t.Fatalf("active client's retry applied again: version %d", v)
	}
	if v := put(1, 1, 3, "a"); v != 2 {
		t.Fatalf("expired client's retry: version %d, want 2 (applied again)", v)
	}
	if n := h.stats.MalformedEntries.Load(); n != 0 {
		t.Fatalf("%d malformed entries", n)
	}
}
