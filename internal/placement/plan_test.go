package placement

import (
	"slices"
	"testing"

	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

func TestPlanNothingToDo(t *testing.T) {
	if Plan(nil, always) != nil || Rebalance(nil, always) != nil || Plan(&metapb.State{}, always) != nil {
		t.Fatal("a plan for no cluster")
	}
	st := cluster(t, 3, 4, "")
	if p := Plan(st, always); len(p) != 0 {
		t.Fatalf("one node, plan %v", p)
	}
	if p := Rebalance(st, always); len(p) != 0 {
		t.Fatalf("one node, rebalance %v", p)
	}
}

func TestPlanAddsThenPromotes(t *testing.T) {
	st := cluster(t, 3, 4, "", "")
	p := Plan(st, always)
	if len(p) != 5 {
		t.Fatalf("plan %v: want a learner on node 2 in groups 0..4", p)
	}
	for i, c := range p {
		if c.Group != uint64(i) || c.Kind != AddLearner || c.Node != 2 || c.Replica != 0 {
			t.Fatalf("change %d: %+v", i, c)
		}
	}
	st = execute(t, st, p)

	// Not caught up: wait, do not add more.
	if p := Plan(st, func(uint64, uint64) bool { return false }); len(p) != 0 {
		t.Fatalf("plan %v while learners catch up", p)
	}
	if p := Plan(st, nil); len(p) != 0 {
		t.Fatalf("nil caughtUp promoted: %v", p)
	}
	// Only group 2's learner caught up.
	p = Plan(st, func(g, _ uint64) bool { return g == 2 })
	if len(p) != 1 || p[0] != (Change{Group: 2, Kind: Promote, Node: 2, Replica: 2}) {
		t.Fatalf("plan %v", p)
	}
	st = execute(t, st, Plan(st, always))
	for _, g := range meta.GroupIDs(st) {
		if v := meta.Voters(st, g); len(v) != 2 {
			t.Fatalf("group %d voters %v", g, v)
		}
	}
	if p := Plan(st, always); len(p) != 0 {
		t.Fatalf("plan %v after convergence", p)
	}
}

// A new replica goes to an unused zone first, then to the least loaded
// node, then to the lowest id.
func TestPlanNodeChoice(t *testing.T) {
	// Nodes: 1 z1, 2 z1, 3 z2, 4 "" (unknown), 5 z2.
	st := cluster(t, 3, 2, "z1", "z1", "z2", "", "z2")
	// Zone z2 is unused: group 1 gets node 3, group 2 node 5 (as loaded as
	// 3 was, before group 1 took it).
	var got []uint64
	for _, c := range Plan(st, always) {
		if c.Group != 0 {
			got = append(got, c.Node)
		}
	}
	if !slices.Equal(got, []uint64{3, 5}) {
		t.Fatalf("learners on %v, want [3 5]", got)
	}
	st = converge1(t, st)
	// Now both zones are used; the least loaded node wins: 2 and 4 hold
	// nothing, 2 is the lowest id. After group 1 takes 2, group 2 takes 4.
	got = nil
	for _, c := range Plan(st, always) {
		if c.Group != 0 {
			got = append(got, c.Node)
		}
	}
	if !slices.Equal(got, []uint64{2, 4}) {
		t.Fatalf("learners on %v, want [2 4]", got)
	}
}

// converge1 runs Plan alone to its fixpoint.
func converge1(t *testing.T, st *metapb.State) *metapb.State {
	t.Helper()
	for range 20 {
		p := Plan(st, always)
		if len(p) == 0 {
			return st
		}
		st = execute(t, st, p)
		// Stop once data groups have two voters, for the test above.
		if len(meta.Voters(st, 1)) == 2 && len(meta.Voters(st, 2)) == 2 && len(meta.Learners(st, 1)) == 0 {
			return st
		}
	}
	t.Fatal("no convergence")
	return nil
}

// The metadata group has a replica on every active node and at most
// meta_voters_max voters.
func TestPlanMetaGroup(t *testing.T) {
	st := cluster(t, 3, 2, "", "", "", "", "", "", "")
	st, _ = converge(t, st, 50)
	if v, l := meta.Voters(st, 0), meta.Learners(st, 0); len(v) != 5 || len(l) != 2 {
		t.Fatalf("metadata group: %d voters, %d learners; want 5 and 2", len(v), len(l))
	}
	// Draining nodes get no new replicas, and are not counted.
	st = apply(t, st, meta.NewSetNodeState(7, metapb.NodeState_NODE_STATE_DRAINING))
	st = addNode(t, st, "")
	p := Plan(st, always)
	if len(p) != 1 || p[0] != (Change{Group: 0, Kind: AddLearner, Node: 8}) {
		t.Fatalf("plan %v", p)
	}
}

// Plans are pure: the same input gives the same plan, whatever map order.
func TestPlanDeterministic(t *testing.T) {
	st := cluster(t, 3, 16, "a", "b", "c", "a", "b")
	first := Plan(st, always)
	for range 20 {
		if p := Plan(st, always); !slices.Equal(p, first) {
			t.Fatalf("plans differ: %v, %v", p, first)
		}
	}
	st, _ = converge(t, cluster(t, 3, 16, "", "", "", "", ""), 200)
	for range 20 {
		if p := Rebalance(st, always); len(p) != 0 {
			t.Fatalf("rebalance after convergence: %v", p)
		}
	}
}

func TestChangeEntry(t *testing.T) {
	st := cluster(t, 3, 1, "", "")
	st = apply(t, st, Change{Group: 1, Kind: AddLearner, Node: 2}.Entry())
	st = apply(t, st, Change{Group: 1, Kind: Replace, Node: 2, Replica: 2, Replaces: 1, ReplacesNode: 1}.Entry())
	if v := meta.Voters(st, 1); len(v) != 1 || v[0].GetNode() != 2 || len(st.GetGroups()[1].GetReplicas()) != 1 {
		t.Fatalf("after replace: %v", st.GetGroups()[1])
	}
	if (Change{Kind: 42}).Entry() != nil || ChangeKind(42).String() == "" || Replace.String() != "replace" {
		t.Fatal("unknown kind")
	}
}
