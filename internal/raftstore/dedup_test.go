package raftstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/storage"
)

func openDedupEngine(t *testing.T) *storage.Engine {
	t.Helper()
	eng, err := storage.Open(storage.Options{Dir: filepath.Join(t.TempDir(), "store"), CacheSize: 1 << 20, MemTableSize: 1 << 20,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = eng.Close() })
	return eng
}

const (
	dedupGroup  = ids.GroupID(7)
	dedupVShard = uint32(42)
)

// dedupStep records one result in a fresh apply batch and commits it, as the
// apply path does.
func dedupStep(t *testing.T, eng *storage.Engine, c dedupCache, client, seq, acked uint64, res []byte) {
	t.Helper()
	b := eng.DB().NewIndexedBatch()
	if err := c.record(b, dedupGroup, dedupVShard, client, seq, acked, int64(seq), res); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
}

type dedupAnswer struct {
	res          []byte
	found, stale bool
}

func dedupLookup(t *testing.T, eng *storage.Engine, c dedupCache, client, seq uint64) dedupAnswer {
	t.Helper()
	b := eng.DB().NewIndexedBatch()
	defer b.Close()
	res, found, stale, err := c.lookup(b, dedupGroup, dedupVShard, client, seq)
	if err != nil {
		t.Fatalf("lookup client %d seq %d: %v", client, seq, err)
	}
	return dedupAnswer{res, found, stale}
}

// dedupKeys counts the keys of each exactly-once sub-area in storage.
func dedupKeys(t *testing.T, eng *storage.Engine) map[byte]int {
	t.Helper()
	prefix := storage.AppendVShardSubPrefix(nil, dedupGroup, dedupVShard, 0)
	prefix = prefix[:len(prefix)-1]
	it, err := eng.DB().NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: append(bytes.Clone(prefix), 0xff)})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	n := map[byte]int{}
	for it.First(); it.Valid(); it.Next() {
		n[it.Key()[len(prefix)]]++
	}
	return n
}

func result(n int, seed byte) []byte {
	return bytes.Repeat([]byte{seed}, n)
}

// A sequential client's write costs one key: its result lives in the client
// record, and the record of the write before it is replaced, not deleted.
func TestDedupSmallResultsInline(t *testing.T) {
	eng := openDedupEngine(t)
	c := dedupCache{}
	for seq := uint64(1); seq <= 50; seq++ {
		dedupStep(t, eng, c, 9, seq, seq, result(12, byte(seq)))
	}
	if got := dedupKeys(t, eng); got[storage.SubClient] != 1 || got[storage.SubDedup] != 0 || got[storage.SubWatermark] != 0 {
		t.Fatalf("keys per sub-area = %v, want one client record and nothing else", got)
	}
	for _, cache := range []dedupCache{c, {}} { // written-through cache, then storage alone
		if a := dedupLookup(t, eng, cache, 9, 50); !a.found || !bytes.Equal(a.res, result(12, 50)) {
			t.Fatalf("retry of the last write: %+v", a)
		}
		if a := dedupLookup(t, eng, cache, 9, 49); !a.stale {
			t.Fatalf("retry below the watermark: %+v, want stale", a)
		}
		if a := dedupLookup(t, eng, cache, 9, 51); a.found || a.stale {
			t.Fatalf("new sequence: %+v, want neither found nor stale", a)
		}
	}
}

// Large results, and results past a record's inline budget, go to their own
// keys, which are deleted when the watermark passes them.
func TestDedupLargeResultsSpill(t *testing.T) {
	eng := openDedupEngine(t)
	c := dedupCache{}
	dedupStep(t, eng, c, 3, 1, 0, result(maxInlineResult+1, 'L'))
	n := maxInlineBytes / maxInlineResult
	for seq := uint64(2); seq <= uint64(n)+3; seq++ {
		dedupStep(t, eng, c, 3, seq, 0, result(maxInlineResult, byte(seq)))
	}
	// seq 1 spilled by size; 2..n+1 fill the budget; n+2 and n+3 spill.
	if got := dedupKeys(t, eng); got[storage.SubClient] != 1 || got[storage.SubDedup] != 3 {
		t.Fatalf("keys per sub-area = %v, want 1 client record and 3 spilled results", got)
	}
	for _, cache := range []dedupCache{c, {}} {
		for seq := uint64(1); seq <= uint64(n)+3; seq++ {
			want := result(maxInlineResult, byte(seq))
			if seq == 1 {
				want = result(maxInlineResult+1, 'L')
			}
			if a := dedupLookup(t, eng, cache, 3, seq); !a.found || !bytes.Equal(a.res, want) {
				t.Fatalf("seq %d: found=%v, %d bytes", seq, a.found, len(a.res))
			}
		}
	}
	// The client acknowledges everything: the spilled keys go, and the
	// freed budget takes the next result inline.
	dedupStep(t, eng, c, 3, uint64(n)+4, uint64(n)+4, result(8, 'x'))
	if got := dedupKeys(t, eng); got[storage.SubClient] != 1 || got[storage.SubDedup] != 0 {
		t.Fatalf("after the watermark passed them: keys per sub-area = %v", got)
	}
	if a := dedupLookup(t, eng, dedupCache{}, 3, uint64(n)+4); !a.found || !bytes.Equal(a.res, result(8, 'x')) {
		t.Fatalf("inline result after the drop: %+v", a)
	}
}

// A client that keeps more than maxLiveSeqs writes open loses the oldest,
// which are then refused as stale, never applied twice.
func TestDedupLiveSequencesBounded(t *testing.T) {
	eng := openDedupEngine(t)
	c := dedupCache{}
	for seq := uint64(1); seq <= maxLiveSeqs+5; seq++ {
		dedupStep(t, eng, c, 4, seq, 0, result(4, 1))
	}
	rec, err := loadClientRecord(eng.DB().NewIndexedBatch(), dedupGroup, dedupVShard, 4)
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.live) != maxLiveSeqs || rec.watermark != 6 {
		t.Fatalf("live %d, watermark %d; want %d and 6", len(rec.live), rec.watermark, maxLiveSeqs)
	}
	if a := dedupLookup(t, eng, dedupCache{}, 4, 5); !a.stale {
		t.Fatalf("seq 5: %+v, want stale", a)
	}
	if a := dedupLookup(t, eng, dedupCache{}, 4, 6); !a.found {
		t.Fatalf("seq 6: %+v, want found", a)
	}
}

// Records of the earlier format ('w' record, every result in a 'd' key) are
// still honoured, and the client's next write converts them.
func TestDedupReadsEarlierFormat(t *testing.T) {
	eng := openDedupEngine(t)
	b := eng.DB().NewBatch()
	v := binary.AppendUvarint(nil, 10) // watermark
	v = binary.AppendUvarint(v, 2)     // live sequences
	v = binary.AppendUvarint(v, 10)
	v = binary.AppendUvarint(v, 11)
	if err := b.Set(legacyClientKey(dedupGroup, dedupVShard, 5), v, nil); err != nil {
		t.Fatal(err)
	}
	for _, seq := range []uint64{10, 11} {
		if err := b.Set(dedupKey(dedupGroup, dedupVShard, 5, seq), append(make([]byte, 8), result(5, byte(seq))...), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	if a := dedupLookup(t, eng, dedupCache{}, 5, 11); !a.found || !bytes.Equal(a.res, result(5, 11)) {
		t.Fatalf("earlier-format result: %+v", a)
	}
	if a := dedupLookup(t, eng, dedupCache{}, 5, 9); !a.stale {
		t.Fatalf("below the earlier-format watermark: %+v", a)
	}
	c := dedupCache{}
	dedupStep(t, eng, c, 5, 12, 11, result(3, 12))
	if got := dedupKeys(t, eng); got[storage.SubWatermark] != 0 || got[storage.SubClient] != 1 || got[storage.SubDedup] != 1 {
		t.Fatalf("after conversion: keys per sub-area = %v, want the client record and seq 11's result", got)
	}
	for _, seq := range []uint64{11, 12} {
		if a := dedupLookup(t, eng, dedupCache{}, 5, seq); !a.found {
			t.Fatalf("seq %d after conversion: %+v", seq, a)
		}
	}
	if a := dedupLookup(t, eng, dedupCache{}, 5, 10); !a.stale {
		t.Fatalf("seq 10 after conversion: %+v, want stale", a)
	}
}

func TestDedupCorruptRecordIsAnError(t *testing.T) {
	good := encodeClientRecord(&clientRecord{lastWrite: 5, watermark: 3, live: []liveSeq{{seq: 3, res: []byte("ab")}, {seq: 4, spilled: true}}})
	if rec, ok := decodeClientRecord(good); !ok || len(rec.live) != 2 || string(rec.live[0].res) != "ab" || !rec.live[1].spilled || rec.inline != 2 {
		t.Fatalf("round trip: %+v %v", rec, ok)
	}
	bad := map[string][]byte{
		"empty":         {},
		"version":       append([]byte{9}, good[1:]...),
		"truncated":     good[:len(good)-1],
		"trailing":      append(bytes.Clone(good), 0),
		"unordered":     encodeClientRecord(&clientRecord{live: []liveSeq{{seq: 4}, {seq: 3}}}),
		"huge count":    append([]byte{clientRecordVersion, 0, 0}, binary.AppendUvarint(nil, 1<<40)...),
		"result length": append([]byte{clientRecordVersion, 0, 0, 1, 1}, binary.AppendUvarint(nil, 1<<30)...),
	}
	for name, v := range bad {
		t.Run(name, func(t *testing.T) {
			if _, ok := decodeClientRecord(v); ok {
				t.Fatal("decoded")
			}
			eng := openDedupEngine(t)
			if err := eng.DB().Set(clientKey(dedupGroup, dedupVShard, 1), v, pebble.NoSync); err != nil {
				t.Fatal(err)
			}
			_, _, _, err := dedupCache{}.lookup(eng.DB().NewIndexedBatch(), dedupGroup, dedupVShard, 1, 3)
			if !errors.Is(err, storage.ErrCorrupt) {
				t.Fatalf("lookup: %v, want ErrCorrupt", err)
			}
		})
	}
}

// Random clients, sequences, acknowledgements and result sizes: a cache
// built from storage alone answers every lookup exactly as the
// written-through cache does, and both match a plain model.
func TestDedupModel(t *testing.T) {
	for seed := uint64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 0))
			eng := openDedupEngine(t)
			c := dedupCache{}
			type key struct{ client, seq uint64 }
			model := map[key][]byte{}
			watermark := map[uint64]uint64{}
			next := map[uint64]uint64{}
			for range 600 {
				client := 1 + rng.Uint64N(4)
				next[client] += 1 + rng.Uint64N(2)
				seq := next[client]
				acked := watermark[client]
				if rng.IntN(3) == 0 {
					acked = max(acked, seq-rng.Uint64N(min(seq, 30)))
				}
				res := result(rng.IntN(2*maxInlineResult), byte(seq))
				dedupStep(t, eng, c, client, seq, acked, res)
				watermark[client] = max(watermark[client], acked)
				if seq >= watermark[client] {
					model[key{client, seq}] = res
				}
			}
			fresh := dedupCache{}
			for client := uint64(1); client <= 4; client++ {
				for seq := uint64(0); seq <= next[client]+1; seq++ {
					want := dedupAnswer{stale: seq < watermark[client]}
					if res, ok := model[key{client, seq}]; ok && !want.stale {
						want = dedupAnswer{res: res, found: true}
					}
					for _, cache := range []dedupCache{c, fresh} {
						got := dedupLookup(t, eng, cache, client, seq)
						if got.found != want.found || got.stale != want.stale || !bytes.Equal(got.res, want.res) {
							t.Fatalf("client %d seq %d: got found=%v stale=%v %d bytes, want found=%v stale=%v %d bytes",
								client, seq, got.found, got.stale, len(got.res), want.found, want.stale, len(want.res))
						}
					}
				}
			}
		})
	}
}

// BenchmarkDedupRecord: one sequential client's exactly-once bookkeeping
// per write (lookup, then record with the previous sequence acknowledged),
// from the write-through cache, as the apply path does it.
func BenchmarkDedupRecord(b *testing.B) {
	eng, err := storage.Open(storage.Options{Dir: filepath.Join(b.TempDir(), "store"), CacheSize: 1 << 20, MemTableSize: 4 << 20,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	defer eng.Close()
	c := dedupCache{}
	batch := eng.DB().NewIndexedBatch()
	defer batch.Close()
	res := []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	seq := uint64(0)
	b.ReportAllocs()
	for b.Loop() {
		seq++
		if _, found, _, err := c.lookup(batch, dedupGroup, dedupVShard, 7, seq); err != nil || found {
			b.Fatal(err, found)
		}
		if err := c.record(batch, dedupGroup, dedupVShard, 7, seq, seq, int64(seq), res); err != nil {
			b.Fatal(err)
		}
		if seq%256 == 0 {
			batch.Reset()
		}
	}
}
