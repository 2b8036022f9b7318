package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/failpoint"
	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// moveCluster is four nodes, two groups of three voters: every group has a
// node without a replica to move one to.
func moveCluster(t *testing.T, tune func(*Config)) (*testCluster, ClusterStatus) {
	t.Helper()
	c := newTunedCluster(t, Settings{VShards: 16, Groups: 2, RF: 3}, tune)
	for range 3 {
		c.join()
	}
	return c, c.waitPlaced(4, 3)
}

// server returns the running node with ID id.
func (c *testCluster) server(id uint64) *Server {
	for _, s := range c.nodes {
		if s != nil && uint64(s.ID()) == id {
			return s
		}
	}
	c.t.Fatalf("no running node %d", id)
	return nil
}

// groupOf returns group g of st.
func groupOf(t *testing.T, st ClusterStatus, g uint64) GroupInfo {
	t.Helper()
	for _, gi := range st.Groups {
		if gi.ID == g {
			return gi
		}
	}
	t.Fatalf("no group %d in %+v", g, st.Groups)
	return GroupInfo{}
}

// outsider returns a node of st that holds no replica of g.
func outsider(t *testing.T, st ClusterStatus, g GroupInfo) uint64 {
	t.Helper()
	for _, n := range st.Nodes {
		if !slices.Contains(g.Voters, n.ID) && !slices.Contains(g.Learners, n.ID) {
			return n.ID
		}
	}
	t.Fatalf("every node holds group %d", g.ID)
	return 0
}

// waitNoMigrations waits until no migration row is left.
func (c *testCluster) waitNoMigrations(timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	var last []MigrationInfo
	for time.Now().Before(deadline) {
		st, err := c.nodes[0].ClusterStatus()
		if err == nil && len(st.Migrations) == 0 {
			return
		}
		last = st.Migrations
		time.Sleep(50 * time.Millisecond)
	}
	c.t.Fatalf("migrations left: %+v", last)
}

// putKeys writes n keys through node s and returns them.
func putKeys(t *testing.T, s *Server, prefix string, n int) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := map[string]string{}
	for i := range n {
		k, v := fmt.Sprintf("%s-%d", prefix, i), fmt.Sprintf("v%d", i)
		if _, err := s.KVPut(ctx, []byte(k), []byte(v), WriteOptions{IdempotencyKey: k}); err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
		out[k] = v
	}
	return out
}

func checkKeys(t *testing.T, s *Server, kvs map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for k, v := range kvs {
		got, err := s.KVGet(ctx, []byte(k), ReadOptions{})
		if err != nil || !got.Found || string(got.Value) != v {
			t.Fatalf("get %s through node %d: %+v %v, want %s", k, s.ID(), got, err, v)
		}
	}
}

// A replica move over real QUIC, of the voter that leads its group: the
// learner is added and catches up, leadership leaves the outgoing node,
// one joint change replaces the voter, the row is deleted, the outgoing
// node drops its replica, and the data reads back through the new voter.
// A second move of the same group while the first runs is a conflict.
func TestReplicaMoveOfTheLeaderCompletes(t *testing.T) {
	c, st := moveCluster(t, nil)
	kvs := putKeys(t, c.nodes[0], "before", 40)
	g := groupOf(t, st, 1)
	from := g.Leader
	to := outsider(t, st, g)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mi, err := c.nodes[1].MoveReplica(ctx, MoveRequest{Group: 1, From: from, To: to})
	if err != nil {
		t.Fatal(err)
	}
	// The coordinator may have advanced the row before the answer was read.
	if mi.Phase == "" || mi.Phase == "aborting" || mi.Group != 1 || mi.From != from || mi.To != to || mi.Attempt != 1 || mi.ID == "" {
		t.Fatalf("started: %+v", mi)
	}
	_, err = c.nodes[2].MoveReplica(ctx, MoveRequest{Group: 1, From: g.Voters[0], To: to})
	var ae *APIError
	if !errors.As(err, &ae) || ae.Code != CodeConflict {
		t.Fatalf("second move of group 1: %v, want conflict", err)
	}
	c.waitNoMigrations(60 * time.Second)
	st = c.waitPlaced(4, 3)
	after := groupOf(t, st, 1)
	want := slices.Sorted(slices.Values(append(slices.DeleteFunc(slices.Clone(g.Voters), func(n uint64) bool { return n == from }), to)))
	if !slices.Equal(after.Voters, want) {
		t.Fatalf("voters after the move %v, want %v", after.Voters, want)
	}
	checkKeys(t, c.server(to), kvs)
	checkKeys(t, c.server(from), kvs)
	deadline := time.Now().Add(20 * time.Second)
	for slices.Contains(c.server(from).Node().Groups(), ids.GroupID(1)) {
		if time.Now().After(deadline) {
			t.Fatalf("node %d still holds a replica of group 1", from)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := testutilCounter(t, c, "nodedb_replica_moves_completed_total"); n != 1 {
		t.Fatalf("moves completed, summed over nodes: %v", n)
	}
}

// testutilCounter sums a counter over every running node's registry.
func testutilCounter(t *testing.T, c *testCluster, name string) float64 {
	t.Helper()
	var sum float64
	for _, s := range c.nodes {
		if s == nil {
			continue
		}
		mfs, err := s.Registry().Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == name {
				for _, m := range mf.GetMetric() {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

// holdAtAddLearner makes every coordinator fail to record catch_up, so a
// move stays at add_learner with its learner in Raft.
func holdAtAddLearner(t *testing.T) {
	undo, err := failpoint.Enable("move.before-checkpoint-catch_up", "error")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(undo)
}

// waitLearner waits until group g's record has a learner on node to.
func (c *testCluster) waitLearner(g, to uint64) {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		st, err := c.nodes[0].ClusterStatus()
		if err == nil && slices.Contains(groupOf(c.t, st, g).Learners, to) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.t.Fatalf("no learner of group %d on node %d", g, to)
}

// An operator's abort before the point of no return undoes the move with
// real Raft changes: the learner leaves Raft and the record, the row is
// deleted, the group keeps its voters.
func TestReplicaMoveAbortedByOperator(t *testing.T) {
	c, st := moveCluster(t, nil)
	holdAtAddLearner(t)
	g := groupOf(t, st, 2)
	to := outsider(t, st, g)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mi, err := c.nodes[0].MoveReplica(ctx, MoveRequest{Group: 2, From: g.Voters[0], To: to})
	if err != nil {
		t.Fatal(err)
	}
	c.waitLearner(2, to)
	got, err := c.nodes[3].AbortMigration(ctx, mi.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Phase != "aborting" || got.LastError != "aborted by an operator" {
		t.Fatalf("after abort: %+v", got)
	}
	c.waitNoMigrations(60 * time.Second)
	st = c.waitPlaced(4, 3)
	if after := groupOf(t, st, 2); !slices.Equal(after.Voters, g.Voters) {
		t.Fatalf("voters after the abort %v, want %v", after.Voters, g.Voters)
	}
	if _, err := c.nodes[0].AbortMigration(ctx, mi.ID); !isCode(err, CodeNotFound) {
		t.Fatalf("abort of a finished move: %v", err)
	}
	if n := testutilCounter(t, c, "nodedb_replica_moves_aborted_total"); n != 1 {
		t.Fatalf("moves aborted, summed over nodes: %v", n)
	}
}

func isCode(err error, code string) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Code == code
}

// A move older than the abort timeout is aborted by the coordinator with
// its compensations applied.
func TestStaleReplicaMoveIsAborted(t *testing.T) {
	c, st := moveCluster(t, func(cfg *Config) { cfg.MoveAbortTimeout = 3 * time.Second })
	holdAtAddLearner(t)
	g := groupOf(t, st, 1)
	to := outsider(t, st, g)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.nodes[0].MoveReplica(ctx, MoveRequest{Group: 1, From: g.Voters[1], To: to}); err != nil {
		t.Fatal(err)
	}
	c.waitLearner(1, to)
	c.waitNoMigrations(60 * time.Second)
	st = c.waitPlaced(4, 3)
	if after := groupOf(t, st, 1); !slices.Equal(after.Voters, g.Voters) {
		t.Fatalf("voters after the abort %v, want %v", after.Voters, g.Voters)
	}
}

// A move whose target stops answering is aborted once the target is gone,
// and the learner on it is removed from Raft without its node's help.
func TestReplicaMoveToAGoneNodeIsAborted(t *testing.T) {
	c, st := moveCluster(t, func(cfg *Config) { cfg.NodeGoneAfter = 2 * time.Second })
	holdAtAddLearner(t)
	g := groupOf(t, st, 1)
	to := outsider(t, st, g)
	if to == 1 {
		t.Skip("the outsider is the bootstrap node") // never: node 1 founds every group
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.nodes[0].MoveReplica(ctx, MoveRequest{Group: 1, From: g.Voters[0], To: to}); err != nil {
		t.Fatal(err)
	}
	c.waitLearner(1, to)
	for i, s := range c.nodes {
		if s != nil && uint64(s.ID()) == to {
			s.Stop()
			c.nodes[i] = nil
		}
	}
	c.waitNoMigrations(60 * time.Second)
	st, err := c.nodes[0].ClusterStatus()
	if err != nil {
		t.Fatal(err)
	}
	after := groupOf(t, st, 1)
	if !slices.Equal(after.Voters, g.Voters) || len(after.Learners) > 0 {
		t.Fatalf("group 1 after the abort: %+v, want voters %v and no learner", after, g.Voters)
	}
	if err := c.raftMatches(after); err != nil {
		t.Fatal(err)
	}
}

// The admin socket arms and disarms failpoints of the running process.
func TestAdminArmsFailpoints(t *testing.T) {
	c := newTestCluster(t, Settings{VShards: 16, Groups: 1, RF: 1})
	a := NewAdminClient(c.dirs[0])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const name = "test.admin-armed"
	if err := a.ArmFailpoint(ctx, name, "2*error"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		err := failpoint.Inject(name)
		if want := i < 2; errors.Is(err, failpoint.ErrInjected) != want {
			t.Fatalf("reach %d: %v", i, err)
		}
	}
	if err := a.ArmFailpoint(ctx, name, "error"); err != nil {
		t.Fatal(err)
	}
	if err := a.DisarmFailpoint(ctx, name); err != nil {
		t.Fatal(err)
	}
	if err := failpoint.Inject(name); err != nil {
		t.Fatalf("disarmed: %v", err)
	}
	var ae *AdminError
	if err := a.DisarmFailpoint(ctx, name); !errors.As(err, &ae) || ae.Code != "not_found" {
		t.Fatalf("disarm twice: %v", err)
	}
	if err := a.ArmFailpoint(ctx, name, "explode"); !errors.As(err, &ae) || ae.Code != "invalid_argument" {
		t.Fatalf("bad action: %v", err)
	}
}

// A target is gone once it has not answered for goneAfter, counting at the
// latest from the coordinator's takeover and from the newest move to it.
func TestMoveTargetGone(t *testing.T) {
	now := time.Now()
	c := &moveCoordinator{goneAfter: 2 * time.Second, since: now.Add(-10 * time.Second),
		seen: map[uint64]time.Time{4: now.Add(-3 * time.Second), 5: now.Add(-time.Second)}, started: map[uint64]time.Time{}}
	if !c.gone(4) || c.gone(5) {
		t.Fatalf("silent for 3s: gone %v; answered 1s ago: gone %v", c.gone(4), c.gone(5))
	}
	if !c.gone(6) {
		t.Fatal("a target never heard from since a takeover 10s ago is not gone")
	}
	c.started[4] = now.Add(-time.Second)
	if c.gone(4) {
		t.Fatal("a move started 1s ago already declares its target gone")
	}
	c.since = now.Add(-time.Second)
	if c.gone(6) {
		t.Fatal("a coordinator of 1s declares a target gone")
	}
}
