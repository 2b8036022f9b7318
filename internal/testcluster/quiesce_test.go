package testcluster

import (
	"context"
	"fmt"
	"math"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// pingGroup is raftstore's group of node-to-node pings (quiesce.go).
const pingGroup = ids.GroupID(math.MaxUint64)

// quiescedCluster starts 3 nodes with groups data groups (default test
// timing: ticks of 10ms, elections after 100-200ms), writes a key to every
// group and waits for every group to go quiet.
func quiescedCluster(t *testing.T, groups int) (context.Context, *Cluster, *Client, map[ids.GroupID][]byte) {
	t.Helper()
	c := New(t, Options{Nodes: 3, Groups: groups})
	ctx := testCtx(t, 60*time.Second)
	if err := c.WaitAllLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	cl := c.NewClient(1)
	keys := keyPerGroup(t, c)
	for g, k := range keys {
		if _, err := cl.Put(ctx, k, []byte("before"), nil); err != nil {
			t.Fatalf("put to %s: %v", g, err)
		}
	}
	waitQuiet(ctx, t, c)
	return ctx, c, cl, keys
}

// keyPerGroup returns a key of every data group.
func keyPerGroup(t *testing.T, c *Cluster) map[ids.GroupID][]byte {
	t.Helper()
	keys := map[ids.GroupID][]byte{}
	for i := 0; len(keys) < len(c.Groups()) && i < 100000; i++ {
		k := []byte(fmt.Sprintf("key-%d", i))
		if _, g := c.Route(k); keys[g] == nil {
			keys[g] = k
		}
	}
	if len(keys) != len(c.Groups()) {
		t.Fatalf("found keys for %d of %d groups", len(keys), len(c.Groups()))
	}
	return keys
}

// groupTraffic counts, from now on, the Raft messages of groups (pings
// apart) and the pings that leave any node.
func groupTraffic(c *Cluster) (msgs, pings *atomic.Int64) {
	msgs, pings = new(atomic.Int64), new(atomic.Int64)
	c.Net.SetHook(func(_, _ ids.NodeID, m *transport.Message) bool {
		if m.Group == pingGroup {
			pings.Add(1)
		} else {
			msgs.Add(1)
		}
		return false
	})
	return msgs, pings
}

// waitQuiet waits until no group sends a Raft message for 300ms (30 ticks:
// an unquiesced group heartbeats every tick).
func waitQuiet(ctx context.Context, t *testing.T, c *Cluster) {
	t.Helper()
	msgs, _ := groupTraffic(c)
	defer c.Net.SetHook(nil)
	for {
		before := msgs.Load()
		select {
		case <-ctx.Done():
			t.Fatalf("the groups never went quiet (%d messages in the last 300ms)", msgs.Load()-before)
		case <-time.After(300 * time.Millisecond):
		}
		if msgs.Load() == before {
			return
		}
	}
}

// TestIdleGroupsQuiesce checks that idle groups stop sending Raft messages
// altogether once every replica has applied everything (quiescence), that
// only node pings flow while they are quiet, that their leaders and terms
// stay put, and that quiet groups serve linearizable reads and writes, after
// which they go quiet again.
func TestIdleGroupsQuiesce(t *testing.T) {
	ctx, c, cl, keys := quiescedCluster(t, 4)
	terms := map[ids.GroupID]uint64{}
	for _, g := range c.Groups() {
		n, err := c.WaitConverged(ctx, g.ID)
		if err != nil {
			t.Fatal(err)
		}
		st, err := c.Leader(g.ID).Status(g.ID)
		if err != nil {
			t.Fatal(err)
		}
		terms[g.ID] = st.Term
		t.Logf("%s: converged at %d, term %d", g.ID, n, st.Term)
	}

	msgs, pings := groupTraffic(c)
	time.Sleep(time.Second) // 100 ticks, 5-10 election timeouts
	c.Net.SetHook(nil)
	// Unquiesced, the groups send about 2,000 messages a second (a
	// heartbeat and its answer per follower per 10ms tick). A replica may
	// wake spuriously on a starved machine, when a ping arrives later than
	// an election timeout (100ms here): a handful of messages, safe, and
	// not what this checks.
	if n := msgs.Load(); n > 20 {
		t.Errorf("quiet groups sent %d Raft messages in a second; want none (a spurious wake: a few)", n)
	}
	if pings.Load() == 0 {
		t.Error("no node pings while every group was quiet: nothing would notice a dead leader")
	}
	for _, g := range c.Groups() {
		for _, n := range c.Live() {
			st, err := n.Status(g.ID)
			if err != nil {
				t.Fatal(err)
			}
			if st.Term != terms[g.ID] {
				t.Errorf("%s on %s: term %d after a quiet second, want %d", g.ID, n.ID(), st.Term, terms[g.ID])
			}
		}
	}

	for g, k := range keys {
		v, err := cl.Get(ctx, k)
		if err != nil || string(v.Value) != "before" {
			t.Fatalf("read of %s's key: %q, %v", g, v.Value, err)
		}
		if _, err := cl.Put(ctx, k, []byte("after"), nil); err != nil {
			t.Fatalf("write to quiet %s: %v", g, err)
		}
	}
	for _, g := range c.Groups() {
		if _, err := c.WaitConverged(ctx, g.ID); err != nil {
			t.Fatal(err)
		}
	}
	waitQuiet(ctx, t, c)
	st := c.Node(1).Stats()
	t.Logf("node 1: %d quiesces, %d wakes", st.Quiesces.Load(), st.Wakes.Load())
}

// TestQuiescedGroupElectsAfterLeaderLoss stops the node that leads quiet
// groups: their followers, which stopped their clocks, must notice the
// silence of that node (no pings) and elect new leaders that serve writes
// with every earlier write in place.
func TestQuiescedGroupElectsAfterLeaderLoss(t *testing.T) {
	ctx, c, cl, keys := quiescedCluster(t, 3)
	victim := c.Leader(c.Groups()[0].ID).ID()
	start := time.Now()
	if err := c.StopNode(victim); err != nil {
		t.Fatal(err)
	}
	for _, g := range c.Groups() {
		if _, err := c.WaitLeader(ctx, g.ID); err != nil {
			t.Fatalf("%s: %v", g.ID, err)
		}
	}
	// Liveness: silence noticed within 1.5 election timeouts (checks every
	// half timeout), then an election: well under 2s at 10ms ticks.
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the quiet groups took %v to elect leaders after their leader's node stopped", d)
	}
	for g, k := range keys {
		v, err := cl.Get(ctx, k)
		if err != nil || string(v.Value) != "before" {
			t.Fatalf("read of %s's key after the leader loss: %q, %v", g, v.Value, err)
		}
		if _, err := cl.Put(ctx, k, []byte("after"), nil); err != nil {
			t.Fatalf("write to %s after the leader loss: %v", g, err)
		}
	}
	if err := c.StartNode(victim); err != nil {
		t.Fatal(err)
	}
	for _, g := range c.Groups() {
		if _, err := c.WaitConverged(ctx, g.ID); err != nil {
			t.Fatal(err)
		}
	}
}

// TestQuiescedLeaderIsolated cuts the node that leads quiet groups off from
// the others: the majority side must elect new leaders and take writes;
// once healed, the old leader must follow and catch up.
func TestQuiescedLeaderIsolated(t *testing.T) {
	ctx, c, cl, keys := quiescedCluster(t, 3)
	g0 := c.Groups()[0].ID
	old := c.Leader(g0).ID()
	c.Isolate(old)
	waitFor(ctx, t, "a new leader on the majority side", func() bool {
		for _, n := range c.Live() {
			if n.ID() == old {
				continue
			}
			if st, err := n.Status(g0); err == nil && st.State == "leader" {
				return true
			}
		}
		return false
	})
	// A client of its own: the first one's requests may still be in
	// flight to the cut-off node.
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err := c.NewClient(2).Put(wctx, keys[g0], []byte("during"), nil)
	cancel()
	if err != nil {
		t.Fatalf("write to %s with its old leader cut off: %v", g0, err)
	}
	c.Heal()
	if _, err := c.WaitConverged(ctx, g0); err != nil {
		t.Fatal(err)
	}
	v, err := cl.Get(ctx, keys[g0])
	if err != nil || string(v.Value) != "during" {
		t.Fatalf("read after healing: %q, %v", v.Value, err)
	}
	st, err := c.Node(old).Status(g0)
	if err != nil {
		t.Fatal(err)
	}
	if st.State == "leader" {
		if ls, err := c.Leader(g0).Status(g0); err == nil && ls.Term > st.Term {
			t.Errorf("the old leader still leads %s in term %d, the group is in term %d", g0, st.Term, ls.Term)
		}
	}
}

// TestQuiescedGroupsSurviveRestarts restarts a follower and then the leader
// of quiet groups: each time the groups must have a leader again and take
// writes (a restarted replica ticks and campaigns; its vote requests wake
// the quiet replicas, which would otherwise ignore them).
func TestQuiescedGroupsSurviveRestarts(t *testing.T) {
	ctx, c, cl, keys := quiescedCluster(t, 3)
	g0 := c.Groups()[0].ID
	leader := c.Leader(g0).ID()
	var follower ids.NodeID
	for _, id := range c.NodeIDs() {
		if id != leader {
			follower = id
			break
		}
	}
	for i, id := range []ids.NodeID{follower, leader} {
		if err := c.RestartNode(id); err != nil {
			t.Fatal(err)
		}
		for g, k := range keys {
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := cl.Put(wctx, k, []byte(fmt.Sprintf("restart-%d", i)), nil)
			cancel()
			if err != nil {
				t.Fatalf("write to %s after restarting %s: %v", g, id, err)
			}
		}
		for _, g := range c.Groups() {
			if _, err := c.WaitConverged(ctx, g.ID); err != nil {
				t.Fatal(err)
			}
		}
		waitQuiet(ctx, t, c)
	}
}
