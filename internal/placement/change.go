package placement

import (
	"fmt"

	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

// ChangeKind is what a planned Change does to a group.
type ChangeKind int

const (
	// AddLearner adds a learner replica of the group on Change.Node.
	AddLearner ChangeKind = iota + 1
	// Promote makes learner Change.Replica (on Change.Node) a voter.
	Promote
	// Replace makes learner Change.Replica a voter and removes voter
	// Change.Replaces (on Change.ReplacesNode) in the same step: one joint
	// consensus configuration change in Raft, one Batch in the metadata
	// group, so the group never has more or fewer voters than before. Only
	// Rebalance plans it.
	Replace
)

func (k ChangeKind) String() string {
	switch k {
	case AddLearner:
		return "add-learner"
	case Promote:
		return "promote"
	case Replace:
		return "replace"
	}
	return fmt.Sprintf("ChangeKind(%d)", int(k))
}

// Change is one step of a plan, for one group.
type Change struct {
	Group uint64
	Kind  ChangeKind
	// Node is the node that gets the learner (AddLearner) or holds the
	// learner being promoted (Promote, Replace).
	Node uint64
	// Replica is the learner promoted (Promote, Replace); 0 for AddLearner
	// (the metadata group allocates the id).
	Replica uint64
	// Replaces and ReplacesNode name the voter that leaves (Replace only).
	Replaces, ReplacesNode uint64
}

// Entry is the metadata entry that records the change once Raft made it:
// AddReplica, PromoteReplica, or for Replace a Batch of PromoteReplica and
// RemoveReplica (applied together or not at all).
func (c Change) Entry() *metapb.Entry {
	switch c.Kind {
	case AddLearner:
		return meta.NewAddReplica(c.Group, c.Node, metapb.Role_ROLE_LEARNER)
	case Promote:
		return meta.NewPromoteReplica(c.Group, c.Replica)
	case Replace:
		return meta.NewBatch(meta.NewPromoteReplica(c.Group, c.Replica), meta.NewRemoveReplica(c.Group, c.Replaces))
	}
	return nil
}
