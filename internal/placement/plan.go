package placement

import (
	"slices"

	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

// Plan returns the next repair steps for every group: at most one change
// per group, ordered by group id. It is pure: the same state and the same
// caughtUp answers give the same plan, so any metadata leader computes the
// plan its predecessor would have. caughtUp reports whether learner replica
// of group is close enough to its leader's log to vote; a nil caughtUp
// never promotes.
//
// Data groups (id ≥ 1) aim at min(RF, ACTIVE nodes) voters. A group with a
// learner promotes it once caught up, while it has fewer voters than the
// target; otherwise it waits for it (one learner at a time). A group short
// of voters and without a learner gets a learner on the best node.
//
// The metadata group (0) has a replica on every ACTIVE node, up to
// settings.meta_voters_max voters (default 5); the others stay learners,
// so that every node follows the metadata log while the quorum stays
// small. A caught-up learner is promoted while there are fewer voters than
// the maximum; otherwise an ACTIVE node without a replica gets a learner.
//
// The best node for a new replica is an ACTIVE node without one in the
// group, in a zone none of the group's replicas uses when there is one
// (an empty zone is unknown, never "unused"), then with the fewest
// replicas over all data groups, then with the lowest id. Plan never
// removes replicas: moving them off overloaded nodes is Rebalance's.
func Plan(st *metapb.State, caughtUp func(group, replica uint64) bool) []Change {
	if !meta.Bootstrapped(st) {
		return nil
	}
	v := newView(st, caughtUp)
	var out []Change
	for _, gid := range meta.GroupIDs(st) {
		var c *Change
		if gid == 0 {
			c = v.planMeta()
		} else {
			c = v.planData(gid)
		}
		if c != nil {
			out = append(out, *c)
		}
	}
	return out
}

// view is the state seen by the planners, with the running per-node load
// that the changes planned so far in this call have already added to.
type view struct {
	st       *metapb.State
	caughtUp func(group, replica uint64) bool
	active   []*metapb.Node
	load     map[uint64]int // replicas of data groups per node
}

func newView(st *metapb.State, caughtUp func(group, replica uint64) bool) *view {
	if caughtUp == nil {
		caughtUp = func(uint64, uint64) bool { return false }
	}
	v := &view{st: st, caughtUp: caughtUp, active: meta.ActiveNodes(st), load: map[uint64]int{}}
	for gid, g := range st.GetGroups() {
		if gid == 0 {
			continue
		}
		for _, r := range g.GetReplicas() {
			v.load[r.GetNode()]++
		}
	}
	return v
}

// target is a data group's voter count goal.
func (v *view) target() int {
	return min(int(v.st.GetSettings().GetReplicationFactor()), len(v.active))
}

func (v *view) planData(gid uint64) *Change {
	voters, learners := meta.Voters(v.st, gid), meta.Learners(v.st, gid)
	if len(learners) > 0 {
		if len(voters) >= v.target() {
			return nil
		}
		return v.promote(gid, voters, learners)
	}
	if len(voters) >= v.target() {
		return nil
	}
	return v.addLearner(gid, true)
}

func (v *view) planMeta() *Change {
	voters, learners := meta.Voters(v.st, 0), meta.Learners(v.st, 0)
	if len(voters) < int(meta.MetaVotersMax(v.st)) {
		if c := v.promote(0, voters, learners); c != nil {
			return c
		}
	}
	return v.addLearner(0, false)
}

// promote returns the promotion of the best caught-up learner: one whose
// zone the voters do not use yet, then the lowest replica id.
func (v *view) promote(gid uint64, voters, learners []*metapb.Replica) *Change {
	used := v.zones(voters)
	best := -1
	for i, l := range learners {
		if !v.caughtUp(gid, l.GetId()) {
			continue
		}
		if best < 0 || (!v.zoneUsed(l.GetNode(), used) && v.zoneUsed(learners[best].GetNode(), used)) {
			best = i
		}
	}
	if best < 0 {
		return nil
	}
	l := learners[best]
	return &Change{Group: gid, Kind: Promote, Node: l.GetNode(), Replica: l.GetId()}
}

// addLearner plans a learner on the best node for group gid, if any.
// counts says whether the new replica counts towards the data load.
func (v *view) addLearner(gid uint64, counts bool) *Change {
	g := v.st.GetGroups()[gid]
	used := v.zones(g.GetReplicas())
	var best *metapb.Node
	for _, n := range v.active {
		if meta.ReplicaOnNode(g, n.GetId()) != nil {
			continue
		}
		if best == nil || v.better(n, best, used) {
			best = n
		}
	}
	if best == nil {
		return nil
	}
	if counts {
		v.load[best.GetId()]++
	}
	return &Change{Group: gid, Kind: AddLearner, Node: best.GetId()}
}

// better reports whether node a is a better home for a new replica than b
// (b already a candidate): an unused zone first, then fewer replicas, then
// the lower id.
func (v *view) better(a, b *metapb.Node, used map[string]bool) bool {
	au, bu := a.GetZone() != "" && !used[a.GetZone()], b.GetZone() != "" && !used[b.GetZone()]
	if au != bu {
		return au
	}
	if la, lb := v.load[a.GetId()], v.load[b.GetId()]; la != lb {
		return la < lb
	}
	return a.GetId() < b.GetId()
}

// zones returns the non-empty zones of the nodes holding replicas.
func (v *view) zones(replicas []*metapb.Replica) map[string]bool {
	out := map[string]bool{}
	for _, r := range replicas {
		if z := v.zoneOf(r.GetNode()); z != "" {
			out[z] = true
		}
	}
	return out
}

func (v *view) zoneOf(node uint64) string { return v.st.GetNodes()[node].GetZone() }

func (v *view) zoneUsed(node uint64, used map[string]bool) bool {
	z := v.zoneOf(node)
	return z == "" || used[z]
}

// zoneCount is the number of distinct known zones among nodes.
func (v *view) zoneCount(nodes []uint64) int {
	var zs []string
	for _, n := range nodes {
		if z := v.zoneOf(n); z != "" && !slices.Contains(zs, z) {
			zs = append(zs, z)
		}
	}
	return len(zs)
}
