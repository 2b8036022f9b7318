package meta

import "github.com/nodedb/nodedb-cluster/internal/meta/metapb"

// Constructors for entries, so callers never build oneofs by hand. They do
// not validate: EncodeEntry and Apply do.

func entry(e *metapb.Entry) *metapb.Entry {
	e.Version = EntryVersion
	return e
}

// NewBootstrap creates the cluster with first as node 1 and groups data
// groups. settings.initial_groups may be left 0.
func NewBootstrap(settings *metapb.ClusterSettings, first *metapb.Node, groups uint32) *metapb.Entry {
	return entry(&metapb.Entry{Kind: &metapb.Entry_Bootstrap{Bootstrap: &metapb.Bootstrap{Settings: settings, FirstNode: first, Groups: groups}}})
}

// NewCreateToken registers a join token by the hash of its secret
// (HashSecret).
func NewCreateToken(id string, secretHash []byte, expiresUnixNanos int64) *metapb.Entry {
	return entry(&metapb.Entry{Kind: &metapb.Entry_CreateToken{CreateToken: &metapb.CreateToken{Id: id, SecretHash: secretHash, ExpiresUnixNanos: expiresUnixNanos}}})
}

// NewRevokeToken revokes a join token.
func NewRevokeToken(id string) *metapb.Entry {
	return entry(&metapb.Entry{Kind: &metapb.Entry_RevokeToken{RevokeToken: &metapb.RevokeToken{Id: id}}})
}

// NewBeginJoin admits a joiner presenting a token (HashSecret of the secret
// it sent, HashKey of its public key).
func NewBeginJoin(tokenID string, secretHash, keyHash []byte, peerAddr, apiAddr, zone string) *metapb.Entry {
	return entry(&metapb.Entry{Kind: &metapb.Entry_BeginJoin{BeginJoin: &metapb.BeginJoin{
		TokenId: tokenID, SecretHash: secretHash, KeyHash: keyHash, PeerAddr: peerAddr, ApiAddr: apiAddr, Zone: zone,
	}}})
}

// NewActivateNode marks a joined node ACTIVE.
func NewActivateNode(node uint64) *metapb.Entry {
	return entry(&metapb.Entry{Kind: &metapb.Entry_ActivateNode{ActivateNode: &metapb.ActivateNode{NodeId: node}}})
}

// NewSetNodeState moves a node through its lifecycle.
func NewSetNodeState(node uint64, state metapb.NodeState) *metapb.Entry {
	return entry(&metapb.Entry{Kind: &metapb.Entry_SetNodeState{SetNodeState: &metapb.SetNodeState{NodeId: node, State: state}}})
}

// NewSetNodeAddrs records a node's new addresses.
func NewSetNodeAddrs(node uint64, peerAddr, apiAddr string) *metapb.Entry {
	return entry(&metapb.Entry{Kind: &metapb.Entry_SetNodeAddrs{SetNodeAddrs: &metapb.SetNodeAddrs{NodeId: node, PeerAddr: peerAddr, ApiAddr: apiAddr}}})
}

// NewAddReplica adds a replica of group on node. role must be ROLE_LEARNER
// (or ROLE_UNSPECIFIED, which means the same).
func NewAddReplica(group, node uint64, role metapb.Role) *metapb.Entry {
	return entry(&metapb.Entry{Kind: &metapb.Entry_AddReplica{AddReplica: &metapb.AddReplica{Group: group, Node: node, Role: role}}})
}

// NewPromoteReplica makes a learner a voter.
func NewPromoteReplica(group, replica uint64) *metapb.Entry {
	return entry(&metapb.Entry{Kind: &metapb.Entry_PromoteReplica{PromoteReplica: &metapb.PromoteReplica{Group: group, Replica: replica}}})
}

// NewRemoveReplica removes a replica from a group.
func NewRemoveReplica(group, replica uint64) *metapb.Entry {
	return entry(&metapb.Entry{Kind: &metapb.Entry_RemoveReplica{RemoveReplica: &metapb.RemoveReplica{Group: group, Replica: replica}}})
}

// NewSetLeaderHint records the node leading a group (0: unknown).
func NewSetLeaderHint(group, node uint64) *metapb.Entry {
	return entry(&metapb.Entry{Kind: &metapb.Entry_SetLeaderHint{SetLeaderHint: &metapb.SetLeaderHint{Group: group, Node: node}}})
}

// NewSetRoute routes a vShard to a group at epoch (the current epoch + 1).
func NewSetRoute(vshard uint32, group, epoch uint64) *metapb.Entry {
	return entry(&metapb.Entry{Kind: &metapb.Entry_SetRoute{SetRoute: &metapb.SetRoute{Vshard: vshard, Group: group, Epoch: epoch}}})
}

// NewPutGhost records a ghost stub for a vShard that moved.
func NewPutGhost(vshard uint32, newGroup, newEpoch uint64, expiresUnixNanos int64) *metapb.Entry {
	return entry(&metapb.Entry{Kind: &metapb.Entry_PutGhost{PutGhost: &metapb.PutGhost{
		Vshard: vshard, Ghost: &metapb.Ghost{NewGroup: newGroup, NewEpoch: newEpoch, ExpiresUnixNanos: expiresUnixNanos},
	}}})
}

// NewDeleteGhost removes a vShard's ghost stub.
func NewDeleteGhost(vshard uint32) *metapb.Entry {
	return entry(&metapb.Entry{Kind: &metapb.Entry_DeleteGhost{DeleteGhost: &metapb.DeleteGhost{Vshard: vshard}}})
}

// NewPutCheckpoint writes a migration row unconditionally; build it with
// NewCheckpoint (or NewFencingCheckpoint) so its checksum is right.
func NewPutCheckpoint(c *metapb.Checkpoint) *metapb.Entry {
	return NewPutCheckpointIf(c, nil)
}

// NewPutCheckpointIf writes a migration row if the stored row is as want
// says (ExpectAbsent, ExpectRow; nil: unconditionally).
func NewPutCheckpointIf(c *metapb.Checkpoint, want *metapb.CheckpointExpectation) *metapb.Entry {
	return entry(&metapb.Entry{Kind: &metapb.Entry_PutCheckpoint{PutCheckpoint: &metapb.PutCheckpoint{Checkpoint: c, Expect: want}}})
}

// NewDeleteCheckpoint removes a migration row unconditionally (an
// operator clearing a quarantined row).
func NewDeleteCheckpoint(id string) *metapb.Entry {
	return NewDeleteCheckpointIf(id, nil)
}

// NewDeleteCheckpointIf removes a migration row if the stored row is as
// want says (ExpectRow; an empty phase matches any; nil: unconditionally).
func NewDeleteCheckpointIf(id string, want *metapb.CheckpointExpectation) *metapb.Entry {
	return entry(&metapb.Entry{Kind: &metapb.Entry_DeleteCheckpoint{DeleteCheckpoint: &metapb.DeleteCheckpoint{Id: id, Expect: want}}})
}

// ExpectAbsent is the expectation of a row's first write: no row is stored
// under its id.
func ExpectAbsent() *metapb.CheckpointExpectation {
	return &metapb.CheckpointExpectation{Absent: true}
}

// ExpectRow is the expectation that the stored row is at phase and attempt
// (what the writer read before deciding).
func ExpectRow(phase string, attempt uint32) *metapb.CheckpointExpectation {
	return &metapb.CheckpointExpectation{Phase: phase, Attempt: attempt}
}

// WithMigration marks a membership entry (AddReplica, PromoteReplica,
// RemoveReplica, and those kinds among a Batch's members) as part of
// migration id, which lets it through that migration's fence on the group
// (Checkpoint.fence_group). Other kinds are left as they are. It modifies
// e and returns it.
func WithMigration(id string, e *metapb.Entry) *metapb.Entry {
	switch k := e.GetKind().(type) {
	case *metapb.Entry_AddReplica:
		if k.AddReplica != nil {
			k.AddReplica.MigrationId = id
		}
	case *metapb.Entry_PromoteReplica:
		if k.PromoteReplica != nil {
			k.PromoteReplica.MigrationId = id
		}
	case *metapb.Entry_RemoveReplica:
		if k.RemoveReplica != nil {
			k.RemoveReplica.MigrationId = id
		}
	case *metapb.Entry_Batch:
		for _, c := range k.Batch.GetEntries() {
			WithMigration(id, c)
		}
	}
	return e
}

// NewBatch applies entries in order, all or nothing.
func NewBatch(entries ...*metapb.Entry) *metapb.Entry {
	return entry(&metapb.Entry{Kind: &metapb.Entry_Batch{Batch: &metapb.Batch{Entries: entries}}})
}
