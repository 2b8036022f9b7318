package storage

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// commitDelta commits one small batch with opts and returns how many WAL
// syncs the commit caused.
func commitDelta(t *testing.T, e *Engine, key string, opts *pebble.WriteOptions) uint64 {
	t.Helper()
	b := e.DB().NewBatch()
	defer b.Close()
	if err := b.Set([]byte(key), []byte("v"), nil); err != nil {
		t.Fatal(err)
	}
	before := e.WALSyncs()
	if err := b.Commit(opts); err != nil {
		t.Fatalf("commit: %v", err)
	}
	return e.WALSyncs() - before
}

func TestWALSyncsCountsSyncedCommits(t *testing.T) {
	e := newTestEngine(t)
	for i := range 5 {
		if d := commitDelta(t, e.Engine, "nosync", pebble.NoSync); d != 0 {
			t.Fatalf("NoSync commit %d synced the WAL %d times, want 0", i, d)
		}
		if d := commitDelta(t, e.Engine, "sync", pebble.Sync); d != 1 {
			t.Fatalf("Sync commit %d synced the WAL %d times, want 1", i, d)
		}
	}
	// A synced batch holding many groups' writes is still one sync.
	b := e.DB().NewBatch()
	defer b.Close()
	for g := range 100 {
		if err := b.Set(entryKey(nil, ids.GroupID(g), 1), []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	before := e.WALSyncs()
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if d := e.WALSyncs() - before; d != 1 {
		t.Fatalf("one synced batch of 100 groups' writes synced the WAL %d times, want 1", d)
	}

	// The count restarts with the engine and keeps working after a reopen
	// (which reuses or creates WAL files).
	e.reopen()
	if d := commitDelta(t, e.Engine, "sync", pebble.Sync); d != 1 {
		t.Fatalf("Sync commit after reopen synced the WAL %d times, want 1", d)
	}
	if d := commitDelta(t, e.Engine, "nosync", pebble.NoSync); d != 0 {
		t.Fatalf("NoSync commit after reopen synced the WAL %d times, want 0", d)
	}
}

func TestOpenRequiresDir(t *testing.T) {
	if e, err := Open(Options{}); err == nil {
		_ = e.Close()
		t.Fatal("Open without a directory succeeded")
	}
}

// fakeFile reports partial or full syncs as told.
type fakeFile struct {
	vfs.File
	full bool
}

func (f *fakeFile) Sync() error                { return nil }
func (f *fakeFile) SyncData() error            { return nil }
func (f *fakeFile) SyncTo(int64) (bool, error) { return f.full, nil }

func TestSyncCountingFS(t *testing.T) {
	fs := &syncCountingFS{FS: vfs.NewMem(), syncSeconds: NewLatencyHistogram("storage", "test", "test")}
	// Only write-ahead logs count, whichever way they are opened.
	wal, err := fs.Create("000002.log", vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	other, err := fs.Create("000003.sst", vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wal.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	for _, f := range []vfs.File{wal, other} {
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		if err := f.SyncData(); err != nil {
			t.Fatal(err)
		}
	}
	if got := fs.walSyncs.Load(); got != 2 {
		t.Fatalf("walSyncs = %d after Sync and SyncData of a WAL and of a table, want 2", got)
	}
	if err := errors.Join(wal.Close(), other.Close()); err != nil {
		t.Fatal(err)
	}
	reused, err := fs.ReuseForWrite("000002.log", "000004.log", vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	if err := reused.Sync(); err != nil {
		t.Fatal(err)
	}
	rw, err := fs.OpenReadWrite("000004.log", vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	if err := rw.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := fs.walSyncs.Load(); got != 4 {
		t.Fatalf("walSyncs = %d after syncing a reused and a reopened WAL, want 4", got)
	}
	_ = reused.Close()
	_ = rw.Close()

	// SyncTo counts only when it synced the whole file.
	for _, full := range []bool{false, true, false} {
		before := fs.walSyncs.Load()
		f, _ := fs.wrap("000005.log", &fakeFile{full: full}, nil)
		if got, err := f.SyncTo(10); err != nil || got != full {
			t.Fatalf("SyncTo = %v, %v; want %v", got, err, full)
		}
		want := before
		if full {
			want++
		}
		if got := fs.walSyncs.Load(); got != want {
			t.Fatalf("walSyncs = %d after SyncTo reporting full=%v, want %d", got, full, want)
		}
	}
	// Every counted sync is timed, and only those.
	if got, want := HistogramCount(fs.syncSeconds), fs.walSyncs.Load(); got != want {
		t.Fatalf("sync duration histogram has %d samples, want one per counted sync, %d", got, want)
	}
	// Errors pass through unwrapped.
	if f, err := fs.Create("missing/dir/000006.log", vfs.WriteCategoryUnspecified); err == nil {
		t.Fatalf("Create in a missing directory succeeded: %v", f)
	}
}

// TestBlockCacheSurvivesFullMemtables proves that CacheSize is room for data
// blocks: Pebble charges every memtable (the mutable one, those waiting to
// flush and the one it keeps for recycling) against the block cache, so a
// cache no larger than those reservations keeps no block at all and every
// point read below the memtables goes to the file system. With 2 MiB of cache
// and 1 MiB memtables, after several full memtables have been flushed, reading
// the same flushed keys twice must be served from the cache the second time.
func TestBlockCacheSurvivesFullMemtables(t *testing.T) {
	e, err := Open(Options{Dir: t.TempDir(), CacheSize: 2 << 20, MemTableSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	db := e.DB()
	val := make([]byte, 1024)
	const keys = 12 << 10 // 12 MiB of values: a dozen full memtables
	for i := 0; i < keys; i += 256 {
		b := db.NewBatch()
		for j := i; j < i+256; j++ {
			if err := b.Set(fmt.Appendf(nil, "k%06d", j), val, nil); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Commit(pebble.NoSync); err != nil {
			t.Fatal(err)
		}
		b.Close()
	}
	if err := db.Flush(); err != nil {
		t.Fatal(err)
	}
	if m := db.Metrics(); m.MemTable.Size+m.MemTable.ZombieSize < 2<<20 {
		t.Fatalf("memtables reserve %d bytes; the test needs them to reserve at least the cache size",
			m.MemTable.Size+m.MemTable.ZombieSize)
	}
	read := func() {
		for i := 0; i < 512; i++ {
			v, c, err := db.Get(fmt.Appendf(nil, "k%06d", i))
			if err != nil {
				t.Fatalf("get k%06d: %v", i, err)
			}
			if len(v) != len(val) {
				t.Fatalf("k%06d: %d bytes, want %d", i, len(v), len(val))
			}
			c.Close()
		}
	}
	read()
	before := db.Metrics().BlockCache
	read()
	after := db.Metrics().BlockCache
	if misses := after.Misses - before.Misses; misses != 0 {
		t.Fatalf("second read of the same 512 keys missed the block cache %d times (cache holds %d bytes in %d blocks)",
			misses, after.Size, after.Count)
	}
}
