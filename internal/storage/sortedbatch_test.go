package storage

import (
	"bytes"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2"
)

// dumpDB returns every key and value of db, in order.
func dumpDB(t *testing.T, db *pebble.DB) string {
	t.Helper()
	it, err := db.NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	var b bytes.Buffer
	for it.First(); it.Valid(); it.Next() {
		fmt.Fprintf(&b, "%x=%x\n", it.Key(), it.Value())
	}
	return b.String()
}

// A batch rewritten in key order leaves the store exactly as the batch
// itself does: random sets, deletes and range deletions over a small
// keyspace, with repeated keys, committed to two stores.
func TestKeyOrderSameState(t *testing.T) {
	plain, ordered := newTestEngine(t), newTestEngine(t)
	var o KeyOrder
	defer o.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	key := func() []byte { return []byte{byte(rng.IntN(40))} }
	rewritten := 0
	for round := range 300 {
		a, b := plain.DB().NewBatch(), ordered.DB().NewBatch()
		for range 1 + rng.IntN(30) {
			k, v := key(), []byte(fmt.Sprint(round, rng.Int()))
			switch n := rng.IntN(20); {
			case n < 13:
				_ = a.Set(k, v, nil)
				_ = b.Set(k, v, nil)
			case n < 19:
				_ = a.Delete(k, nil)
				_ = b.Delete(k, nil)
			default:
				end := []byte{k[0] + byte(1+rng.IntN(3))}
				_ = a.DeleteRange(k, end, nil)
				_ = b.DeleteRange(k, end, nil)
			}
		}
		if err := a.Commit(pebble.NoSync); err != nil {
			t.Fatal(err)
		}
		nb, err := o.Rewrite(ordered.DB(), b)
		if err != nil {
			t.Fatal(err)
		}
		if nb != b {
			rewritten++
			r := nb.Reader()
			var prev []byte
			for {
				kind, k, _, ok, err := r.Next()
				if err != nil || !ok {
					break
				}
				if kind == pebble.InternalKeyKindRangeDelete {
					break // the range deletions follow the points
				}
				if prev != nil && bytes.Compare(prev, k) > 0 {
					t.Fatalf("round %d: %x after %x", round, k, prev)
				}
				prev = k
			}
		}
		if err := nb.Commit(pebble.NoSync); err != nil {
			t.Fatal(err)
		}
		_ = a.Close()
		_ = b.Close()
		if p, q := dumpDB(t, plain.DB()), dumpDB(t, ordered.DB()); p != q {
			t.Fatalf("round %d: stores differ\nplain:\n%s\nordered:\n%s", round, p, q)
		}
	}
	if rewritten < 100 {
		t.Fatalf("only %d of 300 batches were rewritten; the test does not exercise the rewrite", rewritten)
	}
}

// A range deletion that covers a point record of the same batch keeps the
// batch as it is: moving either would change which one wins.
func TestKeyOrderKeepsOverlappingRangeDeletion(t *testing.T) {
	e := newTestEngine(t)
	var o KeyOrder
	defer o.Close()
	b := e.DB().NewBatch()
	defer b.Close()
	_ = b.Set([]byte("m"), []byte("1"), nil)
	_ = b.DeleteRange([]byte("a"), []byte("z"), nil)
	_ = b.Set([]byte("b"), []byte("2"), nil)
	nb, err := o.Rewrite(e.DB(), b)
	if err != nil {
		t.Fatal(err)
	}
	if nb != b {
		t.Fatal("a batch whose range deletion covers its own points was rewritten")
	}
	sorted := e.DB().NewBatch()
	defer sorted.Close()
	_ = sorted.Set([]byte("a"), nil, nil)
	_ = sorted.Set([]byte("b"), nil, nil)
	if nb, _ := o.Rewrite(e.DB(), sorted); nb != sorted {
		t.Fatal("a batch already in key order was copied")
	}
}

// BenchmarkKeyOrderRewrite: rewriting a 200-record apply batch (a KV value
// and a client record for each of 100 writes, random keys) in key order.
func BenchmarkKeyOrderRewrite(b *testing.B) {
	e, err := Open(Options{Dir: b.TempDir(), CacheSize: 1 << 20, MemTableSize: 4 << 20, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	rng := rand.New(rand.NewPCG(1, 1))
	src := e.DB().NewBatch()
	defer src.Close()
	val := bytes.Repeat([]byte{'v'}, 256)
	for range 100 {
		_ = src.Set(fmt.Appendf(nil, "\x03user-%08d", rng.IntN(1e8)), val, nil)
		_ = src.Set(fmt.Appendf(nil, "\x03client-%08d", rng.IntN(1e8)), val[:24], nil)
	}
	var o KeyOrder
	defer o.Close()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := o.Rewrite(e.DB(), src); err != nil {
			b.Fatal(err)
		}
	}
}
