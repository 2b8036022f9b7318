package meta

import (
	"cmp"
	"crypto/sha256"
	"maps"
	"slices"

	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

// Read helpers. They accept any state, nil included, and never modify it.
// Everything they return in a list is sorted, so callers that act on the
// lists stay deterministic.

// Bootstrapped reports whether st belongs to a cluster.
func Bootstrapped(st *metapb.State) bool {
	return st.GetFormatVersion() != 0 && st.GetSettings().GetClusterId() != ""
}

// RouteOf returns the group owning vShard vs and its epoch; group 0 (never
// a data group) when vs is out of range or st is not bootstrapped.
func RouteOf(st *metapb.State, vs uint32) (group, epoch uint64) {
	if int(vs) >= len(st.GetRouting()) {
		return 0, 0
	}
	r := st.GetRouting()[vs]
	return r.GetGroup(), r.GetEpoch()
}

// VShardsOf returns the vShards routed to group g, ascending.
func VShardsOf(st *metapb.State, g uint64) []uint32 {
	var out []uint32
	for vs, r := range st.GetRouting() {
		if r.GetGroup() == g {
			out = append(out, uint32(vs))
		}
	}
	return out
}

// GroupIDs returns every group id, ascending (0, the metadata group, first).
func GroupIDs(st *metapb.State) []uint64 {
	return slices.Sorted(maps.Keys(st.GetGroups()))
}

// NodeIDs returns every node id, ascending, decommissioned ones included.
func NodeIDs(st *metapb.State) []uint64 {
	return slices.Sorted(maps.Keys(st.GetNodes()))
}

// ActiveNodes returns the ACTIVE nodes by ascending id: the ones placement
// may give replicas to.
func ActiveNodes(st *metapb.State) []*metapb.Node {
	var out []*metapb.Node
	for _, id := range NodeIDs(st) {
		if n := st.GetNodes()[id]; n.GetState() == metapb.NodeState_NODE_STATE_ACTIVE {
			out = append(out, n)
		}
	}
	return out
}

// GroupsOfNode returns the groups that have a replica on node, ascending.
func GroupsOfNode(st *metapb.State, node uint64) []uint64 {
	var out []uint64
	for _, g := range GroupIDs(st) {
		if ReplicaOnNode(st.GetGroups()[g], node) != nil {
			out = append(out, g)
		}
	}
	return out
}

// Voters returns group g's voters by ascending replica id.
func Voters(st *metapb.State, g uint64) []*metapb.Replica {
	return replicasWithRole(st.GetGroups()[g], metapb.Role_ROLE_VOTER)
}

// Learners returns group g's learners by ascending replica id.
func Learners(st *metapb.State, g uint64) []*metapb.Replica {
	return replicasWithRole(st.GetGroups()[g], metapb.Role_ROLE_LEARNER)
}

func replicasWithRole(g *metapb.Group, role metapb.Role) []*metapb.Replica {
	var out []*metapb.Replica
	for _, r := range g.GetReplicas() {
		if r.GetRole() == role {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b *metapb.Replica) int { return cmp.Compare(a.GetId(), b.GetId()) })
	return out
}

// ReplicaOnNode returns g's replica on node, or nil.
func ReplicaOnNode(g *metapb.Group, node uint64) *metapb.Replica {
	for _, r := range g.GetReplicas() {
		if r != nil && r.GetNode() == node {
			return r
		}
	}
	return nil
}

// ReplicaByID returns g's replica with id, or nil.
func ReplicaByID(g *metapb.Group, id uint64) *metapb.Replica {
	for _, r := range g.GetReplicas() {
		if r != nil && r.GetId() == id {
			return r
		}
	}
	return nil
}

// MetaVotersMax is the metadata group's voter bound (DefaultMetaVotersMax
// when the settings leave it 0).
func MetaVotersMax(st *metapb.State) uint32 {
	if m := st.GetSettings().GetMetaVotersMax(); m != 0 {
		return m
	}
	return DefaultMetaVotersMax
}

// PeerAddrs maps every node that is not decommissioned to its peer address.
func PeerAddrs(st *metapb.State) map[uint64]string {
	out := map[uint64]string{}
	for id, n := range st.GetNodes() {
		if n.GetState() != metapb.NodeState_NODE_STATE_DECOMMISSIONED && n.GetPeerAddr() != "" {
			out[id] = n.GetPeerAddr()
		}
	}
	return out
}

// TokenExpired reports whether t is a REGISTERED token past its expiry at
// now. Expiry is derived, never stored: only REGISTERED tokens expire, and
// a joiner bound to a token keeps its node id after the expiry.
func TokenExpired(t *metapb.Token, now int64) bool {
	return t.GetState() == metapb.TokenState_TOKEN_STATE_REGISTERED && now > t.GetExpiresUnixNanos()
}

// HashSecret is the secret_hash a token is registered and presented with.
func HashSecret(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// HashKey is the key_hash a joiner is bound by: SHA-256 of its public key
// (the DER SubjectPublicKeyInfo of its certificate request).
func HashKey(publicKeyDER []byte) []byte {
	h := sha256.Sum256(publicKeyDER)
	return h[:]
}

// VerifyCheckpoint reports whether the migration row stored under key is
// sound: its id is key, its fields are valid and its checksum matches. A
// row that is not is quarantined: it stays in the state (one corrupt row
// does not make the state unloadable), `migrations` reports it, nothing
// acts on it, it holds no group, and only an unconditional
// DeleteCheckpoint removes it. The error is an *Error coded BAD_CHECKSUM
// (checksum mismatch), INVALID_STATE (key and id disagree, no row) or
// INVALID_ARGUMENT (a field out of range under a matching checksum).
func VerifyCheckpoint(key string, c *metapb.Checkpoint) error {
	switch {
	case c == nil:
		return errorf(metapb.Code_CODE_INVALID_STATE, "migration %q: no row", clip(key, MaxStringBytes))
	case c.GetId() != key:
		return errorf(metapb.Code_CODE_INVALID_STATE, "migration %q: stored under another key (%q)", clip(c.GetId(), MaxStringBytes), clip(key, MaxStringBytes))
	}
	return validateCheckpoint("migration", c)
}

// QuarantinedCheckpoints returns the ids (map keys) of st's migration rows
// that VerifyCheckpoint refuses, ascending.
func QuarantinedCheckpoints(st *metapb.State) []string {
	var out []string
	for _, id := range slices.Sorted(maps.Keys(st.GetMigrations())) {
		if VerifyCheckpoint(id, st.GetMigrations()[id]) != nil {
			out = append(out, id)
		}
	}
	return out
}

// GroupFence returns the id of the sound migration row that holds group g
// (Checkpoint.fence_group == g), if any. While one does, AddReplica,
// PromoteReplica and RemoveReplica entries for g that change something
// must carry that id: placement and repair leave the group alone until the
// row releases it or is deleted. Quarantined rows hold nothing; group 0 is
// never held.
func GroupFence(st *metapb.State, g uint64) (string, bool) {
	if g == 0 {
		return "", false
	}
	for _, id := range slices.Sorted(maps.Keys(st.GetMigrations())) {
		c := st.GetMigrations()[id]
		if c.GetFenceGroup() == g && VerifyCheckpoint(id, c) == nil {
			return id, true
		}
	}
	return "", false
}
