package storage

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"pgregory.net/rapid"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/statemachine"
)

// TestValueCacheMatchesStorage drives a cached and an uncached writer over
// the same random writes, commits, clears and tiny cache budgets, and checks
// that every read through the cache returns what storage returns.
func TestValueCacheMatchesStorage(t *testing.T) {
	e := newTestEngine(t)
	var round int
	rapid.Check(t, func(rt *rapid.T) {
		round++
		g := ids.GroupID(round) // a fresh group per case: no state leaks between cases
		vss := []uint32{1, 2}
		cache := NewValueCache(rapid.SampledFrom([]int{200, 1000, 1 << 20}).Draw(rt, "budget"))
		b := e.DB().NewIndexedBatch()
		defer func() { _ = b.Close() }()
		var cw, plain VShardWriter
		for range rapid.IntRange(1, 200).Draw(rt, "ops") {
			vs := rapid.SampledFrom(vss).Draw(rt, "vs")
			cw.Reset(b, g, vs, cache)
			plain.Reset(b, g, vs, nil)
			key := []byte(fmt.Sprintf("k%d", rapid.IntRange(0, 9).Draw(rt, "key")))
			switch rapid.IntRange(0, 9).Draw(rt, "op") {
			case 0, 1, 2:
				val := []byte(rapid.StringN(0, 120, -1).Draw(rt, "val"))
				if err := cw.Set(key, val); err != nil {
					rt.Fatal(err)
				}
				if len(val) > 0 {
					val[0] ^= 0xff // the caller reuses its buffer
				}
			case 3:
				if err := cw.Delete(key); err != nil {
					rt.Fatal(err)
				}
			case 4:
				// Commit and start a new batch: the cache spans batches.
				if err := b.Commit(nil); err != nil {
					rt.Fatal(err)
				}
				_ = b.Close()
				b = e.DB().NewIndexedBatch()
			case 5:
				// A write behind the cache's back (as a snapshot install
				// does) followed by the Clear its owner must make.
				if err := plain.Set(key, []byte("behind")); err != nil {
					rt.Fatal(err)
				}
				cache.Clear()
			default:
				got, gerr := cw.Get(key)
				want, werr := plain.Get(key)
				if (gerr == nil) != (werr == nil) || string(got) != string(want) {
					rt.Fatalf("vs %d key %s: cached %q, %v; storage %q, %v", vs, key, got, gerr, want, werr)
				}
				if gerr != nil && !errors.Is(gerr, statemachine.ErrNotFound) {
					rt.Fatal(gerr)
				}
				if len(got) > 0 {
					got[0] ^= 0xff // a caller may scribble on its copy
				}
			}
		}
	})
}

func TestValueCacheBound(t *testing.T) {
	c := NewValueCache(10_000)
	for i := range 1000 {
		c.put([]byte(fmt.Sprintf("key%04d", i)), cachedValue{val: make([]byte, 100), present: true})
		if c.gens.curBytes > 5_000 {
			t.Fatalf("generation holds %d bytes > half the budget", c.gens.curBytes)
		}
	}
	if n := c.Len(); n == 0 || n > 2*5_000/(7+100+cachedEntryOverhead)+2 {
		t.Fatalf("%d entries cached", n)
	}
	// The most recent key is there; the first one was evicted.
	if _, ok := c.get([]byte("key0999")); !ok {
		t.Fatal("latest key evicted")
	}
	if _, ok := c.get([]byte("key0000")); ok {
		t.Fatal("oldest key kept past two generations")
	}
	// A value larger than a generation is not cached, and drops an older copy.
	c.put([]byte("key0999"), cachedValue{val: make([]byte, 6_000), present: true})
	if _, ok := c.get([]byte("key0999")); ok {
		t.Fatal("oversized value cached")
	}
	c.Clear()
	if c.Len() != 0 {
		t.Fatal("Clear left entries")
	}
	var nilCache *ValueCache
	nilCache.Clear() // a replica that never applied has none
}

// The generations' byte counts stay exact and each generation within half
// the bound through puts, gets, deletions and resizes in any order, and what
// they hold is always the latest value put for a key.
func TestGenerationsResize(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	g := generations{maxBytes: 4_000}
	latest := map[string]int{} // key -> size of the value last put
	sum := func(m map[string]cachedValue) int {
		n := 0
		for k, v := range m {
			n += len(k) + len(v.val) + cachedEntryOverhead
		}
		return n
	}
	for i := range 20_000 {
		key := []byte(fmt.Sprintf("k%03d", rng.IntN(200)))
		switch op := rng.IntN(10); {
		case op < 5:
			size := rng.IntN(300)
			g.put(key, cachedValue{val: make([]byte, size), present: true})
			latest[string(key)] = size
		case op < 8:
			g.get(key)
		case op < 9:
			g.del(key)
		default:
			g.resize(500 + rng.IntN(8_000))
		}
		if c, p := sum(g.cur), sum(g.prev); c != g.curBytes || p != g.prevBytes {
			t.Fatalf("step %d: counted %d + %d bytes, hold %d + %d", i, g.curBytes, g.prevBytes, c, p)
		}
		if g.curBytes > g.maxBytes/2 || g.prevBytes > g.maxBytes/2 {
			t.Fatalf("step %d: generations of %d and %d bytes over half of %d", i, g.curBytes, g.prevBytes, g.maxBytes)
		}
		for _, m := range []map[string]cachedValue{g.cur, g.prev} {
			for k, v := range m {
				if len(v.val) != latest[k] {
					t.Fatalf("step %d: %s holds a %d-byte value, the last put was %d bytes", i, k, len(v.val), latest[k])
				}
			}
		}
		for k := range g.cur {
			if _, ok := g.prev[k]; ok {
				t.Fatalf("step %d: %s in both generations", i, k)
			}
		}
	}
}

// Resizing a cache to less than it holds drops what does not fit, and the
// cache keeps working within the new bound.
func TestValueCacheResize(t *testing.T) {
	c := NewValueCache(100_000)
	for i := range 400 {
		c.put([]byte(fmt.Sprintf("key%04d", i)), cachedValue{val: make([]byte, 100), present: true})
	}
	if c.gens.bytes() < 50_000 {
		t.Fatalf("filled only %d bytes", c.gens.bytes())
	}
	c.Resize(10_000)
	if c.MaxBytes() != 10_000 || c.gens.bytes() > 10_000 {
		t.Fatalf("after shrinking to 10,000: bound %d, %d bytes held", c.MaxBytes(), c.gens.bytes())
	}
	for i := range 400 {
		c.put([]byte(fmt.Sprintf("new%04d", i)), cachedValue{val: make([]byte, 100), present: true})
		if c.gens.bytes() > 10_000 {
			t.Fatalf("%d bytes held over the new bound", c.gens.bytes())
		}
	}
	if _, ok := c.get([]byte("new0399")); !ok {
		t.Fatal("latest key missing after the resize")
	}
	c.Resize(1 << 20) // growing keeps everything
	if _, ok := c.get([]byte("new0399")); !ok {
		t.Fatal("growing dropped an entry")
	}
	var nilCache *ValueCache
	nilCache.Resize(10)
}
