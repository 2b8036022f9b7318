package migrate

import (
	"cmp"
	"slices"

	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

// Member is one replica of a group: its Raft peer ID and its node.
type Member struct {
	Replica, Node uint64
}

// Progress is the leader's view of one replica (Raft's Progress).
type Progress struct {
	// Match is the highest log index known to be on the replica.
	Match uint64
	// Replicating is Raft's "replicate" state: the leader streams entries
	// to the replica, so Match is current (not "probe" nor "snapshot").
	Replicating bool
	// Active is Raft's RecentActive: the leader heard from it lately.
	Active bool
}

// GroupView is what the executor observed of one group: Raft's applied
// configuration and progress on the group's leader, and the metadata
// state's record of the group. Everything the decisions know about Raft
// comes from here, measured, never assumed.
type GroupView struct {
	Group uint64

	// Voters are Raft's (incoming) voters, Outgoing the outgoing voters of
	// a joint configuration (empty unless joint), Learners the learners
	// (LearnersNext included).
	Voters, Outgoing, Learners []Member
	// LeaderNode is the node that leads the group, 0 if none is known. The
	// rest of the Raft part is only meaningful with a leader.
	LeaderNode uint64
	// Commit is the leader's commit index.
	Commit uint64
	// Progress is the leader's progress of each replica, by replica ID.
	Progress map[uint64]Progress
	// ConfChangePending is true while the leader's log holds a
	// configuration change not yet applied: decisions wait for it, so that
	// a change a crashed coordinator proposed cannot land after a decision
	// that assumed it would not.
	ConfChangePending bool

	// RecordedVoters and RecordedLearners are the metadata state's replicas
	// of the group by role; LeaderHint its leader hint (a node, 0 unknown).
	RecordedVoters, RecordedLearners []Member
	LeaderHint                       uint64
}

// Joint reports whether Raft is in a joint configuration.
func (v GroupView) Joint() bool { return len(v.Outgoing) > 0 }

// RecordedView returns a view of group g holding only the metadata state's
// record (RecordedVoters, RecordedLearners, LeaderHint); the executor adds
// what it observes from Raft.
func RecordedView(st *metapb.State, g uint64) GroupView {
	v := GroupView{Group: g, LeaderHint: st.GetGroups()[g].GetLeaderHint()}
	for _, r := range meta.Voters(st, g) {
		v.RecordedVoters = append(v.RecordedVoters, Member{Replica: r.GetId(), Node: r.GetNode()})
	}
	for _, r := range meta.Learners(st, g) {
		v.RecordedLearners = append(v.RecordedLearners, Member{Replica: r.GetId(), Node: r.GetNode()})
	}
	return v
}

func has(ms []Member, replica uint64) bool {
	return replica != 0 && slices.ContainsFunc(ms, func(m Member) bool { return m.Replica == replica })
}

func onNode(ms []Member, node uint64) (Member, bool) {
	i := slices.IndexFunc(ms, func(m Member) bool { return m.Node == node })
	if i < 0 {
		return Member{}, false
	}
	return ms[i], true
}

// inRaft reports whether replica is in Raft's configuration in any role.
func (v GroupView) inRaft(replica uint64) bool {
	return has(v.Voters, replica) || has(v.Outgoing, replica) || has(v.Learners, replica)
}

// recorded reports whether the metadata records replica.
func (v GroupView) recorded(replica uint64) bool {
	return has(v.RecordedVoters, replica) || has(v.RecordedLearners, replica)
}

// lists returns every list of members, Raft's then the record's.
func (v GroupView) lists() [][]Member {
	return [][]Member{v.Voters, v.Outgoing, v.Learners, v.RecordedVoters, v.RecordedLearners}
}

// replicaOn returns the replica on node in Raft's configuration or the
// record, 0 if none.
func (v GroupView) replicaOn(node uint64) uint64 {
	for _, l := range v.lists() {
		if m, ok := onNode(l, node); ok {
			return m.Replica
		}
	}
	return 0
}

// learnerOf returns the move's learner: the row's, or else the replica on
// the target node (the move's, since To held none when the move started).
func learnerOf(m ReplicaMove, v GroupView) uint64 {
	if m.Learner != 0 {
		return m.Learner
	}
	return v.replicaOn(m.To)
}

// passedNoReturn reports whether Raft has applied the change that replaces
// the outgoing voter by the learner: the learner is an incoming voter and
// the outgoing replica is not (in a joint configuration, or after it).
// From then on the move only goes forward.
func passedNoReturn(m ReplicaMove, v GroupView) bool {
	l := learnerOf(m, v)
	return l != 0 && has(v.Voters, l) && !has(v.Voters, m.Outgoing)
}

// PastNoReturn reports whether the observed group shows m past its point of
// no return; an operator's abort of such a move is refused.
func PastNoReturn(m ReplicaMove, v GroupView) bool { return passedNoReturn(m, v) }

// lag returns how far replica's match index is behind the commit index,
// and whether it is caught up: replicating, and at most maxLag behind.
func (v GroupView) lag(replica, maxLag uint64) (uint64, bool) {
	p, ok := v.Progress[replica]
	if !ok {
		return v.Commit, false
	}
	var lag uint64
	if v.Commit > p.Match {
		lag = v.Commit - p.Match
	}
	return lag, p.Replicating && lag <= maxLag
}

// transferTarget picks the voter that takes leadership from node from: an
// incoming voter on neither from nor avoid, active and replicating, with the
// highest match index (lowest replica ID on ties); ok false if none.
func (v GroupView) transferTarget(from, avoid uint64) (Member, bool) {
	var best Member
	var bestMatch uint64
	found := false
	voters := slices.Clone(v.Voters)
	slices.SortFunc(voters, func(a, b Member) int { return cmp.Compare(a.Replica, b.Replica) })
	for _, c := range voters {
		p, ok := v.Progress[c.Replica]
		if c.Node == from || c.Node == avoid || !ok || !p.Active || !p.Replicating {
			continue
		}
		if !found || p.Match > bestMatch {
			best, bestMatch, found = c, p.Match, true
		}
	}
	return best, found
}

// NodeStatus is what recovery needs to know of a node.
type NodeStatus struct {
	State metapb.NodeState
	// Gone: the failure detector declared the node gone (down past its
	// grace); the metadata state may still call it ACTIVE.
	Gone bool
}

// NodeStates maps node IDs to their status; a node missing from it is
// unknown.
type NodeStates map[uint64]NodeStatus

// NodeStatesOf returns every node of st with its state; gone (may be nil)
// says which ones the failure detector declared gone.
func NodeStatesOf(st *metapb.State, gone func(node uint64) bool) NodeStates {
	out := NodeStates{}
	for id, n := range st.GetNodes() {
		out[id] = NodeStatus{State: n.GetState(), Gone: gone != nil && gone(id)}
	}
	return out
}

// targetProblem says why node to cannot receive the move's replica, "" if
// it can: it must be known, ACTIVE and not gone.
func (ns NodeStates) targetProblem(to uint64) string {
	s, ok := ns[to]
	switch {
	case !ok:
		return "target node is unknown"
	case s.State != metapb.NodeState_NODE_STATE_ACTIVE:
		return "target node is " + meta.NodeStateName(s.State)
	case s.Gone:
		return "target node is gone"
	}
	return ""
}
