package migrate

import (
	"maps"
	"slices"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"google.golang.org/protobuf/proto"
)

// Rows returns st's migration rows by ascending ID. A row stored under a
// key other than its ID (corruption the checksum cannot see, since it does
// not cover the key) is returned as a copy whose ID is the key, so that its
// checksum fails and it is quarantined under the ID that deletes it.
func Rows(st *metapb.State) []*metapb.Checkpoint {
	ms := st.GetMigrations()
	out := make([]*metapb.Checkpoint, 0, len(ms))
	for _, id := range slices.Sorted(maps.Keys(ms)) {
		c := ms[id]
		if c != nil && c.GetId() != id {
			c = proto.Clone(c).(*metapb.Checkpoint)
			c.Id = id
		}
		out = append(out, c)
	}
	return out
}

// NewReplicaMove checks a request to move group's voter on node from to
// node to against the metadata state and returns the move's payload, to be
// written at add_learner by StartEntry(m) (which the metadata group refuses
// with CONFLICT should another migration have taken the group meanwhile).
// Refusals: a *ConflictError if the group has a move in flight or a
// learner being added; else an *Error coded INVALID_ARGUMENT (metadata
// group, from == to), UNKNOWN_GROUP, UNKNOWN_REPLICA (from holds no voter),
// UNKNOWN_NODE, NODE_NOT_ACTIVE (to), REPLICA_EXISTS (to holds a replica).
func NewReplicaMove(st *metapb.State, group, from, to uint64, now time.Time) (ReplicaMove, error) {
	g := st.GetGroups()[group]
	switch {
	case group == 0:
		return ReplicaMove{}, errorf(metapb.Code_CODE_INVALID_ARGUMENT, "group 0 is the metadata group: its replicas are placed, not moved")
	case g == nil:
		return ReplicaMove{}, errorf(metapb.Code_CODE_UNKNOWN_GROUP, "no group %d", group)
	case from == to:
		return ReplicaMove{}, errorf(metapb.Code_CODE_INVALID_ARGUMENT, "move group %d from node %d to itself", group, from)
	}
	if id, busy := Conflict(Rows(st), group); busy {
		return ReplicaMove{}, &ConflictError{Group: group, ID: id}
	}
	if id, held := meta.GroupFence(st, group); held { // a migration of another kind
		return ReplicaMove{}, &ConflictError{Group: group, ID: id}
	}
	if len(meta.Learners(st, group)) > 0 {
		return ReplicaMove{}, &ConflictError{Group: group}
	}
	o := meta.ReplicaOnNode(g, from)
	if o == nil || o.GetRole() != metapb.Role_ROLE_VOTER {
		return ReplicaMove{}, errorf(metapb.Code_CODE_UNKNOWN_REPLICA, "node %d holds no voter of group %d", from, group)
	}
	n := st.GetNodes()[to]
	switch {
	case n == nil:
		return ReplicaMove{}, errorf(metapb.Code_CODE_UNKNOWN_NODE, "no node %d", to)
	case n.GetState() != metapb.NodeState_NODE_STATE_ACTIVE:
		return ReplicaMove{}, errorf(metapb.Code_CODE_NODE_NOT_ACTIVE, "node %d is %s", to, meta.NodeStateName(n.GetState()))
	}
	if r := meta.ReplicaOnNode(g, to); r != nil {
		return ReplicaMove{}, errorf(metapb.Code_CODE_REPLICA_EXISTS, "node %d already holds replica %d of group %d", to, r.GetId(), group)
	}
	m := ReplicaMove{
		Version:          PayloadVersion,
		Group:            group,
		From:             from,
		To:               to,
		Outgoing:         o.GetId(),
		LeaderAtStart:    g.GetLeaderHint(),
		StartedUnixNanos: now.UnixNano(),
	}
	if m.LeaderAtStart == to { // a stale hint: to holds no replica
		m.LeaderAtStart = 0
	}
	if err := m.Validate(); err != nil {
		return ReplicaMove{}, err
	}
	return m, nil
}
