package testcluster

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// TestAppendsStandInForHeartbeats checks that a leader whose appends reach
// its followers more often than its heartbeat interval sends them no plain
// heartbeats (raftstore's skipHeartbeat), that it heartbeats again as soon
// as the group goes quiet, and that leadership stays put throughout: the
// appends keep the followers' election timers reset.
func TestAppendsStandInForHeartbeats(t *testing.T) {
	// Heartbeats every 100ms, elections after 1-2s; commit notices held
	// longer than the write interval, so that every append carries entries.
	ctx, c, leader, cl := writtenGroup(t, Options{TickInterval: 20 * time.Millisecond, HeartbeatTicks: 5, ElectionTicks: 50,
		CommitNoticeDelay: 200 * time.Millisecond}, 300*time.Millisecond)
	g := ids.GroupID(1)
	before, err := leader.Status(g)
	if err != nil {
		t.Fatal(err)
	}
	var plain, reads atomic.Int64
	c.Net.SetHook(func(f, _ ids.NodeID, m *transport.Message) bool {
		if f == leader.ID() && m.Msg.Type == raftpb.MsgHeartbeat {
			if len(m.Msg.Context) > 0 {
				reads.Add(1)
			} else {
				plain.Add(1)
			}
		}
		return false
	})

	// Writes every 20ms for 3s: 30 heartbeat intervals, 60 heartbeats to
	// the two followers without the rule. A write that stalls past an
	// interval on a loaded machine lets one through: allow a few.
	const busy = 3 * time.Second
	for i := 0; i < int(busy/(20*time.Millisecond)); i++ {
		if _, err := cl.Put(ctx, []byte(fmt.Sprintf("k%d", i)), []byte("v"), nil); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("busy: %d heartbeats", plain.Load())
	if n := plain.Load(); n > 8 {
		t.Errorf("the leader sent %d heartbeats while its appends went out every 20ms (interval 100ms); want at most 8", n)
	}

	// Reads still run their quorum rounds, which are heartbeats.
	if _, err := cl.Get(ctx, []byte("k0")); err != nil {
		t.Fatal(err)
	}
	if reads.Load() == 0 {
		t.Error("a linearizable read's ReadIndex round sent no heartbeats")
	}

	// Quiet for a second: heartbeats every interval again (20 expected).
	plain.Store(0)
	time.Sleep(time.Second)
	t.Logf("quiet: %d heartbeats", plain.Load())
	if n := plain.Load(); n < 10 {
		t.Errorf("the leader sent %d heartbeats in a quiet second (interval 100ms, two followers); want at least 10", n)
	}

	after, err := leader.Status(g)
	if err != nil {
		t.Fatal(err)
	}
	if after.State != "leader" || after.Term != before.Term {
		t.Errorf("leader went from term %d to %s in term %d: a follower's election timer ran out", before.Term, after.State, after.Term)
	}
	for _, n := range c.Live() {
		st, err := n.Status(g)
		if err != nil {
			t.Fatal(err)
		}
		if st.Term != before.Term {
			t.Errorf("node %s is in term %d, want %d", n.ID(), st.Term, before.Term)
		}
	}
}
