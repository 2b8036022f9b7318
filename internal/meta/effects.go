package meta

import "github.com/nodedb/nodedb-cluster/internal/meta/metapb"

// Effect describes one change an applied entry made, for logs and for
// watchers that react to changes (a node learning it was given a replica, a
// client cache invalidating a route) without diffing whole states. Effects
// are listed in the order the changes were made; a no-op entry has none.
// They are derived data: the State is the truth.
type Effect interface{ effect() }

// ClusterCreated: Bootstrap created the cluster.
type ClusterCreated struct {
	ClusterID string
	Groups    uint32 // data groups
	VShards   uint32
}

// NodeAdded: a node was allocated an id (the founder, or a joiner).
type NodeAdded struct {
	Node  uint64
	State metapb.NodeState
}

// NodeStateChanged: a node moved between JOINING, ACTIVE, DRAINING and
// DECOMMISSIONED.
type NodeStateChanged struct {
	Node     uint64
	From, To metapb.NodeState
}

// NodeAddrsChanged: a node's advertised addresses changed.
type NodeAddrsChanged struct {
	Node              uint64
	PeerAddr, APIAddr string
}

// ReplicaAdded: a learner replica was added to a group.
type ReplicaAdded struct {
	Group, Replica, Node uint64
	Role                 metapb.Role
}

// ReplicaPromoted: a learner became a voter.
type ReplicaPromoted struct{ Group, Replica, Node uint64 }

// ReplicaRemoved: a replica left its group.
type ReplicaRemoved struct{ Group, Replica, Node uint64 }

// LeaderHintChanged: the node believed to lead a group changed (0: unknown).
type LeaderHintChanged struct{ Group, Node uint64 }

// RouteChanged: a vShard's owner or epoch changed.
type RouteChanged struct {
	VShard         uint32
	Group, Epoch   uint64
	FromGroup      uint64
	RoutingVersion uint64
}

// GhostChanged: a ghost stub was put or deleted.
type GhostChanged struct {
	VShard  uint32
	Deleted bool
}

// TokenChanged: a join token was created or changed state.
type TokenChanged struct {
	Token string
	State metapb.TokenState
}

// CheckpointChanged: a migration's row was written or deleted.
type CheckpointChanged struct {
	ID      string
	Phase   string
	Attempt uint32
	Deleted bool
}

func (ClusterCreated) effect()    {}
func (NodeAdded) effect()         {}
func (NodeStateChanged) effect()  {}
func (NodeAddrsChanged) effect()  {}
func (ReplicaAdded) effect()      {}
func (ReplicaPromoted) effect()   {}
func (ReplicaRemoved) effect()    {}
func (LeaderHintChanged) effect() {}
func (RouteChanged) effect()      {}
func (GhostChanged) effect()      {}
func (TokenChanged) effect()      {}
func (CheckpointChanged) effect() {}
