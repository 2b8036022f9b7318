package raftstore

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

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

// The latency histograms sample what they say: one proposal duration per
// answered proposal, one WAL sync duration per counted sync, and append
// durations that cover at least a sync (each proposal's entry waits for
// one), all exported under their documented names.
func TestLatencyHistograms(t *testing.T) {
	reg := prometheus.NewRegistry()
	h, eng := openTestHost(t, t.TempDir(), 4<<20, Config{Registerer: reg})
	defer func() { h.Stop(); _ = eng.Close() }()
	leadGroupAlone(t, h)
	proposalsBefore := storage.HistogramCount(h.latencies.proposal)
	appendsBefore := storage.HistogramCount(h.latencies.append)
	const n = 20
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range n {
		cmd, err := kv.EncodePut([]byte(fmt.Sprintf("k%d", i)), []byte("v"), nil, kv.DefaultLimits())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.Propose(ctx, 1, Proposal{VShard: 0, Payload: cmd}); err != nil {
			t.Fatal(err)
		}
	}
	if got := storage.HistogramCount(h.latencies.proposal) - proposalsBefore; got != n {
		t.Errorf("proposal durations: %d samples for %d proposals", got, n)
	}
	if got := storage.HistogramCount(h.latencies.append) - appendsBefore; got < n {
		t.Errorf("append durations: %d samples for %d sequential proposals, each with its own append", got, n)
	}
	if got, want := storage.HistogramCount(eng.WALSyncDurations()), eng.WALSyncs(); got != want {
		t.Errorf("WAL sync durations: %d samples, %d syncs counted", got, want)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]uint64{}
	for _, mf := range mfs {
		if mf.GetType() == dto.MetricType_HISTOGRAM {
			exported[mf.GetName()] = mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	for _, name := range []string{"nodedb_raft_proposal_duration_seconds", "nodedb_raft_append_duration_seconds", "nodedb_storage_wal_sync_duration_seconds"} {
		if exported[name] == 0 {
			t.Errorf("%s: not exported or empty (%v)", name, exported)
		}
	}
}
