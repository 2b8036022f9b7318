package testcluster

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/cluster"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// TestQuietGroupFollowersApplyPromptly checks that a leader's held-back
// commit notices (raftstore's CommitNoticeDelay, default 50ms) are sent when
// no later append replaces them: with heartbeats only every 2s, the followers
// of a group that goes quiet after a write must still apply it within a
// fraction of that.
func TestQuietGroupFollowersApplyPromptly(t *testing.T) {
	c := New(t, Options{Nodes: 3, Groups: 1, TickInterval: 100 * time.Millisecond, HeartbeatTicks: 20, ElectionTicks: 40})
	ctx := testCtx(t, 60*time.Second)
	g := ids.GroupID(1)
	leader := campaign(ctx, t, c, g)
	cl := c.NewClient(1)
	for i := range 5 {
		if _, err := cl.Put(ctx, []byte(fmt.Sprintf("k%d", i)), []byte("v"), nil); err != nil {
			t.Fatal(err)
		}
		if d := waitFollowersApplied(t, c, leader, g, 500*time.Millisecond); d < 0 {
			t.Fatalf("write %d: a follower had not applied it after 500ms: the commit notice was not sent", i)
		}
		time.Sleep(50 * time.Millisecond) // let the group go quiet
	}
}

// TestCommitNoticesRideLaterAppends checks that a held notice is replaced by
// the next append to the same follower, however long the writes go on: the
// delay counts from each notice, not from the first one held (a leader that
// flushed every held notice when its first one fell due sent one per delay
// while writes kept coming).
func TestCommitNoticesRideLaterAppends(t *testing.T) {
	const delay = 400 * time.Millisecond
	ctx, c, leader, cl := writtenGroup(t, Options{TickInterval: 100 * time.Millisecond, HeartbeatTicks: 50, ElectionTicks: 100,
		CommitNoticeDelay: delay}, 2*delay)
	g := ids.GroupID(1)
	empty := countEmptyAppends(c, leader.ID())

	// Writes 20ms apart for 10 delays: each notice is superseded by the next
	// write's append long before it is due.
	for i := range int(10 * delay / (20 * time.Millisecond)) {
		if _, err := cl.Put(ctx, []byte(fmt.Sprintf("k%d", i)), []byte("v"), nil); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Two notices per follower are allowed for a write that stalled beyond
	// the delay on a loaded machine; one per delay would be 20.
	if n := empty.Load(); n > 4 {
		t.Errorf("the leader sent %d commit notices while writes kept coming every 20ms (delay %v); want at most 4", n, delay)
	}
	// The last write's notice is sent once the group is quiet.
	if d := waitFollowersApplied(t, c, leader, g, delay+2*time.Second); d < 0 {
		t.Fatal("the followers never applied the last write")
	}
}

// TestHeartbeatCarriesCommitNotice checks that a heartbeat replaces a held
// notice: it carries the commit index to a caught-up follower, which applies
// the write, and the notice is then never sent.
func TestHeartbeatCarriesCommitNotice(t *testing.T) {
	const delay = 2 * time.Second
	ctx, c, leader, cl := writtenGroup(t, Options{TickInterval: 20 * time.Millisecond, HeartbeatTicks: 5, ElectionTicks: 50,
		CommitNoticeDelay: delay}, delay+time.Second)
	g := ids.GroupID(1)
	empty := countEmptyAppends(c, leader.ID())
	for i := range 3 {
		if _, err := cl.Put(ctx, []byte(fmt.Sprintf("k%d", i)), []byte("v"), nil); err != nil {
			t.Fatal(err)
		}
		// Heartbeats every 100ms: the followers apply well before the delay.
		if d := waitFollowersApplied(t, c, leader, g, delay/2); d < 0 {
			t.Fatalf("write %d: a follower had not applied it after %v with heartbeats every 100ms", i, delay/2)
		}
	}
	time.Sleep(delay + 500*time.Millisecond)
	if n := empty.Load(); n != 0 {
		t.Errorf("the leader sent %d commit notices that heartbeats had carried; want 0", n)
	}
}

// writtenGroup starts 3 nodes with opts and one group led by node 1, writes
// once and waits settle (for that write's notice to have gone out).
func writtenGroup(t *testing.T, opts Options, settle time.Duration) (context.Context, *Cluster, *cluster.Node, *Client) {
	t.Helper()
	opts.Nodes, opts.Groups = 3, 1
	c := New(t, opts)
	ctx := testCtx(t, 60*time.Second)
	leader := campaign(ctx, t, c, 1)
	cl := c.NewClient(1)
	if _, err := cl.Put(ctx, []byte("warm"), []byte("v"), nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(settle)
	return ctx, c, leader, cl
}

func campaign(ctx context.Context, t *testing.T, c *Cluster, g ids.GroupID) *cluster.Node {
	t.Helper()
	if err := c.Node(1).Campaign(g); err != nil {
		t.Fatal(err)
	}
	leader, err := c.WaitLeader(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	return leader
}

// countEmptyAppends counts, from now on, the appends without entries (commit
// notices) that from sends.
func countEmptyAppends(c *Cluster, from ids.NodeID) *atomic.Int64 {
	var n atomic.Int64
	c.Net.SetHook(func(f, _ ids.NodeID, m *transport.Message) bool {
		if f == from && m.Msg.Type == raftpb.MsgApp && len(m.Msg.Entries) == 0 {
			n.Add(1)
		}
		return false
	})
	return &n
}

// waitFollowersApplied waits up to limit for every live node to apply as far
// as the leader has, and returns how long that took, or -1.
func waitFollowersApplied(t *testing.T, c *Cluster, leader *cluster.Node, g ids.GroupID, limit time.Duration) time.Duration {
	t.Helper()
	st, err := leader.Status(g)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for _, n := range c.Live() {
		for {
			fs, err := n.Status(g)
			if err != nil {
				t.Fatal(err)
			}
			if fs.Applied >= st.Applied {
				break
			}
			if time.Since(start) > limit {
				t.Logf("node %s applied %d, leader %d, after %v", n.ID(), fs.Applied, st.Applied, time.Since(start))
				return -1
			}
			time.Sleep(time.Millisecond)
		}
	}
	return time.Since(start)
}
