package migrate

import (
	"cmp"
	"maps"
	"slices"
	"time"
)

// The tests' cluster: group 7 has voters on nodes 1, 2, 3 (replica i on
// node i); the move's target is node 4, its learner replica 4.
const (
	tg      = uint64(7) // group
	tTo     = uint64(4) // target node
	tL      = uint64(4) // the learner's replica ID once allocated
	tCommit = uint64(10_000)
)

var tStart = time.Unix(1_700_000_000, 0)

// move is group 7's move from node from (replica from) to node 4.
func move(from, leaderAtStart, learner uint64) ReplicaMove {
	return ReplicaMove{
		Version: PayloadVersion, Group: tg, From: from, To: tTo, Outgoing: from,
		Learner: learner, LeaderAtStart: leaderAtStart, StartedUnixNanos: tStart.UnixNano(),
	}
}

// world is a group as Raft and the metadata record have it, mutable by the
// tests' executor model; view() is what the executor would observe.
type world struct {
	voters, outgoing, learners map[uint64]uint64 // Raft: replica → node
	recVoters, recLearners     map[uint64]uint64 // the record
	leader, hint               uint64            // nodes
	commit                     uint64
	match                      map[uint64]uint64 // by replica
	replicating                map[uint64]bool
	down                       map[uint64]bool // by node: not active
	pending                    bool
	next                       uint64 // next replica ID
}

func newWorld(leader uint64) *world {
	w := &world{
		voters: map[uint64]uint64{1: 1, 2: 2, 3: 3}, outgoing: map[uint64]uint64{}, learners: map[uint64]uint64{},
		recVoters: map[uint64]uint64{1: 1, 2: 2, 3: 3}, recLearners: map[uint64]uint64{},
		leader: leader, hint: leader, commit: tCommit,
		match: map[uint64]uint64{1: tCommit, 2: tCommit, 3: tCommit}, replicating: map[uint64]bool{1: true, 2: true, 3: true},
		down: map[uint64]bool{}, next: 4,
	}
	return w
}

func (w *world) clone() *world {
	c := *w
	c.voters, c.outgoing, c.learners = maps.Clone(w.voters), maps.Clone(w.outgoing), maps.Clone(w.learners)
	c.recVoters, c.recLearners = maps.Clone(w.recVoters), maps.Clone(w.recLearners)
	c.match, c.replicating, c.down = maps.Clone(w.match), maps.Clone(w.replicating), maps.Clone(w.down)
	return &c
}

func sortedMembers(m map[uint64]uint64) []Member {
	var out []Member
	for r, n := range m {
		out = append(out, Member{Replica: r, Node: n})
	}
	slices.SortFunc(out, func(a, b Member) int { return cmp.Compare(a.Replica, b.Replica) })
	return out
}

func (w *world) view() GroupView {
	v := GroupView{
		Group:  tg,
		Voters: sortedMembers(w.voters), Outgoing: sortedMembers(w.outgoing), Learners: sortedMembers(w.learners),
		LeaderNode: w.leader, Commit: w.commit, Progress: map[uint64]Progress{},
		ConfChangePending: w.pending,
		RecordedVoters:    sortedMembers(w.recVoters), RecordedLearners: sortedMembers(w.recLearners),
		LeaderHint: w.hint,
	}
	for _, l := range []map[uint64]uint64{w.voters, w.outgoing, w.learners} {
		for r, n := range l {
			v.Progress[r] = Progress{Match: w.match[r], Replicating: w.replicating[r] && !w.down[n], Active: !w.down[n]}
		}
	}
	return v
}

// nodeOf returns the node of replica r in Raft's configuration, 0 if none.
func (w *world) nodeOf(r uint64) uint64 {
	for _, l := range []map[uint64]uint64{w.voters, w.outgoing, w.learners} {
		if n, ok := l[r]; ok {
			return n
		}
	}
	return 0
}

// rstate is an abstract state of the group relative to a move from node
// from to node 4; worldAt builds it.
type rstate int

const (
	sNone          rstate = iota // no replica on the target
	sRecorded                    // the record has learner 4, Raft does not
	sLagging                     // Raft has learner 4, far behind
	sCaughtUp                    // learner 4 caught up; the leader unchanged
	sTransferred                 // caught up, leadership moved off from
	sExtraVoter                  // 4 a voter next to from (not joint): promoted outside the move
	sJoint                       // joint: incoming without from, with 4
	sFinal                       // Raft replaced from by 4; the record not yet
	sRecordedFinal               // Raft and record replaced from by 4
	nStates
)

var stateNames = [...]string{"none", "recorded", "lagging", "caught-up", "transferred", "extra-voter", "joint", "final", "recorded-final"}

func (s rstate) String() string { return stateNames[s] }

// pastNoReturn is the model's point of no return: the states in which Raft
// applied the replace.
func (s rstate) pastNoReturn() bool { return s == sJoint || s == sFinal || s == sRecordedFinal }

// other returns a voter node other than from (and than avoid).
func other(from, avoid uint64) uint64 {
	for _, n := range []uint64{1, 2, 3} {
		if n != from && n != avoid {
			return n
		}
	}
	return 0
}

// worldAt builds state s for a move off node from, leader being the group's
// leader at the start (0: none known; then node other(from) leads).
func worldAt(s rstate, from, leader uint64) *world {
	if leader == 0 {
		leader = other(from, 0)
	}
	w := newWorld(leader)
	w.hint = leader
	if s == sNone {
		return w
	}
	w.next = 5
	w.recLearners[tL] = tTo
	if s == sRecorded {
		return w
	}
	w.learners[tL] = tTo
	w.match[tL], w.replicating[tL] = tCommit-5000, true
	if s == sLagging {
		return w
	}
	w.match[tL] = tCommit - 10
	if s == sCaughtUp {
		return w
	}
	if w.leader == from {
		w.leader, w.hint = other(from, 0), other(from, 0)
	}
	switch s {
	case sTransferred:
	case sExtraVoter:
		delete(w.learners, tL)
		w.voters[tL] = tTo
	case sJoint, sFinal, sRecordedFinal:
		old := maps.Clone(w.voters)
		delete(w.learners, tL)
		delete(w.voters, from)
		w.voters[tL] = tTo
		if s == sJoint {
			w.outgoing = old
		}
		if s == sRecordedFinal {
			delete(w.recLearners, tL)
			delete(w.recVoters, from)
			w.recVoters[tL] = tTo
		}
	}
	return w
}

// Joint reports whether Raft is in a joint configuration.
func (w *world) Joint() bool { return len(w.outgoing) > 0 }
