package testcluster

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/cluster"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/kv"
)

// TestLeadershipTransfer hands a group's leadership to each follower in
// turn; writes keep working, and the old leader points clients at the new
// one with a typed error.
func TestLeadershipTransfer(t *testing.T) {
	c := New(t, Options{Nodes: 3, Groups: 1})
	ctx := testCtx(t, 60*time.Second)
	g := ids.GroupID(1)
	cl := c.NewClient(1)
	key := []byte("k")
	for round := range 3 {
		leader, st := leaderStatus(ctx, t, c, g)
		to := followerOf(t, st, leader.ID())
		if err := leader.TransferLeadership(ctx, g, to.Replica); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		// The old leader now refuses writes and names the new leader.
		cmd, _ := kv.EncodePut(key, []byte("x"), nil, kv.DefaultLimits())
		_, err := leader.Propose(ctx, g, cluster.Proposal{Payload: cmd})
		var nl *cluster.NotLeaderError
		if !errors.As(err, &nl) || nl.Leader != to.Replica || nl.LeaderNode != to.Node {
			t.Fatalf("round %d: propose on the old leader: %v, want NotLeaderError naming %s on %s", round, err, to.Replica, to.Node)
		}
		if c.Leader(g).ID() != to.Node {
			t.Fatalf("round %d: leader is %s, want %s", round, c.Leader(g).ID(), to.Node)
		}
		r, err := cl.Put(ctx, key, []byte(fmt.Sprint(round)), nil)
		if err != nil {
			t.Fatal(err)
		}
		if r.Version != uint64(round+1) {
			t.Fatalf("round %d: version %d", round, r.Version)
		}
	}
}

// TestWipedNodeGetsNewReplicas wipes a node's data dir. Its old replicas are
// removed from their groups and new ones, with new replica IDs, are added in
// their place and caught up from snapshots; traffic addressed to the old
// replica IDs is refused by the wiped node.
func TestWipedNodeGetsNewReplicas(t *testing.T) {
	c := New(t, Options{Nodes: 3, Groups: 2})
	ctx := testCtx(t, 60*time.Second)
	if err := c.WaitAllLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	cl := c.NewClient(1)
	for i := range 100 {
		if _, err := cl.Put(ctx, []byte(fmt.Sprintf("k%d", i)), []byte("v"), nil); err != nil {
			t.Fatal(err)
		}
	}
	const wiped ids.NodeID = 3
	if err := c.WipeNode(wiped); err != nil {
		t.Fatal(err)
	}
	if err := c.StartNode(wiped); err != nil {
		t.Fatal(err)
	}
	n3 := c.Node(wiped)
	if len(n3.Groups()) != 0 {
		t.Fatalf("wiped node still holds %v", n3.Groups())
	}
	waitFor(ctx, t, "wiped node refusing traffic for its old replicas", func() bool {
		return n3.Stats().MessagesDropped.Load() > 0
	})
	for _, grp := range c.Groups() {
		g := grp.ID
		leader, err := c.WaitLeader(ctx, g)
		if err != nil {
			t.Fatal(err)
		}
		if leader.ID() == wiped {
			t.Fatalf("%s led by the wiped node", g)
		}
		st, err := leader.Status(g)
		if err != nil {
			t.Fatal(err)
		}
		var old cluster.Replica
		for _, r := range st.Config.Replicas {
			if r.Node == wiped {
				old = r
			}
		}
		if err := leader.ChangeReplicas(ctx, g, []cluster.ReplicaChange{{Op: cluster.RemoveReplica, Replica: old.Replica}}); err != nil {
			t.Fatal(err)
		}
		fresh := st.Config.MaxReplicaID + 1
		if err := n3.CreateReplica(g, fresh); err != nil {
			t.Fatal(err)
		}
		if err := leader.ChangeReplicas(ctx, g, []cluster.ReplicaChange{{Op: cluster.AddLearner, Replica: fresh, Node: wiped}}); err != nil {
			t.Fatal(err)
		}
		waitFor(ctx, t, "new learner caught up", func() bool {
			st, err := c.Leader(g).Status(g)
			return err == nil && st.Progress[fresh].Match >= st.Commit
		})
		if err := c.Leader(g).ChangeReplicas(ctx, g, []cluster.ReplicaChange{{Op: cluster.AddVoter, Replica: fresh}}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.WaitConverged(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	if n3.Stats().SnapshotsApplied.Load() < uint64(len(c.Groups())) {
		t.Fatal("new replicas did not start from snapshots")
	}
	// The repaired node serves linearizable reads of the old data.
	q, _ := kv.EncodeGet([]byte("k42"), kv.DefaultLimits())
	vs, g := c.Route([]byte("k42"))
	res, err := n3.Read(ctx, g, vs, q)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := kv.DecodeGetResponse(res); !got.Found {
		t.Fatal("repaired node lacks old data")
	}
}

func waitFor(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestConfChangeRightAfterElection proposes a configuration change the
// moment a node becomes leader, before it has applied an entry of its term.
// Raft itself would drop such a change (it cannot yet know whether an older
// one is pending); the host holds it until the new term's first entry
// applies, so the caller sees success, not a spurious rejection.
func TestConfChangeRightAfterElection(t *testing.T) {
	c := New(t, Options{Nodes: 4, Groups: 1, RF: 3})
	ctx := testCtx(t, 60*time.Second)
	g := ids.GroupID(1)
	// Writers keep entries in flight, so a new leader usually has committed
	// entries it has not applied yet when it takes over: that is when Raft
	// refuses configuration changes.
	stop := make(chan struct{})
	var writers sync.WaitGroup
	var writes atomic.Int64
	for w := range 4 {
		writers.Add(1)
		go func() {
			defer writers.Done()
			cl := c.NewClient(uint64(100 + w))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := cl.Put(ctx, []byte(fmt.Sprintf("w%d-%d", w, i)), []byte("v"), nil); err == nil {
					writes.Add(1)
				}
			}
		}()
	}
	defer func() {
		close(stop)
		writers.Wait()
		if writes.Load() == 0 {
			t.Error("the writers wrote nothing")
		}
	}()
	for round := range 6 {
		leader, st := leaderStatus(ctx, t, c, g)
		var to cluster.Replica
		var spare ids.NodeID
		hosts := map[ids.NodeID]bool{}
		for _, r := range st.Config.Replicas {
			hosts[r.Node] = true
			if r.Node != leader.ID() && to.Replica == 0 {
				to = r
			}
		}
		for _, id := range c.NodeIDs() {
			if !hosts[id] {
				spare = id
			}
		}
		if to.Replica == 0 {
			t.Fatalf("round %d: no follower in %+v", round, st.Config)
		}
		next := c.Node(to.Node)
		transferred := make(chan error, 1)
		go func() { transferred <- leader.TransferLeadership(ctx, g, to.Replica) }()
		fresh := st.Config.MaxReplicaID + 1
		// The spare node may still be deleting the replica it had (it
		// destroys itself once removed): creation waits for that.
		waitFor(ctx, t, "a new replica on the spare node", func() bool {
			err := c.Node(spare).CreateReplica(g, fresh)
			if err != nil && !errors.Is(err, cluster.ErrReplicaExists) {
				t.Fatal(err)
			}
			return err == nil
		})
		// The moment next leads: add a learner on the spare node...
		for {
			err := next.ChangeReplicas(ctx, g, []cluster.ReplicaChange{{Op: cluster.AddLearner, Replica: fresh, Node: spare}})
			var nl *cluster.NotLeaderError
			if errors.As(err, &nl) && ctx.Err() == nil {
				select {
				case terr := <-transferred:
					// A transfer can time out under load (the target
					// lagging behind the writers): ask again, of whoever
					// leads now.
					if terr != nil || !next.IsLeader(g) {
						if cur := c.Leader(g); cur != nil && cur != next {
							go func() { transferred <- cur.TransferLeadership(ctx, g, to.Replica) }()
						} else {
							go func() { time.Sleep(10 * time.Millisecond); transferred <- errors.New("no leader yet") }()
						}
					} else {
						transferred <- nil // done; keep it for the check below
					}
				default:
				}
				runtime.Gosched()
				continue
			}
			if err != nil {
				t.Fatalf("round %d: add learner right after election: %v", round, err)
			}
			break
		}
		// The last transfer asked for has ended (it may have lost a race
		// with the change above; only leadership matters).
		<-transferred
		waitFor(ctx, t, "learner caught up", func() bool {
			st, err := next.Status(g)
			return err == nil && st.Progress[fresh].Match >= st.Commit
		})
		// ...then swap it in for the old leader's replica in one joint step,
		// so the voters rotate and the next round has a new spare node.
		var old ids.ReplicaID
		for _, r := range st.Config.Replicas {
			if r.Node == leader.ID() {
				old = r.Replica
			}
		}
		if err := next.ChangeReplicas(ctx, g, []cluster.ReplicaChange{{Op: cluster.AddVoter, Replica: fresh}, {Op: cluster.RemoveReplica, Replica: old}}); err != nil {
			t.Fatalf("round %d: swap: %v", round, err)
		}
		// The removed replica's node drops its data (the server's control
		// loop does this on its own; here the test plays that part).
		if err := leader.DestroyReplica(g); err != nil && !errors.Is(err, cluster.ErrGroupNotFound) {
			t.Fatal(err)
		}
	}
}

// TestTransferToACutOffReplicaFails: Raft abandons a leadership transfer
// whose target does not answer within an election timeout; TransferLeadership
// reports that then (ErrTransferAborted), instead of waiting for its caller's
// deadline, and leadership stays where it was.
func TestTransferToACutOffReplicaFails(t *testing.T) {
	c := New(t, Options{Nodes: 3, Groups: 1})
	ctx := testCtx(t, 60*time.Second)
	g := ids.GroupID(1)
	leader, st := leaderStatus(ctx, t, c, g)
	to := followerOf(t, st, leader.ID())
	c.Isolate(to.Node)
	cl := c.NewClient(1)
	for i := range 5 {
		if _, err := cl.Put(ctx, []byte(fmt.Sprintf("k%d", i)), []byte("v"), nil); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	err := leader.TransferLeadership(ctx, g, to.Replica)
	if !errors.Is(err, cluster.ErrTransferAborted) {
		t.Fatalf("transfer to a cut-off replica: %v, want ErrTransferAborted", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("the abandoned transfer was reported after %v", d)
	}
	if !leader.IsLeader(g) {
		t.Fatal("leadership moved although the transfer was abandoned")
	}
	c.Heal()
	if err := leader.TransferLeadership(ctx, g, to.Replica); err != nil {
		t.Fatalf("transfer after healing: %v", err)
	}
}

// followerOf returns a replica in st's configuration that is not on the
// leader's node.
func followerOf(t *testing.T, st cluster.GroupStatus, leader ids.NodeID) cluster.Replica {
	t.Helper()
	for _, r := range st.Config.Replicas {
		if r.Node != leader {
			return r
		}
	}
	t.Fatalf("no follower in %+v", st.Config)
	return cluster.Replica{}
}

// leaderStatus waits for g's leader and returns it with its view of g.
func leaderStatus(ctx context.Context, t *testing.T, c *Cluster, g ids.GroupID) (*cluster.Node, cluster.GroupStatus) {
	t.Helper()
	leader, err := c.WaitLeader(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	st, err := leader.Status(g)
	if err != nil {
		t.Fatal(err)
	}
	return leader, st
}

// TestStatusReportsPendingConfChange: a configuration change that is in the
// leader's log but not applied (its followers are cut off) shows as pending
// in Status, and stops showing once it applies.
func TestStatusReportsPendingConfChange(t *testing.T) {
	// A long election timeout: the cut-off leader must still lead when the
	// change is proposed (CheckQuorum steps it down after one timeout).
	c := New(t, Options{Nodes: 4, Groups: 1, RF: 3, ElectionTicks: 100})
	ctx := testCtx(t, 30*time.Second)
	g := ids.GroupID(1)
	leader, st := leaderStatus(ctx, t, c, g)
	waitFor(ctx, t, "nothing pending after the election", func() bool {
		st, err := leader.Status(g)
		return err == nil && !st.ConfChangePending
	})
	var spare ids.NodeID
	hosts := map[ids.NodeID]bool{}
	for _, r := range st.Config.Replicas {
		hosts[r.Node] = true
	}
	for _, id := range c.NodeIDs() {
		if !hosts[id] {
			spare = id
		}
	}
	fresh := st.Config.MaxReplicaID + 1
	if err := c.Node(spare).CreateReplica(g, fresh); err != nil {
		t.Fatal(err)
	}
	c.Isolate(leader.ID())
	changed := make(chan error, 1)
	go func() {
		changed <- leader.ChangeReplicas(ctx, g, []cluster.ReplicaChange{{Op: cluster.AddLearner, Replica: fresh, Node: spare}})
	}()
	waitFor(ctx, t, "the change pending on the cut-off leader", func() bool {
		st, err := leader.Status(g)
		return err == nil && st.ConfChangePending
	})
	c.Heal()
	// The change commits (or a new leader's term overwrites it); either
	// way, once applied everywhere nothing is pending.
	<-changed
	waitFor(ctx, t, "nothing pending once applied", func() bool {
		l := c.Leader(g)
		if l == nil {
			return false
		}
		st, err := l.Status(g)
		return err == nil && !st.ConfChangePending && st.Applied >= st.Commit
	})
}
