package placement

import (
	"testing"

	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

func TestBalanceLeadersSpreadsTheFoundersLeaderships(t *testing.T) {
	st, _ := converge(t, cluster(t, 3, 6, "", "", ""), 100)
	leaders := map[uint64]uint64{0: 1}
	for g := uint64(1); g <= 6; g++ {
		leaders[g] = 1 // node 1 founded every group and leads it
	}
	moves := BalanceLeaders(st, leaders)
	for _, m := range moves {
		if m.Group == 0 {
			t.Fatal("the metadata group's leadership was moved")
		}
		r := meta.ReplicaByID(st.GetGroups()[m.Group], m.ToReplica)
		if m.From != leaders[m.Group] || r == nil || r.GetNode() != m.To || r.GetRole() != metapb.Role_ROLE_VOTER {
			t.Fatalf("move %+v: not from the leader to a voter", m)
		}
		leaders[m.Group] = m.To
	}
	count := map[uint64]int{}
	for g, n := range leaders {
		if g != 0 {
			count[n]++
		}
	}
	for n := uint64(1); n <= 3; n++ {
		if count[n] != 2 {
			t.Fatalf("leaders per node %v after %d moves, want 2 each", count, len(moves))
		}
	}
	if again := BalanceLeaders(st, leaders); len(again) != 0 {
		t.Fatalf("balanced leaders moved again: %v", again)
	}
}

func TestBalanceLeadersFillsAnIdleNode(t *testing.T) {
	st, _ := converge(t, cluster(t, 3, 4, "", "", ""), 100)
	leaders := map[uint64]uint64{1: 1, 2: 1, 3: 2, 4: 2} // 2, 2, 0
	moves := BalanceLeaders(st, leaders)
	if len(moves) != 1 || moves[0].To != 3 {
		t.Fatalf("moves %+v: want one leadership moved to the idle node 3", moves)
	}
}

func TestBalanceLeadersSkipsInactiveNodes(t *testing.T) {
	st, _ := converge(t, cluster(t, 3, 4, "", "", ""), 100)
	st = apply(t, st, meta.NewSetNodeState(3, metapb.NodeState_NODE_STATE_DRAINING))
	leaders := map[uint64]uint64{1: 1, 2: 1, 3: 1, 4: 1}
	for _, m := range BalanceLeaders(st, leaders) {
		if m.To == 3 {
			t.Fatalf("leadership moved to a draining node: %+v", m)
		}
	}
	if BalanceLeaders(nil, leaders) != nil {
		t.Fatal("moves without a cluster")
	}
}
