package meta

import (
	"slices"

	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

// addReplica records a new learner of a group on an ACTIVE node and returns
// its replica id in the result. Replica ids come from the group's counter
// and are never reused, so a message for an earlier replica on the same
// node can never reach this one. The Raft configuration change that makes
// the learner real follows the record; the record comes first so that every
// node knows where the replica lives before it exists. A group held by a
// migration takes only that migration's additions (checkFence).
func (a *applier) addReplica(x *metapb.AddReplica) error {
	gid, node := x.GetGroup(), x.GetNode()
	g := a.st.Groups[gid]
	if g == nil {
		return errorf(metapb.Code_CODE_UNKNOWN_GROUP, "add replica: no group %d", gid)
	}
	n := a.st.Nodes[node]
	switch {
	case n == nil:
		return errorf(metapb.Code_CODE_UNKNOWN_NODE, "add replica to group %d: no node %d", gid, node)
	case n.GetState() != metapb.NodeState_NODE_STATE_ACTIVE:
		return errorf(metapb.Code_CODE_NODE_NOT_ACTIVE, "add replica to group %d: node %d is %s", gid, node, NodeStateName(n.GetState()))
	}
	if r := ReplicaOnNode(g, node); r != nil {
		return errorf(metapb.Code_CODE_REPLICA_EXISTS, "add replica to group %d: node %d already holds replica %d", gid, node, r.GetId())
	}
	id := max(g.GetNextReplicaId(), 1)
	for ReplicaByID(g, id) != nil && id != ^uint64(0) {
		id++ // only for a state whose counter fell behind; Apply keeps it ahead
	}
	if id == ^uint64(0) {
		return errorf(metapb.Code_CODE_INVALID_STATE, "add replica to group %d: replica ids exhausted", gid)
	}
	if err := a.checkFence("add replica", gid, x.GetMigrationId()); err != nil {
		return err
	}
	g.NextReplicaId = id + 1
	g.Replicas = append(g.Replicas, &metapb.Replica{Id: id, Node: node, Role: metapb.Role_ROLE_LEARNER})
	a.res.ReplicaId = id
	a.emit(ReplicaAdded{Group: gid, Replica: id, Node: node, Role: metapb.Role_ROLE_LEARNER})
	return nil
}

// promoteReplica makes a learner a voter. Promoting a voter is a no-op.
// A group held by a migration takes only that migration's promotions.
func (a *applier) promoteReplica(x *metapb.PromoteReplica) error {
	gid, rid := x.GetGroup(), x.GetReplica()
	g := a.st.Groups[gid]
	if g == nil {
		return errorf(metapb.Code_CODE_UNKNOWN_GROUP, "promote replica %d: no group %d", rid, gid)
	}
	r := ReplicaByID(g, rid)
	if r == nil {
		return errorf(metapb.Code_CODE_UNKNOWN_REPLICA, "promote replica: group %d has no replica %d", gid, rid)
	}
	if r.GetRole() == metapb.Role_ROLE_VOTER {
		return nil
	}
	if err := a.checkFence("promote replica", gid, x.GetMigrationId()); err != nil {
		return err
	}
	r.Role = metapb.Role_ROLE_VOTER
	a.emit(ReplicaPromoted{Group: gid, Replica: rid, Node: r.GetNode()})
	return nil
}

// removeReplica drops a replica from a group; removing an absent one is a
// no-op (the removal already happened). The last voter cannot be removed:
// the group would have no quorum, ever, and Raft refuses it too. A leader
// hint naming the replica's node is cleared. A group held by a migration
// takes only that migration's removals.
func (a *applier) removeReplica(x *metapb.RemoveReplica) error {
	gid, rid := x.GetGroup(), x.GetReplica()
	g := a.st.Groups[gid]
	if g == nil {
		return errorf(metapb.Code_CODE_UNKNOWN_GROUP, "remove replica %d: no group %d", rid, gid)
	}
	r := ReplicaByID(g, rid)
	if r == nil {
		return nil
	}
	if r.GetRole() == metapb.Role_ROLE_VOTER && len(Voters(a.st, gid)) == 1 {
		return errorf(metapb.Code_CODE_LAST_VOTER, "remove replica: replica %d is the last voter of group %d", rid, gid)
	}
	if err := a.checkFence("remove replica", gid, x.GetMigrationId()); err != nil {
		return err
	}
	g.Replicas = slices.DeleteFunc(g.Replicas, func(o *metapb.Replica) bool { return o == r })
	if g.GetLeaderHint() == r.GetNode() {
		g.LeaderHint = 0
		a.emit(LeaderHintChanged{Group: gid})
	}
	a.emit(ReplicaRemoved{Group: gid, Replica: rid, Node: r.GetNode()})
	return nil
}

// setLeaderHint records which node leads a group, for routing. Only a node
// holding a replica of the group can be named; 0 clears the hint.
func (a *applier) setLeaderHint(x *metapb.SetLeaderHint) error {
	gid, node := x.GetGroup(), x.GetNode()
	g := a.st.Groups[gid]
	if g == nil {
		return errorf(metapb.Code_CODE_UNKNOWN_GROUP, "set leader hint: no group %d", gid)
	}
	if node != 0 && ReplicaOnNode(g, node) == nil {
		return errorf(metapb.Code_CODE_UNKNOWN_REPLICA, "set leader hint: node %d holds no replica of group %d", node, gid)
	}
	if g.GetLeaderHint() == node {
		return nil
	}
	g.LeaderHint = node
	a.emit(LeaderHintChanged{Group: gid, Node: node})
	return nil
}

// checkFence enforces one migration per group at the single source of
// truth. It runs just before a membership entry changes group gid (entries
// that change nothing are no-ops and pass, so a retried record still
// succeeds after its migration ended):
//
//   - an entry that names migration mid must be that migration's, and mid's
//     row must be sound and hold gid: CHECKPOINT_CONFLICT otherwise (a
//     coordinator acting for a migration that ended, was quarantined or
//     never held the group);
//   - an entry that names none is refused with CONFLICT while a sound row
//     holds gid: placement and repair wait until the migration ends (or is
//     aborted: the abort's compensations carry the migration's id, so a
//     move whose target died still unwinds and releases the group).
func (a *applier) checkFence(what string, gid uint64, mid string) error {
	if mid != "" {
		c := a.st.Migrations[mid]
		if c == nil || c.GetFenceGroup() != gid || VerifyCheckpoint(mid, c) != nil {
			return errorf(metapb.Code_CODE_CHECKPOINT_CONFLICT, "%s in group %d for migration %q: that migration does not hold the group (its row is gone, quarantined or holds no group %d)", what, gid, mid, gid)
		}
		return nil
	}
	if owner, ok := GroupFence(a.st, gid); ok {
		return errorf(metapb.Code_CODE_CONFLICT, "%s in group %d: the group is held by migration %q until it ends", what, gid, owner)
	}
	return nil
}
