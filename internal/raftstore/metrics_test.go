package raftstore

import (
	"io"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nodedb/nodedb-cluster/internal/kv"
	"github.com/nodedb/nodedb-cluster/internal/storage"
)

// The store's figures are on /metrics while the host runs, and a scrape
// after Stop (the engine about to close) leaves them out instead of reading
// a closing engine.
func TestEngineMetricsExported(t *testing.T) {
	dir := t.TempDir()
	eng, err := storage.Open(storage.Options{Dir: filepath.Join(dir, "store"), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	reg := prometheus.NewRegistry()
	h, err := New(Config{NodeID: 1, Engine: eng, StateMachine: &kv.StateMachine{}, SnapshotDir: filepath.Join(dir, "snap"),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	h.Start(nopTransport{})
	names := func() map[string]bool {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, mf := range mfs {
			out[mf.GetName()] = true
		}
		return out
	}
	want := []string{"nodedb_storage_block_cache_hits_total", "nodedb_storage_block_cache_misses_total",
		"nodedb_storage_block_cache_bytes", "nodedb_storage_memtable_bytes"}
	got := names()
	for _, n := range want {
		if !got[n] {
			t.Errorf("%s not exported", n)
		}
	}
	h.Stop()
	got = names()
	for _, n := range want {
		if got[n] {
			t.Errorf("%s still read after Stop", n)
		}
	}
}
