package raftstore

import (
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/kv"
	"github.com/nodedb/nodedb-cluster/internal/storage"
)

// openTestHost opens a Pebble engine in dir (8 MiB cache, memTable bytes of
// memtable) and starts node 1's host on it with cfg, defaulting the engine,
// the KV state machine, the snapshot dir, quiet logs and 10 ms ticks. The
// caller stops the host and closes the engine (a test may reopen dir).
func openTestHost(tb testing.TB, dir string, memTable uint64, cfg Config) (*Host, *storage.Engine) {
	tb.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	eng, err := storage.Open(storage.Options{Dir: filepath.Join(dir, "store"), CacheSize: 8 << 20, MemTableSize: memTable, Logger: quiet})
	if err != nil {
		tb.Fatal(err)
	}
	cfg.NodeID, cfg.Engine = 1, eng
	if cfg.StateMachine == nil {
		cfg.StateMachine = &kv.StateMachine{}
	}
	cfg.SnapshotDir = filepath.Join(dir, "snap")
	if cfg.Logger == nil {
		cfg.Logger = quiet
	}
	if cfg.TickInterval == 0 {
		cfg.TickInterval = 10 * time.Millisecond
	}
	h, err := New(cfg)
	if err != nil {
		_ = eng.Close()
		tb.Fatal(err)
	}
	h.Start(nopTransport{})
	return h, eng
}

// leadGroupAlone bootstraps group 1 with h's replica 1 as its only member
// and waits until h leads it.
func leadGroupAlone(tb testing.TB, h *Host) {
	tb.Helper()
	if err := h.BootstrapGroup(1, 1, []storage.ReplicaDesc{{Replica: 1, Node: 1}}); err != nil {
		tb.Fatal(err)
	}
	if err := h.Campaign(1); err != nil {
		tb.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); !h.IsLeader(1); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			tb.Fatal("the single-replica group never elected itself")
		}
	}
}
