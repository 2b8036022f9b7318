package testcluster

import (
	"fmt"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// TestQuietGroupFollowersApplyPromptly checks that a leader's held-back
// commit notices (raftstore's CommitNoticeDelay) are sent when no later
// append replaces them: with heartbeats only every 2s, the followers of a
// group that goes quiet after a write must still apply it within a fraction
// of that.
func TestQuietGroupFollowersApplyPromptly(t *testing.T) {
	c := New(t, Options{Nodes: 3, Groups: 1, TickInterval: 100 * time.Millisecond, HeartbeatTicks: 20, ElectionTicks: 40})
	ctx := testCtx(t, 60*time.Second)
	g := ids.GroupID(1)
	if err := c.Node(1).Campaign(g); err != nil {
		t.Fatal(err)
	}
	leader, err := c.WaitLeader(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	cl := c.NewClient(1)
	for i := range 5 {
		if _, err := cl.Put(ctx, []byte(fmt.Sprintf("k%d", i)), []byte("v"), nil); err != nil {
			t.Fatal(err)
		}
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
				if time.Since(start) > 500*time.Millisecond {
					t.Fatalf("write %d: node %s applied %d, leader %d, after %v: the commit notice was not sent",
						i, n.ID(), fs.Applied, st.Applied, time.Since(start))
				}
				time.Sleep(time.Millisecond)
			}
		}
		time.Sleep(50 * time.Millisecond) // let the group go quiet
	}
}
