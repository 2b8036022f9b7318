package meta

import (
	"math/bits"

	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"google.golang.org/protobuf/proto"
)

// validateEntry checks what an entry says on its own, without a state:
// version, a kind present, required fields, enum ranges, lengths, hashes and
// checkpoint checksums. Apply checks it again, so entries built in memory
// get the same refusals as entries decoded from the log. Rules that depend
// on the state (does the node exist, is the epoch next) are Apply's.
func validateEntry(e *metapb.Entry, inBatch bool) error {
	if e == nil {
		return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "nil entry")
	}
	if e.GetVersion() != EntryVersion {
		return errorf(metapb.Code_CODE_UNSUPPORTED_VERSION, "entry version %d, this node applies version %d", e.GetVersion(), EntryVersion)
	}
	switch k := e.GetKind().(type) {
	case nil:
		return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "entry has no kind")
	case *metapb.Entry_Bootstrap:
		return validateBootstrap(k.Bootstrap)
	case *metapb.Entry_CreateToken:
		x := k.CreateToken
		return all(str("create token: id", x.GetId(), true), hash("create token: secret hash", x.GetSecretHash()))
	case *metapb.Entry_RevokeToken:
		return str("revoke token: id", k.RevokeToken.GetId(), true)
	case *metapb.Entry_BeginJoin:
		x := k.BeginJoin
		return all(
			str("begin join: token id", x.GetTokenId(), true),
			hash("begin join: secret hash", x.GetSecretHash()),
			hash("begin join: key hash", x.GetKeyHash()),
			str("begin join: peer address", x.GetPeerAddr(), true),
			str("begin join: API address", x.GetApiAddr(), false),
			str("begin join: zone", x.GetZone(), false))
	case *metapb.Entry_ActivateNode:
		return nonzero("activate node: node id", k.ActivateNode.GetNodeId())
	case *metapb.Entry_SetNodeState:
		x := k.SetNodeState
		return all(nonzero("set node state: node id", x.GetNodeId()), nodeState("set node state", x.GetState()))
	case *metapb.Entry_SetNodeAddrs:
		x := k.SetNodeAddrs
		return all(
			nonzero("set node addresses: node id", x.GetNodeId()),
			str("set node addresses: peer address", x.GetPeerAddr(), true),
			str("set node addresses: API address", x.GetApiAddr(), false))
	case *metapb.Entry_AddReplica:
		x := k.AddReplica
		if r := x.GetRole(); r != metapb.Role_ROLE_LEARNER && r != metapb.Role_ROLE_UNSPECIFIED {
			return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "add replica: role %v: replicas join as learners and become voters by promotion", r)
		}
		return all(nonzero("add replica: node", x.GetNode()), str("add replica: migration id", x.GetMigrationId(), false))
	case *metapb.Entry_PromoteReplica:
		x := k.PromoteReplica
		return all(nonzero("promote replica: replica id", x.GetReplica()), str("promote replica: migration id", x.GetMigrationId(), false))
	case *metapb.Entry_RemoveReplica:
		x := k.RemoveReplica
		return all(nonzero("remove replica: replica id", x.GetReplica()), str("remove replica: migration id", x.GetMigrationId(), false))
	case *metapb.Entry_SetLeaderHint:
		return nil
	case *metapb.Entry_SetRoute:
		x := k.SetRoute
		return all(nonzero("set route: group (vShards belong to data groups)", x.GetGroup()), nonzero("set route: epoch", x.GetEpoch()))
	case *metapb.Entry_PutGhost:
		g := k.PutGhost.GetGhost()
		if g == nil {
			return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "put ghost: no ghost")
		}
		return all(nonzero("put ghost: new group", g.GetNewGroup()), nonzero("put ghost: new epoch", g.GetNewEpoch()))
	case *metapb.Entry_DeleteGhost:
		return nil
	case *metapb.Entry_PutCheckpoint:
		x := k.PutCheckpoint
		return all(validateCheckpoint("put checkpoint", x.GetCheckpoint()), validateExpect("put checkpoint", x.GetExpect(), true))
	case *metapb.Entry_DeleteCheckpoint:
		x := k.DeleteCheckpoint
		return all(str("delete checkpoint: id", x.GetId(), true), validateExpect("delete checkpoint", x.GetExpect(), false))
	case *metapb.Entry_Batch:
		if inBatch {
			return errorf(metapb.Code_CODE_NESTED_BATCH, "a batch inside a batch")
		}
		for i, c := range k.Batch.GetEntries() {
			if err := validateEntry(c, true); err != nil {
				return wrap(err, "batch entry %d", i)
			}
		}
		return nil
	default:
		return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "unknown entry kind %T", k)
	}
}

func validateBootstrap(b *metapb.Bootstrap) error {
	if err := validateSettings(b.GetSettings()); err != nil {
		return wrap(err, "bootstrap")
	}
	n := b.GetFirstNode()
	if n == nil {
		return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "bootstrap: no first node")
	}
	if n.GetId() > 1 {
		return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "bootstrap: the first node is node 1, not %d", n.GetId())
	}
	v, groups := b.GetSettings().GetVshardCount(), b.GetGroups()
	if groups < 1 || groups > v {
		return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "bootstrap: %d groups for %d vShards: want 1 to %d", groups, v, v)
	}
	if ig := b.GetSettings().GetInitialGroups(); ig != 0 && ig != groups {
		return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "bootstrap: settings say %d initial groups, the entry %d", ig, groups)
	}
	return all(
		str("bootstrap: first node's peer address", n.GetPeerAddr(), true),
		str("bootstrap: first node's API address", n.GetApiAddr(), false),
		str("bootstrap: first node's zone", n.GetZone(), false))
}

// validateSettings checks the cluster's fixed shape.
func validateSettings(s *metapb.ClusterSettings) error {
	if s == nil {
		return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "no cluster settings")
	}
	if err := str("cluster id", s.GetClusterId(), true); err != nil {
		return err
	}
	if v := s.GetVshardCount(); v < MinVShards || v > MaxVShards || bits.OnesCount32(v) != 1 {
		return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "vShard count %d: want a power of two from %d to %d", v, MinVShards, MaxVShards)
	}
	if rf := s.GetReplicationFactor(); rf < 1 || rf > MaxReplicationFactor {
		return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "replication factor %d: want 1 to %d", rf, MaxReplicationFactor)
	}
	if m := s.GetMetaVotersMax(); m > MaxMetaVoters {
		return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "meta voters max %d: want at most %d", m, MaxMetaVoters)
	}
	return nil
}

func validateCheckpoint(what string, c *metapb.Checkpoint) error {
	if c == nil {
		return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "%s: no checkpoint", what)
	}
	if err := all(str(what+": id", c.GetId(), true), str(what+": phase", c.GetPhase(), true)); err != nil {
		return err
	}
	if k := c.GetKind(); k == metapb.MigrationKind_MIGRATION_KIND_UNSPECIFIED || metapb.MigrationKind_name[int32(k)] == "" {
		return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "%s %q: migration kind %d", what, c.GetId(), int32(k))
	}
	if want := CheckpointCRC(c); c.GetCrc32C() != want {
		return errorf(metapb.Code_CODE_BAD_CHECKSUM, "%s %q phase %q attempt %d: crc32c %08x, the row's bytes give %08x", what, c.GetId(), c.GetPhase(), c.GetAttempt(), c.GetCrc32C(), want)
	}
	return nil
}

// validateExpect checks a conditional write's expectation (nil: none).
// A put expects either no row or a row at a phase (required) and attempt; a
// delete expects a row at an attempt and, if the phase is not empty, that
// phase.
func validateExpect(what string, x *metapb.CheckpointExpectation, put bool) error {
	switch {
	case x == nil:
		return nil
	case x.GetAbsent() && !put:
		return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "%s: cannot expect the row to be absent", what)
	case x.GetAbsent() && (x.GetPhase() != "" || x.GetAttempt() != 0):
		return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "%s: expects no row and a row at phase %q attempt %d", what, clip(x.GetPhase(), MaxStringBytes), x.GetAttempt())
	case !x.GetAbsent() && put && x.GetPhase() == "":
		return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "%s: the expected phase is empty", what)
	}
	return str(what+": expected phase", x.GetPhase(), false)
}

// validateState checks a decoded state's invariants: the ones Apply keeps
// (ids below their counters, references that resolve, one replica per node
// and group, a route for every vShard, at most one row holding a group). A
// state that fails is not used. Migration rows that fail VerifyCheckpoint
// (a bad checksum, above all) are not a reason to refuse the state: they
// are quarantined rows, kept and reported, and every consumer that acts on
// rows verifies them first.
func validateState(st *metapb.State) error {
	switch st.GetFormatVersion() {
	case 0:
		if proto.Size(st) != 0 {
			return errorf(metapb.Code_CODE_INVALID_STATE, "state has content but no format version")
		}
		return nil
	case FormatVersion:
	default:
		return errorf(metapb.Code_CODE_UNSUPPORTED_VERSION, "state format version %d, this node reads version %d", st.GetFormatVersion(), FormatVersion)
	}
	bad := func(format string, args ...any) error {
		return errorf(metapb.Code_CODE_INVALID_STATE, format, args...)
	}
	if err := validateSettings(st.GetSettings()); err != nil {
		return wrap(err, "state settings")
	}
	if _, ok := st.GetGroups()[0]; !ok {
		return bad("no metadata group")
	}
	for id, n := range st.GetNodes() {
		switch {
		case n == nil || n.GetId() != id || id == 0:
			return bad("node %d: key and id disagree", id)
		case id >= st.GetNextNodeId():
			return bad("node %d: not below the next node id %d", id, st.GetNextNodeId())
		case !validNodeState(n.GetState()):
			return bad("node %d: state %d", id, int32(n.GetState()))
		}
	}
	for id, g := range st.GetGroups() {
		if err := validateGroup(st, id, g); err != nil {
			return err
		}
	}
	v := st.GetSettings().GetVshardCount()
	if uint64(len(st.GetRouting())) != uint64(v) {
		return bad("%d routes for %d vShards", len(st.GetRouting()), v)
	}
	for vs, r := range st.GetRouting() {
		if r.GetGroup() == 0 || st.GetGroups()[r.GetGroup()] == nil || r.GetEpoch() == 0 {
			return bad("vShard %d: route to group %d epoch %d", vs, r.GetGroup(), r.GetEpoch())
		}
	}
	for vs, gh := range st.GetGhosts() {
		if vs >= v || gh.GetNewGroup() == 0 || st.GetGroups()[gh.GetNewGroup()] == nil {
			return bad("ghost of vShard %d: new group %d", vs, gh.GetNewGroup())
		}
	}
	held := map[uint64]string{}
	for id, c := range st.GetMigrations() {
		if VerifyCheckpoint(id, c) != nil {
			continue // quarantined
		}
		g := c.GetFenceGroup()
		if g == 0 {
			continue
		}
		if st.GetGroups()[g] == nil {
			return bad("migration %q: holds unknown group %d", id, g)
		}
		if other, ok := held[g]; ok {
			return bad("migrations %q and %q both hold group %d", min(id, other), max(id, other), g)
		}
		held[g] = id
	}
	for id, t := range st.GetTokens() {
		switch {
		case t.GetId() != id:
			return bad("token %q: key and id disagree", id)
		case t.GetState() == metapb.TokenState_TOKEN_STATE_UNSPECIFIED || metapb.TokenState_name[int32(t.GetState())] == "":
			return bad("token %q: state %d", id, int32(t.GetState()))
		case t.GetNodeId() != 0 && st.GetNodes()[t.GetNodeId()] == nil:
			return bad("token %q: node %d unknown", id, t.GetNodeId())
		}
	}
	return nil
}

func validateGroup(st *metapb.State, id uint64, g *metapb.Group) error {
	bad := func(format string, args ...any) error {
		return errorf(metapb.Code_CODE_INVALID_STATE, "group %d: "+format, append([]any{id}, args...)...)
	}
	if g == nil || g.GetId() != id {
		return bad("key and id disagree")
	}
	if id >= st.GetNextGroupId() {
		return bad("not below the next group id %d", st.GetNextGroupId())
	}
	if h := g.GetLeaderHint(); h != 0 && st.GetNodes()[h] == nil {
		return bad("leader hint names unknown node %d", h)
	}
	ids, nodes := map[uint64]bool{}, map[uint64]bool{}
	for _, r := range g.GetReplicas() {
		switch {
		case r.GetId() == 0 || r.GetId() >= g.GetNextReplicaId():
			return bad("replica %d: not in 1..next replica id %d", r.GetId(), g.GetNextReplicaId())
		case ids[r.GetId()]:
			return bad("replica %d listed twice", r.GetId())
		case nodes[r.GetNode()]:
			return bad("node %d holds two replicas", r.GetNode())
		case st.GetNodes()[r.GetNode()] == nil:
			return bad("replica %d on unknown node %d", r.GetId(), r.GetNode())
		case r.GetRole() != metapb.Role_ROLE_VOTER && r.GetRole() != metapb.Role_ROLE_LEARNER:
			return bad("replica %d: role %d", r.GetId(), int32(r.GetRole()))
		}
		ids[r.GetId()], nodes[r.GetNode()] = true, true
	}
	return nil
}

func validNodeState(s metapb.NodeState) bool {
	return s != metapb.NodeState_NODE_STATE_UNSPECIFIED && metapb.NodeState_name[int32(s)] != ""
}

func nodeState(what string, s metapb.NodeState) error {
	if !validNodeState(s) {
		return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "%s: node state %d", what, int32(s))
	}
	return nil
}

// str checks a string field's presence and length.
func str(what, s string, required bool) error {
	switch {
	case required && s == "":
		return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "%s is empty", what)
	case len(s) > MaxStringBytes:
		return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "%s is %d bytes, at most %d", what, len(s), MaxStringBytes)
	}
	return nil
}

func hash(what string, h []byte) error {
	if len(h) != HashBytes {
		return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "%s is %d bytes, want %d (SHA-256)", what, len(h), HashBytes)
	}
	return nil
}

func nonzero(what string, v uint64) error {
	if v == 0 {
		return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "%s is 0", what)
	}
	return nil
}

// all returns the first non-nil error.
func all(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
