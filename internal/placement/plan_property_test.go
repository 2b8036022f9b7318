package placement

import (
	"fmt"
	"slices"
	"testing"

	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"pgregory.net/rapid"
)

// balanceForced reports whether zones force an uneven spread of 16 groups
// × 3 voters over 5 nodes: with z distinct zones every group must span
// min(3, z) of them, so with z = 3 each zone holds exactly 16 voters (16 on
// a lone node, 8 each on two), with z = 4 the two-node zone holds at most 16
// (8 per node, under the even 9 or 10), and with z = 2 a lone node's zone
// holds every group. Only then may node counts differ by more than one.
func balanceForced(zones []string) bool {
	per := map[string]int{}
	for _, z := range zones {
		if z != "" {
			per[z]++
		}
	}
	switch len(per) {
	case 3, 4:
		return true
	case 2:
		for _, n := range per {
			if n == 1 {
				return true
			}
		}
	}
	return false
}

// Five nodes, RF 3, 16 groups: whatever the zones, the order of joins and
// the learners' progress, repeatedly executing Plan (and Rebalance once
// Plan is done) ends with every data group on 3 voters on distinct nodes
// in as many zones as exist (up to 3), the metadata group on 5 voters, and
// replicas spread evenly: per node within one of each other, no node
// holding every group — unless zones force otherwise (balanceForced), in
// which case nodes of one zone are within one of each other.
func TestPropertyPlanConverges(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		k := rapid.IntRange(0, 5).Draw(t, "zones")
		zones := make([]string, 5)
		if k > 0 {
			for i := range zones {
				if i < k {
					zones[i] = fmt.Sprintf("z%d", i)
				} else {
					zones[i] = fmt.Sprintf("z%d", rapid.IntRange(0, k-1).Draw(t, "zone"))
				}
			}
			zones = rapid.Permutation(zones).Draw(t, "layout")
		}
		st := cluster(t, 3, 16, zones[0])
		// Joins interleaved with plan rounds that execute part of the plan,
		// with learners catching up at random.
		for _, z := range zones[1:] {
			for range rapid.IntRange(0, 4).Draw(t, "rounds") {
				cu := func(g, r uint64) bool { return rapid.Bool().Draw(t, "caught up") }
				ch := Plan(st, cu)
				if len(ch) == 0 {
					ch = Rebalance(st, cu)
				}
				var some []Change
				for _, c := range ch {
					if rapid.Bool().Draw(t, "execute") {
						some = append(some, c)
					}
				}
				st = execute(t, st, some)
			}
			st = addNode(t, st, z)
		}
		st, _ = converge(t, st, 300)

		distinctZones := 0
		seenZone := map[string]bool{}
		for _, z := range zones {
			if z != "" && !seenZone[z] {
				seenZone[z] = true
				distinctZones++
			}
		}
		perNode := loads(st)
		for _, gid := range meta.GroupIDs(st) {
			if gid == 0 {
				continue
			}
			voters := meta.Voters(st, gid)
			if len(voters) != 3 || len(meta.Learners(st, gid)) != 0 {
				t.Fatalf("group %d: %v", gid, st.GetGroups()[gid].GetReplicas())
			}
			nodes, zs := map[uint64]bool{}, map[string]bool{}
			for _, r := range voters {
				nodes[r.GetNode()] = true
				if z := st.GetNodes()[r.GetNode()].GetZone(); z != "" {
					zs[z] = true
				}
			}
			if len(nodes) != 3 {
				t.Fatalf("group %d: voters on %v", gid, nodes)
			}
			if len(zs) != min(3, distinctZones) {
				t.Fatalf("group %d spans zones %v; %d zones exist", gid, zs, distinctZones)
			}
		}
		if v := meta.Voters(st, 0); len(v) != 5 {
			t.Fatalf("metadata group has %d voters", len(v))
		}
		all := meta.NodeIDs(st)
		if !balanceForced(zones) {
			if s := spread(perNode, all); s > 1 {
				t.Fatalf("zones %v: replicas per node %v", zones, perNode)
			}
			for n, c := range perNode {
				if c == 16 {
					t.Fatalf("node %d holds every group: %v", n, perNode)
				}
			}
		}
		for z := range seenZone {
			var in []uint64
			for _, n := range all {
				if st.GetNodes()[n].GetZone() == z {
					in = append(in, n)
				}
			}
			if s := spread(perNode, in); s > 1 {
				t.Fatalf("zone %s nodes %v: replicas per node %v", z, in, perNode)
			}
		}
		// Converged means converged: nothing more to do.
		if p := slices.Concat(Plan(st, always), Rebalance(st, always)); len(p) != 0 {
			t.Fatalf("plan %v after convergence", p)
		}
	})
}

// The scenario the property generalises, spelled out: one founder, four
// joiners in distinct zones.
func TestPlanFiveNodesSixteenGroups(t *testing.T) {
	st := cluster(t, 3, 16, "a", "b", "c", "d", "e")
	st, rounds := converge(t, st, 300)
	perNode := loads(st)
	if s := spread(perNode, meta.NodeIDs(st)); s > 1 {
		t.Fatalf("replicas per node %v", perNode)
	}
	t.Logf("converged in %d rounds: %v", rounds, perNode)
	if st.GetNodes()[1].GetState() != metapb.NodeState_NODE_STATE_ACTIVE {
		t.Fatal("founder not active")
	}
}
