package client

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestLeadershipLeavesAStalledDisk stalls the Raft log writes of the node
// leading the most groups (a failpoint that makes every log commit there
// sleep 30 s, armed on its admin socket), as a hung disk would: its worker
// keeps heartbeating, so without a remedy its followers never elect another
// leader and its groups stop for as long as the disk hangs. The node must
// hand its leaderships over (after the disk stall limit, 2 s here), so that
// writes to every group succeed again within seconds, and it must not lead
// any data group while its disk is stuck.
//
// With `--disk-stall-step-down -1s` (off) the node keeps its leaderships
// through the same stall: the flag reaches the Raft host.
func TestLeadershipLeavesAStalledDisk(t *testing.T) {
	t.Run("default", func(t *testing.T) { stalledDisk(t, true) })
	t.Run("off", func(t *testing.T) { stalledDisk(t, false, "--disk-stall-step-down", "-1s") })
}

func stalledDisk(t *testing.T, stepDown bool, extra ...string) {
	ctx, pc := startProcClusterWith(t, 3, 2*time.Minute, extra...)
	cl := pc.client
	keys := make([][]byte, 12)
	for i := range keys {
		keys[i] = fmt.Appendf(nil, "stall-%d", i)
		if _, err := cl.Put(ctx, keys[i], []byte("before")); err != nil {
			t.Fatal(err)
		}
	}
	victim, most := pc.mostLeader(ctx)
	if most < 1 {
		t.Fatalf("process %d leads %d groups", victim, most)
	}
	stalled := pc.nodeIDs[victim]
	if err := pc.admin(victim).ArmFailpoint(ctx, "raft.before-log-commit", "sleep(30000)"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if !stepDown {
		time.Sleep(4 * time.Second) // twice the default limit
		st, err := pc.admin((victim + 1) % len(pc.procs)).Cluster(ctx)
		if err != nil {
			t.Fatal(err)
		}
		led := 0
		for _, g := range st.Groups {
			if g.ID != 0 && g.Leader == stalled {
				led++
			}
		}
		if n := metricSum(pc.procs[victim].api, "nodedb_raft_stall_transfers_total"); n != 0 || led == 0 {
			t.Fatalf("with the step-down off, node %d made %v stall transfers and leads %d data groups after 4 s of stall", stalled, n, led)
		}
		return
	}
	for _, k := range keys {
		wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		s := time.Now()
		_, err := cl.Put(wctx, k, []byte("after"))
		cancel()
		if err != nil {
			t.Fatalf("put %s %v after the stall began: %v", k, time.Since(start).Round(time.Millisecond), err)
		}
		if d := time.Since(s); d > 500*time.Millisecond {
			t.Logf("put %s took %v", k, d.Round(time.Millisecond))
		}
	}
	elapsed := time.Since(start)
	t.Logf("node %d (leader of %d groups) stalled: every group took writes again within %v", stalled, most, elapsed.Round(time.Millisecond))
	if elapsed > 12*time.Second {
		t.Fatalf("writes took %v to come back after the stall began", elapsed)
	}
	other := (victim + 1) % len(pc.procs)
	st, err := pc.admin(other).Cluster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range st.Groups {
		if g.ID != 0 && g.Leader == stalled {
			t.Errorf("group %d is still led by node %d, whose disk is stalled", g.ID, stalled)
		}
	}
	if n := metricSum(pc.procs[victim].api, "nodedb_raft_stall_transfers_total"); n < 1 {
		t.Errorf("node %d counted %v stall transfers", stalled, n)
	}
}
