package placement

import (
	"cmp"
	"slices"

	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

// Rebalance returns replica moves for data groups: at most one change per
// group, ordered by group id, and only once Plan has nothing left to do and
// every data group has its target number of voters (repair comes first).
// It is pure, like Plan.
//
// Plan only ever adds replicas, so the founder of a cluster bootstrapped on
// one node keeps a replica of every group forever, and a node that joins
// late gets replicas only of groups short of voters. Rebalance moves
// replicas so that every group spans as many zones as it can and the data
// replicas per node even out. A move is two steps, each a Change:
//
//  1. AddLearner on the incoming node;
//  2. once the learner is caught up, Replace: the learner becomes a voter
//     and the outgoing voter leaves, atomically (joint consensus in Raft,
//     one Batch in the metadata group).
//
// A group whose voters span fewer zones than they could (fewer than
// min(target, zones among ACTIVE nodes)) moves a voter from a repeated or
// unknown zone to a node in a zone it lacks, whatever the load. Otherwise
// a group moves a voter from node a to node b only when a holds at least
// two more data replicas than b and the move keeps the group's zone count.
// Every move therefore either spreads a group over one more zone or lowers
// the sum of squared loads, with zone spread never shrinking, so repeated
// plans end; when they end, every group spans min(RF, zones) zones and
// nodes of one zone differ by at most one replica (and so do all nodes,
// when zones do not force otherwise: no zones, or every node its own).
//
// Loads count the learners of moves in flight on their new node and the
// voters those moves will remove as already gone, so that moves planned
// together do not overshoot. The voter a learner replaces is chosen when
// it is promoted: among the voters whose departure keeps the group's zone
// count, the one on the most loaded node (lowest node id on ties) — the one
// step 1 chose, unless loads changed meanwhile. A learner that cannot
// replace any voter without narrowing the group's zones (one the
// rebalancer did not place) is left alone.
func Rebalance(st *metapb.State, caughtUp func(group, replica uint64) bool) []Change {
	if !meta.Bootstrapped(st) || len(Plan(st, caughtUp)) > 0 {
		return nil
	}
	v := newView(st, caughtUp)
	target := v.target()
	var data []uint64
	for _, gid := range meta.GroupIDs(st) {
		if gid == 0 {
			continue
		}
		if len(meta.Voters(st, gid)) < target {
			return nil
		}
		data = append(data, gid)
	}
	var out []Change
	busy := map[uint64]bool{}
	// Moves in flight: discount their outgoing voters, promote the
	// learners that caught up.
	for _, gid := range data {
		voters, learners := meta.Voters(st, gid), meta.Learners(st, gid)
		if len(learners) == 0 {
			continue
		}
		busy[gid] = true
		if len(voters) != target {
			continue
		}
		for _, l := range learners {
			o := v.outgoing(voters, l.GetNode())
			if o == nil {
				continue
			}
			v.load[o.GetNode()]--
			if v.caughtUp(gid, l.GetId()) {
				out = append(out, Change{Group: gid, Kind: Replace, Node: l.GetNode(), Replica: l.GetId(), Replaces: o.GetId(), ReplacesNode: o.GetNode()})
			}
			break
		}
	}
	zonesMax := min(target, v.zoneCount(nodeIDs(v.active)))
	for _, gid := range data {
		voters := meta.Voters(st, gid)
		if busy[gid] || len(voters) != target {
			continue
		}
		o, in := v.move(gid, voters, zonesMax)
		if o == nil {
			continue
		}
		v.load[in]++
		v.load[o.GetNode()]--
		out = append(out, Change{Group: gid, Kind: AddLearner, Node: in})
	}
	slices.SortFunc(out, func(a, b Change) int { return cmp.Compare(a.Group, b.Group) })
	return out
}

// move picks the voter o of group gid to move and the ACTIVE node in to
// move it to, or nil: a zone-spreading move if the group spans fewer than
// zonesMax zones, else a balancing move (see Rebalance). Among the allowed
// moves it takes, in order: the most zones after the move (spreading
// moves only), the largest load gap, the lowest incoming node id, the
// lowest outgoing node id; for a given incoming node that is the voter
// outgoing would pick, so step 2 replaces the voter step 1 meant.
func (v *view) move(gid uint64, voters []*metapb.Replica, zonesMax int) (o *metapb.Replica, in uint64) {
	g := v.st.GetGroups()[gid]
	have := nodesOf(voters)
	zones := v.zoneCount(have)
	spread := zones < zonesMax
	bestAfter, bestGain := 0, 0
	for _, n := range v.active { // ascending ids
		c := n.GetId()
		if meta.ReplicaOnNode(g, c) != nil {
			continue
		}
		for _, r := range voters {
			after := v.zoneCount(swap(have, r.GetNode(), c))
			gain := v.load[r.GetNode()] - v.load[c]
			if spread && after <= zones || !spread && (after < zones || gain < 2) {
				continue
			}
			if !spread {
				after = zones // every balancing move keeps the count
			}
			better := o == nil || after > bestAfter ||
				after == bestAfter && (gain > bestGain ||
					gain == bestGain && (c < in || c == in && r.GetNode() < o.GetNode()))
			if better {
				o, in, bestAfter, bestGain = r, c, after, gain
			}
		}
	}
	return o, in
}

// outgoing is the voter a learner on node l replaces: among the voters
// whose departure keeps the group's zone count, the one leaving the most
// zones, then on the most loaded node, then with the lowest node id; nil if
// there is none.
func (v *view) outgoing(voters []*metapb.Replica, l uint64) *metapb.Replica {
	have := nodesOf(voters)
	zones := v.zoneCount(have)
	var best *metapb.Replica
	bestAfter := 0
	for _, r := range voters {
		after := v.zoneCount(swap(have, r.GetNode(), l))
		if after < zones {
			continue
		}
		lr, lb := v.load[r.GetNode()], 0
		if best != nil {
			lb = v.load[best.GetNode()]
		}
		if best == nil || after > bestAfter || after == bestAfter && (lr > lb || lr == lb && r.GetNode() < best.GetNode()) {
			best, bestAfter = r, after
		}
	}
	return best
}

func nodesOf(rs []*metapb.Replica) []uint64 {
	out := make([]uint64, len(rs))
	for i, r := range rs {
		out[i] = r.GetNode()
	}
	return out
}

func nodeIDs(ns []*metapb.Node) []uint64 {
	out := make([]uint64, len(ns))
	for i, n := range ns {
		out[i] = n.GetId()
	}
	return out
}

// swap returns nodes with out replaced by in.
func swap(nodes []uint64, out, in uint64) []uint64 {
	s := slices.Clone(nodes)
	for i, n := range s {
		if n == out {
			s[i] = in
		}
	}
	return s
}
