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
// A group's leadership moves from its leader to the voter with the fewest
// leaderships (lowest node ID on ties) when that voter leads at least two
// fewer groups: every move narrows the spread, so repeated calls end with
// leaderships differing by at most one wherever the voter sets allow. At
// most one move per group per call, in group order. The metadata group is
// left alone.
func BalanceLeaders(st *metapb.State, leaders map[uint64]uint64) []LeaderMove {
	active := map[uint64]bool{}
	for _, n := range meta.ActiveNodes(st) {
		active[n.GetId()] = true
	}
	if len(active) < 2 {
		return nil
	}
	count := map[uint64]int{}
	for g, n := range leaders {
		if g != 0 && st.GetGroups()[g] != nil {
			count[n]++
		}
	}
	var out []LeaderMove
	gids := make([]uint64, 0, len(leaders))
	for g := range leaders {
		gids = append(gids, g)
	}
	slices.Sort(gids)
	for _, g := range gids {
		from := leaders[g]
		if g == 0 || st.GetGroups()[g] == nil {
			continue
		}
		var best *metapb.Replica
		for _, r := range st.GetGroups()[g].GetReplicas() {
			n := r.GetNode()
			if r.GetRole() != metapb.Role_ROLE_VOTER || n == from || !active[n] || count[n]+2 > count[from] {
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
