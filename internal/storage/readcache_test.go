package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/statemachine"
)

// cachedReader reads vshard of g through rc, as a client read does.
func cachedReader(e *Engine, g ids.GroupID, vs uint32, rc *ReadCache) *VShardReader {
	var r VShardReader
	r.ResetCached(e.DB(), g, vs, rc)
	return &r
}

// commitThrough writes key=val (nil: delete) in a batch of its own, as the
// apply path does: the writer tells rc, which drops the key around the
// commit.
func commitThrough(t testing.TB, e *Engine, g ids.GroupID, vs uint32, rc *ReadCache, key, val []byte) {
	t.Helper()
	b := e.DB().NewIndexedBatch()
	defer func() { _ = b.Close() }()
	var w VShardWriter
	w.Reset(b, g, vs, nil)
	w.Invalidates(rc)
	var err error
	if val == nil {
		err = w.Delete(key)
	} else {
		err = w.Set(key, val)
	}
	if err != nil {
		t.Fatal(err)
	}
	rc.BeginCommit()
	if err := b.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	rc.EndCommit()
}

func getString(t testing.TB, r *VShardReader, key string) string {
	t.Helper()
	v, err := r.Get([]byte(key))
	if errors.Is(err, statemachine.ErrNotFound) {
		return "<absent>"
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(v)
}

// TestReadCacheServesAndInvalidates: a read fills the cache (proved by a
// write behind its back that reads then do not see), a write through the
// apply path replaces what it cached, absent keys included, and Clear drops
// everything.
func TestReadCacheServesAndInvalidates(t *testing.T) {
	e := newTestEngine(t)
	g, vs := ids.GroupID(1), uint32(3)
	rc := NewReadCache(1 << 20)
	r := cachedReader(e.Engine, g, vs, rc)
	behind := func(key, val string) {
		var w VShardWriter
		b := e.DB().NewIndexedBatch()
		w.Reset(b, g, vs, nil)
		if err := w.Set([]byte(key), []byte(val)); err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(pebble.NoSync); err != nil {
			t.Fatal(err)
		}
	}

	commitThrough(t, e.Engine, g, vs, rc, []byte("a"), []byte("1"))
	if got := getString(t, r, "a"); got != "1" {
		t.Fatalf("first read: %q", got)
	}
	if got := getString(t, r, "missing"); got != "<absent>" {
		t.Fatalf("missing key: %q", got)
	}
	behind("a", "behind")
	behind("missing", "behind")
	if got, absent := getString(t, r, "a"), getString(t, r, "missing"); got != "1" || absent != "<absent>" {
		t.Fatalf("reads after a write behind the cache: %q %q: the cache did not serve them", got, absent)
	}
	// The returned value is a copy.
	v, _ := r.Get([]byte("a"))
	v[0] = 'X'
	if got := getString(t, r, "a"); got != "1" {
		t.Fatalf("cached value changed through a returned slice: %q", got)
	}

	commitThrough(t, e.Engine, g, vs, rc, []byte("a"), []byte("2"))
	commitThrough(t, e.Engine, g, vs, rc, []byte("missing"), []byte("3"))
	if got, was := getString(t, r, "a"), getString(t, r, "missing"); got != "2" || was != "3" {
		t.Fatalf("reads after writes through the apply path: %q %q", got, was)
	}
	commitThrough(t, e.Engine, g, vs, rc, []byte("a"), nil)
	if got := getString(t, r, "a"); got != "<absent>" {
		t.Fatalf("read after a delete: %q", got)
	}

	behind("missing", "4")
	rc.Clear()
	rc.EndClear()
	if got := getString(t, r, "missing"); got != "4" {
		t.Fatalf("read after Clear: %q", got)
	}
	// TouchAll (an import) drops everything too.
	behind("missing", "5")
	rc.TouchAll()
	rc.BeginCommit()
	rc.EndCommit()
	if got := getString(t, r, "missing"); got != "5" {
		t.Fatalf("read after TouchAll: %q", got)
	}
}

// TestReadCacheRefusesFillsAcrossCommits plays the interleavings a reader's
// miss can have with a commit: a value read before a commit began, or while
// one is in flight, is never cached.
func TestReadCacheRefusesFillsAcrossCommits(t *testing.T) {
	key := []byte("k")
	old := cachedValue{val: []byte("old"), present: true}
	for _, tc := range []struct {
		name string
		play func(rc *ReadCache) (gen uint64)
	}{
		{"lookup before the commit, fill after it", func(rc *ReadCache) uint64 {
			_, _, gen := rc.lookup(key)
			rc.Touch(key)
			rc.BeginCommit()
			rc.EndCommit()
			return gen
		}},
		{"lookup before the commit, fill during it", func(rc *ReadCache) uint64 {
			_, _, gen := rc.lookup(key)
			rc.Touch(key)
			rc.BeginCommit()
			return gen
		}},
		{"lookup and fill during the commit", func(rc *ReadCache) uint64 {
			rc.Touch(key)
			rc.BeginCommit()
			_, _, gen := rc.lookup(key)
			return gen
		}},
		{"lookup during the commit, fill after it", func(rc *ReadCache) uint64 {
			rc.Touch(key)
			rc.BeginCommit()
			_, _, gen := rc.lookup(key)
			rc.EndCommit()
			return gen
		}},
		{"lookup before a clear, fill during it", func(rc *ReadCache) uint64 {
			_, _, gen := rc.lookup(key)
			rc.Clear()
			return gen
		}},
		{"lookup during a clear, fill after it", func(rc *ReadCache) uint64 {
			rc.Clear()
			_, _, gen := rc.lookup(key)
			rc.EndClear()
			return gen
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := NewReadCache(1 << 20)
			gen := tc.play(rc)
			rc.fill(key, old, gen)
			if _, hit, _ := rc.lookup(key); hit {
				t.Fatal("a value read across a commit was cached")
			}
		})
	}
	// A commit of other keys does not stop a fill that did not overlap it.
	rc := NewReadCache(1 << 20)
	_, _, gen := rc.lookup(key)
	rc.fill(key, old, gen)
	if _, hit, _ := rc.lookup(key); !hit {
		t.Fatal("a fill with no commit around it was refused")
	}
	// A commit that touches nothing does nothing.
	_, _, gen = rc.lookup([]byte("other"))
	rc.BeginCommit()
	rc.EndCommit()
	rc.fill([]byte("other"), old, gen)
	if _, hit, _ := rc.lookup([]byte("other")); !hit {
		t.Fatal("an empty commit refused a fill")
	}
}

// TestReadCacheBounded: the cache holds about its budget, whatever is read.
func TestReadCacheBounded(t *testing.T) {
	e := newTestEngine(t)
	g, vs := ids.GroupID(1), uint32(1)
	const budget = 64 << 10
	rc := NewReadCache(budget)
	val := make([]byte, 1000)
	for i := range 500 {
		commitThrough(t, e.Engine, g, vs, rc, []byte(fmt.Sprintf("k%03d", i)), val)
	}
	r := cachedReader(e.Engine, g, vs, rc)
	for i := range 500 {
		_ = getString(t, r, fmt.Sprintf("k%03d", i))
		if n := rc.Len(); n*(1000+cachedEntryOverhead) > budget+2*(1000+cachedEntryOverhead) {
			t.Fatalf("after %d reads the cache holds %d entries of about %d bytes, budget %d", i+1, n, 1000+cachedEntryOverhead, budget)
		}
	}
	// A value larger than a generation is served but not kept.
	commitThrough(t, e.Engine, g, vs, rc, []byte("huge"), make([]byte, budget))
	if got := getString(t, r, "huge"); len(got) != budget {
		t.Fatalf("huge value: %d bytes", len(got))
	}
	if _, hit, _ := rc.lookup(r.key([]byte("huge"))); hit {
		t.Fatal("a value larger than a generation was cached")
	}
}

// TestReadCacheConcurrentReadsAreLinearizable: one writer commits increasing
// versions of a few keys through the apply path's protocol and then
// publishes each as applied (as the replica moves its applied index);
// readers read concurrently through the cache. No read may return a version
// older than one already published when it started, or older than one any
// read had returned when it started (real-time order). Run with -race.
func TestReadCacheConcurrentReadsAreLinearizable(t *testing.T) {
	e := newTestEngine(t)
	g, vs := ids.GroupID(1), uint32(9)
	rc := NewReadCache(1 << 20)
	const keys = 4
	var applied, seen [keys]atomic.Uint64
	enc := func(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
	for k := range keys {
		commitThrough(t, e.Engine, g, vs, rc, []byte{byte(k)}, enc(0))
	}
	writes := 3000
	if testing.Short() {
		writes = 500
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	for range 4 {
		wg.Go(func() {
			var r VShardReader
			r.ResetCached(e.DB(), g, vs, rc)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := i % keys
				floor := max(applied[k].Load(), seen[k].Load())
				v, err := r.Get([]byte{byte(k)})
				if err != nil {
					errc <- err
					return
				}
				got := binary.BigEndian.Uint64(v)
				if got < floor {
					errc <- fmt.Errorf("key %d: read version %d after version %d was applied or read", k, got, floor)
					return
				}
				for {
					s := seen[k].Load()
					if got <= s || seen[k].CompareAndSwap(s, got) {
						break
					}
				}
			}
		})
	}
	for n := 1; n <= writes; n++ {
		k := n % keys
		commitThrough(t, e.Engine, g, vs, rc, []byte{byte(k)}, enc(uint64(n)))
		applied[k].Store(uint64(n))
	}
	close(stop)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
}
