package placement

import (
	"slices"

	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

// LeaderMove hands a data group's leadership from one node to another.
type LeaderMove struct {
	Group    uint64
	From, To uint64
	// ToReplica is the group's replica on To.
	ToReplica uint64
}

// BalanceLeaders spreads the leadership of data groups over the ACTIVE
// nodes: leaders serve every write and read of their group, so a node that
// leads every group (the bootstrap node founds them all) does all the work
// while the others only replicate. leaders maps a group to the node that
// leads it now (groups without a known leader are left out).
//
// No node should lead more than ceil(groups / active nodes). Each move takes
// a group from a node above that bound to one of the group's voters with the
// fewest leaderships below it (lowest node ID on ties); at most one move per
// group, deterministic order. The metadata group is left alone.
func BalanceLeaders(st *metapb.State, leaders map[uint64]uint64) []LeaderMove {
	active := map[uint64]bool{}
	for _, n := range meta.ActiveNodes(st) {
		active[n.GetId()] = true
	}
	if len(active) < 2 {
		return nil
	}
	count := map[uint64]int{}
	groups := 0
	for g, n := range leaders {
		if g == 0 || st.GetGroups()[g] == nil {
			continue
		}
		groups++
		count[n]++
	}
	bound := (groups + len(active) - 1) / len(active)
	var out []LeaderMove
	gids := make([]uint64, 0, len(leaders))
	for g := range leaders {
		gids = append(gids, g)
	}
	slices.Sort(gids)
	for _, g := range gids {
		from := leaders[g]
		if g == 0 || count[from] <= bound {
			continue
		}
		var best *metapb.Replica
		for _, r := range st.GetGroups()[g].GetReplicas() {
			n := r.GetNode()
			if r.GetRole() != metapb.Role_ROLE_VOTER || n == from || !active[n] || count[n] >= bound {
				continue
			}
			if best == nil || count[n] < count[best.GetNode()] || (count[n] == count[best.GetNode()] && n < best.GetNode()) {
				best = r
			}
		}
		if best == nil {
			continue
		}
		count[from]--
		count[best.GetNode()]++
		out = append(out, LeaderMove{Group: g, From: from, To: best.GetNode(), ToReplica: best.GetId()})
	}
	return out
}
