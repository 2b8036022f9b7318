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

// NewPutCheckpoint writes a migration row; build it with NewCheckpoint so
// its checksum is right.
func NewPutCheckpoint(c *metapb.Checkpoint) *metapb.Entry {
	return entry(&metapb.Entry{Kind: &metapb.Entry_PutCheckpoint{PutCheckpoint: &metapb.PutCheckpoint{Checkpoint: c}}})
}

// NewDeleteCheckpoint removes a migration row.
func NewDeleteCheckpoint(id string) *metapb.Entry {
	return entry(&metapb.Entry{Kind: &metapb.Entry_DeleteCheckpoint{DeleteCheckpoint: &metapb.DeleteCheckpoint{Id: id}}})
}

// NewBatch applies entries in order, all or nothing.
func NewBatch(entries ...*metapb.Entry) *metapb.Entry {
	return entry(&metapb.Entry{Kind: &metapb.Entry_Batch{Batch: &metapb.Batch{Entries: entries}}})
}
