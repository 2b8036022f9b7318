package migrate

import (
	"fmt"

	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

// CompensationKind is what a compensation undoes.
type CompensationKind uint8

const (
	// RestoreLeaderHint makes Node (replica Replica) lead the group again,
	// by a Raft leadership transfer, then records it: SetLeaderHint(Group,
	// Node). It undoes transfer_leader (and any leadership change during
	// the move), and comes first so that the removal after it is proposed
	// by, and never removes, the leader.
	RestoreLeaderHint CompensationKind = iota + 1
	// RemoveVoter removes the move's replica (Replica on Node, the target)
	// after Raft made it a voter without removing the outgoing one (a
	// promotion outside the move: the group has one voter too many): a Raft
	// configuration change removing it, then RemoveReplica(Group, Replica).
	RemoveVoter
	// RemoveLearner removes the move's learner (Replica on Node, the
	// target): a Raft configuration change removing it if Raft has it, then
	// RemoveReplica(Group, Replica) in the metadata. Replica 0 means "any
	// replica of the group on Node" (the ID was never learned).
	RemoveLearner
)

func (k CompensationKind) String() string {
	switch k {
	case RestoreLeaderHint:
		return "restore-leader-hint"
	case RemoveVoter:
		return "remove-voter"
	case RemoveLearner:
		return "remove-learner"
	}
	return fmt.Sprintf("CompensationKind(%d)", int(k))
}

// Compensation is one step of an abort, executed as a real Raft change
// (configuration change or leadership transfer) and then a metadata entry
// (Entry). CompensationDone checks it against the observed group.
type Compensation struct {
	Kind                 CompensationKind
	Group, Replica, Node uint64
}

func (c Compensation) String() string {
	return fmt.Sprintf("%s(group %d, replica %d, node %d)", c.Kind, c.Group, c.Replica, c.Node)
}

// Entry is the metadata entry that records the compensation of move id once
// its Raft part took effect; nil for a RemoveLearner whose replica was never
// known. A removal carries the move's ID: the aborting row still holds the
// group, and the metadata group takes membership changes of a held group
// only from the migration that holds it. That is what lets a move whose
// target died unwind while placement is kept out, and then release the
// group (the row's deletion) for repair.
func (c Compensation) Entry(id string) *metapb.Entry {
	switch c.Kind {
	case RestoreLeaderHint:
		return meta.NewSetLeaderHint(c.Group, c.Node)
	case RemoveVoter, RemoveLearner:
		if c.Replica == 0 {
			return nil
		}
		return meta.WithMigration(id, meta.NewRemoveReplica(c.Group, c.Replica))
	}
	return nil
}

// Compensations returns the ordered steps that undo move m as observed in v
// (only meaningful before the point of no return):
//
//  1. RestoreLeaderHint to the leader at start, when known;
//  2. RemoveVoter of the move's replica if Raft or the record has it as a
//     voter, else RemoveLearner of it (always listed, even when nothing is
//     there: it is then already done, and it catches a learner whose
//     addition lands late).
//
// Leadership first, because the removal is proposed through the leader and
// a removed leader leaves the group leaderless until an election; the
// original leader is a voter that stays in every state before the point of
// no return. Applied in order they leave the group with its original
// voters, no replica on the target and its original leader and hint.
func Compensations(m ReplicaMove, v GroupView) []Compensation {
	var out []Compensation
	if n := m.LeaderAtStart; n != 0 {
		r, _ := onNode(v.Voters, n)
		out = append(out, Compensation{Kind: RestoreLeaderHint, Group: m.Group, Replica: r.Replica, Node: n})
	}
	l := learnerOf(m, v)
	if !v.inRaft(l) && !v.recorded(l) {
		// The recorded learner is gone; a replica on the target is still
		// the move's (To held none when it started).
		if r := v.replicaOn(m.To); r != 0 {
			l = r
		}
	}
	kind := RemoveLearner
	if has(v.Voters, l) || has(v.Outgoing, l) || has(v.RecordedVoters, l) {
		kind = RemoveVoter
	}
	return append(out, Compensation{Kind: kind, Group: m.Group, Replica: l, Node: m.To})
}

// CompensationDone reports whether c has taken effect in v:
//
//   - RestoreLeaderHint: Node leads and the hint names it; or Node cannot
//     lead (it holds no incoming voter, or the leader has not heard from it
//     lately), in which case there is nothing to restore and the control
//     loop records whichever leader the group has;
//   - RemoveVoter, RemoveLearner: neither Raft nor the record has the
//     replica, nor any replica on Node.
func CompensationDone(c Compensation, v GroupView) bool {
	switch c.Kind {
	case RestoreLeaderHint:
		if !canLead(c.Node, v) {
			return true
		}
		return v.LeaderNode == c.Node && v.LeaderHint == c.Node
	case RemoveVoter, RemoveLearner:
		if v.inRaft(c.Replica) || v.recorded(c.Replica) {
			return false
		}
		return v.replicaOn(c.Node) == 0
	}
	return false
}

// canLead reports whether node holds an incoming voter the leader heard
// from lately (or is the leader).
func canLead(node uint64, v GroupView) bool {
	r, ok := onNode(v.Voters, node)
	if !ok {
		return false
	}
	return v.LeaderNode == node || v.Progress[r.Replica].Active
}
