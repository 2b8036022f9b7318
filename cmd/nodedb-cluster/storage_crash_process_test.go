package main

import (
	"context"
	"testing"
	"time"
)

// storageFailpoints are the points around a node's two Pebble commits: the
// Raft log batch (entries and hard states of every group a pass appended,
// one fsync) and the apply batch (state changes with the applied index that
// covers them, no fsync of its own).
var storageFailpoints = []string{
	"raft.before-log-commit",
	"raft.after-log-commit",
	"raft.before-apply-commit",
	"raft.after-apply-commit",
}

// TestProcessCrashAtStorageFailpoints crashes a node (exit 86, as a crash
// would: nothing flushed, nothing closed) at each point around its log and
// apply commits, once on the node leading group 1 and once on another,
// while a load of puts, compare-and-sets and gets runs through the Go
// client on three node processes; the supervisor restarts the crashed node
// without the failpoint. A crash right after an apply commit may lose the
// batch (it was not synced, and Pebble's WAL writer need not have written
// it out), the applied index together with the changes it covers, so the
// restarted node applies those entries again from its log: had the applied
// index been written apart from them, entries would apply twice or not at
// all, and the replicas' state hashes would differ. The load's history
// must be linearizable (no acknowledged write lost or applied twice), and
// every group's replicas must converge to the same state hash.
func TestProcessCrashAtStorageFailpoints(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs processes")
	}
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	procs := startProcClusterWith(ctx, t, bin, t.TempDir(), 3, nil, "--groups", "4", "--vshards", "64", "--rf", "3")
	waitLeaders(ctx, t, procs, 5)
	c := superviseCluster(ctx, t, procs)
	load, stopLoad := startProcLoad(ctx, t, procs, 5*time.Millisecond)

	for _, fp := range storageFailpoints {
		for _, leader := range []bool{true, false} {
			victim := c.victim(ctx, leader)
			before := c.crashes.Load()
			c.mu.Lock()
			c.pending = []string{fp}
			c.mu.Unlock()
			c.arm(ctx, victim, fp, "1*exit")
			for c.crashes.Load() == before {
				if msg, ok := c.bad.Load().(string); ok {
					t.Fatal(msg)
				}
				if ctx.Err() != nil {
					t.Fatalf("%s on process %d: never reached", fp, victim+1)
				}
				time.Sleep(20 * time.Millisecond)
			}
			waitAdmin(ctx, t, procs[victim].dir) // restarted
			t.Logf("%s: process %d (leading group 1: %v) crashed there and restarted", fp, victim+1, leader)
		}
	}
	// Some load after the last restart, then the checks.
	acked := load.acked.Load()
	for load.acked.Load() < acked+50 {
		if ctx.Err() != nil {
			t.Fatal("no write acknowledged after the last restart")
		}
		time.Sleep(20 * time.Millisecond)
	}
	stopLoad()
	load.wg.Wait()
	if msg, ok := c.bad.Load().(string); ok {
		t.Fatal(msg)
	}
	t.Logf("load: %d operations, %d acknowledged writes, %d of unknown outcome", load.h.Len(), load.acked.Load(), load.unknown.Load())
	load.h.Check(t, 2*time.Minute)
	for g := uint64(0); g <= 4; g++ {
		waitConverged(ctx, t, procs, g)
	}
}

// victim returns the index of the process leading group 1 (leader) or of
// another one.
func (c *supervisedCluster) victim(ctx context.Context, leader bool) int {
	c.t.Helper()
	for {
		for i, p := range c.procs {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			st, err := adminOf(p.dir).Status(cctx)
			cancel()
			if err != nil {
				continue
			}
			for _, g := range st.Groups {
				if g.Group == 1 && g.LeaderNode != 0 && (g.LeaderNode == st.Node) == leader && g.IsLeader == leader {
					return i
				}
			}
		}
		select {
		case <-ctx.Done():
			c.t.Fatalf("no node %s", map[bool]string{true: "leads group 1", false: "follows in group 1"}[leader])
		case <-time.After(50 * time.Millisecond):
		}
	}
}
