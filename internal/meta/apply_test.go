package meta

import (
	"bytes"
	"strings"
	"testing"

	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"google.golang.org/protobuf/proto"
)

// applyCase is one entry applied to a start state (base unless start says
// otherwise), with the code it must get and, on success, a check.
type applyCase struct {
	name  string
	start func(t *testing.T) *metapb.State
	e     *metapb.Entry
	now   int64 // 0: t0
	code  metapb.Code
	check func(t *testing.T, prev, next *metapb.State, res *metapb.Result, eff []Effect)
}

func runCases(t *testing.T, cases []applyCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var prev *metapb.State
			if c.start != nil {
				prev = c.start(t)
			} else {
				prev = base(t)
			}
			before := proto.Clone(prev)
			now := c.now
			if now == 0 {
				now = t0
			}
			next, res, eff, err := Apply(prev, c.e, now)
			wantCode(t, err, res, c.code)
			if prev != nil && !proto.Equal(before, prev) {
				t.Fatal("Apply modified its input state")
			}
			if c.code != metapb.Code_CODE_OK {
				if next != prev || eff != nil {
					t.Fatalf("refused entry returned a new state or effects %v", eff)
				}
				if res.GetMessage() == "" {
					t.Fatal("refusal without a message")
				}
				return
			}
			if next.GetAppliedEntries() != prev.GetAppliedEntries()+1 {
				t.Fatalf("applied entries %d after %d", next.GetAppliedEntries(), prev.GetAppliedEntries())
			}
			encoded(t, next)
			if c.check != nil {
				c.check(t, prev, next, res, eff)
			}
		})
	}
}

// noop checks that the entry changed nothing but the applied count.
func noop(t *testing.T, prev, next *metapb.State, _ *metapb.Result, eff []Effect) {
	t.Helper()
	if len(eff) != 0 {
		t.Fatalf("no-op with effects %v", eff)
	}
	p := proto.Clone(prev).(*metapb.State)
	p.AppliedEntries = next.AppliedEntries
	if !proto.Equal(p, next) {
		t.Fatal("no-op changed the state")
	}
}

func with(es ...*metapb.Entry) func(t *testing.T) *metapb.State {
	return func(t *testing.T) *metapb.State {
		st := base(t)
		for _, e := range es {
			st, _, _ = mustApply(t, st, e, t0)
		}
		return st
	}
}

func empty(*testing.T) *metapb.State { return nil }

func TestApplyGeneric(t *testing.T) {
	noKind := &metapb.Entry{Version: EntryVersion}
	v2 := NewActivateNode(2)
	v2.Version = 2
	v0 := NewActivateNode(2)
	v0.Version = 0
	runCases(t, []applyCase{
		{name: "nil entry", e: nil, code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "no kind", e: noKind, code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "version 2", e: v2, code: metapb.Code_CODE_UNSUPPORTED_VERSION},
		{name: "version 0", e: v0, code: metapb.Code_CODE_UNSUPPORTED_VERSION},
		{name: "not bootstrapped", start: empty, e: NewCreateToken("t", HashSecret("s"), t0+1), code: metapb.Code_CODE_NOT_BOOTSTRAPPED},
		{name: "nil sub-message", e: &metapb.Entry{Version: 1, Kind: &metapb.Entry_SetRoute{}}, code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "too large", e: NewPutCheckpoint(NewCheckpoint("m", metapb.MigrationKind_MIGRATION_KIND_VSHARD_MOVE, "copy", 1, make([]byte, MaxEntryBytes))), code: metapb.Code_CODE_TOO_LARGE},
		{name: "state too large", start: func(t *testing.T) *metapb.State {
			st := base(t)
			st.Migrations = map[string]*metapb.Checkpoint{"big": NewCheckpoint("big", metapb.MigrationKind_MIGRATION_KIND_VSHARD_MOVE, "copy", 1, make([]byte, MaxStateBytes))}
			return st
		}, e: NewActivateNode(4), code: metapb.Code_CODE_TOO_LARGE},
	})
}

func TestApplyBootstrap(t *testing.T) {
	bs := func(mod func(s *metapb.ClusterSettings, n *metapb.Node) uint32) *metapb.Entry {
		s, n := testSettings(), &metapb.Node{PeerAddr: "n1:7000"}
		return NewBootstrap(s, n, mod(s, n))
	}
	runCases(t, []applyCase{
		{name: "creates the cluster", start: empty, e: bootstrapEntry(), check: func(t *testing.T, _, st *metapb.State, _ *metapb.Result, eff []Effect) {
			n := st.GetNodes()[1]
			if len(st.GetNodes()) != 1 || n.GetState() != metapb.NodeState_NODE_STATE_ACTIVE || n.GetPeerAddr() != "n1:7000" || n.GetJoinedUnixNanos() != t0 || n.GetZone() != "z1" {
				t.Fatalf("nodes %v", st.GetNodes())
			}
			if st.GetNextNodeId() != 2 || st.GetNextGroupId() != testGroups+1 || st.GetRoutingVersion() != 1 || st.GetFormatVersion() != FormatVersion {
				t.Fatalf("counters %v %v %v", st.GetNextNodeId(), st.GetNextGroupId(), st.GetRoutingVersion())
			}
			if st.GetSettings().GetInitialGroups() != testGroups || MetaVotersMax(st) != 5 || st.GetSettings().GetMetaVotersMax() != 5 {
				t.Fatalf("settings %v", st.GetSettings())
			}
			if got := GroupIDs(st); len(got) != testGroups+1 {
				t.Fatalf("groups %v", got)
			}
			for _, g := range GroupIDs(st) {
				grp := st.GetGroups()[g]
				r := grp.GetReplicas()
				if len(r) != 1 || r[0].GetId() != 1 || r[0].GetNode() != 1 || r[0].GetRole() != metapb.Role_ROLE_VOTER || !r[0].GetFounder() || grp.GetNextReplicaId() != 2 {
					t.Fatalf("group %d: %v", g, grp)
				}
			}
			for vs := range uint32(testV) {
				g, e := RouteOf(st, vs)
				if want := 1 + uint64(vs)*testGroups/testV; g != want || e != 1 {
					t.Fatalf("vShard %d: group %d epoch %d, want group %d epoch 1", vs, g, e, want)
				}
			}
			if len(eff) != 2 {
				t.Fatalf("effects %v", eff)
			}
		}},
		{name: "three groups over sixteen vShards", start: empty, e: bs(func(*metapb.ClusterSettings, *metapb.Node) uint32 { return 3 }), check: func(t *testing.T, _, st *metapb.State, _ *metapb.Result, _ []Effect) {
			var got []int
			for g := uint64(1); g <= 3; g++ {
				got = append(got, len(VShardsOf(st, g)))
			}
			if got[0] != 6 || got[1] != 5 || got[2] != 5 {
				t.Fatalf("vShards per group %v", got)
			}
		}},
		{name: "again, same cluster", e: bootstrapEntry(), check: noop},
		{name: "again, other cluster", e: bs(func(s *metapb.ClusterSettings, _ *metapb.Node) uint32 { s.ClusterId = "other"; return 1 }), code: metapb.Code_CODE_CLUSTER_MISMATCH},
		{name: "vShards not a power of two", start: empty, e: bs(func(s *metapb.ClusterSettings, _ *metapb.Node) uint32 { s.VshardCount = 24; return 1 }), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "too few vShards", start: empty, e: bs(func(s *metapb.ClusterSettings, _ *metapb.Node) uint32 { s.VshardCount = 8; return 1 }), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "too many vShards", start: empty, e: bs(func(s *metapb.ClusterSettings, _ *metapb.Node) uint32 { s.VshardCount = 32768; return 1 }), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "rf 0", start: empty, e: bs(func(s *metapb.ClusterSettings, _ *metapb.Node) uint32 { s.ReplicationFactor = 0; return 1 }), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "meta voters max too high", start: empty, e: bs(func(s *metapb.ClusterSettings, _ *metapb.Node) uint32 { s.MetaVotersMax = 99; return 1 }), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "no groups", start: empty, e: bs(func(*metapb.ClusterSettings, *metapb.Node) uint32 { return 0 }), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "more groups than vShards", start: empty, e: bs(func(*metapb.ClusterSettings, *metapb.Node) uint32 { return testV + 1 }), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "initial groups disagree", start: empty, e: bs(func(s *metapb.ClusterSettings, _ *metapb.Node) uint32 { s.InitialGroups = 2; return 3 }), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "empty cluster id", start: empty, e: bs(func(s *metapb.ClusterSettings, _ *metapb.Node) uint32 { s.ClusterId = ""; return 1 }), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "first node 2", start: empty, e: bs(func(_ *metapb.ClusterSettings, n *metapb.Node) uint32 { n.Id = 2; return 1 }), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "first node without address", start: empty, e: bs(func(_ *metapb.ClusterSettings, n *metapb.Node) uint32 { n.PeerAddr = ""; return 1 }), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "no first node", start: empty, e: NewBootstrap(testSettings(), nil, 1), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "no settings", start: empty, e: NewBootstrap(nil, &metapb.Node{PeerAddr: "a:1"}, 1), code: metapb.Code_CODE_INVALID_ARGUMENT},
	})
}

func TestApplyTokens(t *testing.T) {
	expires := t0 + hour
	runCases(t, []applyCase{
		{name: "create", e: NewCreateToken("new", HashSecret("x"), expires), check: func(t *testing.T, _, st *metapb.State, _ *metapb.Result, eff []Effect) {
			tok := st.GetTokens()["new"]
			if tok.GetState() != metapb.TokenState_TOKEN_STATE_REGISTERED || tok.GetCreatedUnixNanos() != t0 || tok.GetExpiresUnixNanos() != expires || !bytes.Equal(tok.GetSecretHash(), HashSecret("x")) {
				t.Fatalf("token %v", tok)
			}
			if len(eff) != 1 || eff[0] != (TokenChanged{Token: "new", State: metapb.TokenState_TOKEN_STATE_REGISTERED}) {
				t.Fatalf("effects %v", eff)
			}
		}},
		{name: "create again", e: NewCreateToken("free", HashSecret("s-free"), expires), check: noop},
		{name: "create over another", e: NewCreateToken("free", HashSecret("other"), expires), code: metapb.Code_CODE_TOKEN_EXISTS},
		{name: "create expired", e: NewCreateToken("new", HashSecret("x"), t0-1), code: metapb.Code_CODE_TOKEN_EXPIRED},
		{name: "create without id", e: NewCreateToken("", HashSecret("x"), expires), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "create with a long id", e: NewCreateToken(strings.Repeat("x", MaxStringBytes+1), HashSecret("x"), expires), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "create with a short hash", e: NewCreateToken("new", []byte("short"), expires), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "revoke", e: NewRevokeToken("free"), check: func(t *testing.T, _, st *metapb.State, _ *metapb.Result, _ []Effect) {
			if st.GetTokens()["free"].GetState() != metapb.TokenState_TOKEN_STATE_REVOKED {
				t.Fatal("not revoked")
			}
		}},
		{name: "revoke in flight", e: NewRevokeToken("tok-n4"), check: func(t *testing.T, _, st *metapb.State, _ *metapb.Result, _ []Effect) {
			if st.GetTokens()["tok-n4"].GetState() != metapb.TokenState_TOKEN_STATE_REVOKED {
				t.Fatal("not revoked")
			}
		}},
		{name: "revoke again", e: NewRevokeToken("gone"), check: noop},
		{name: "revoke unknown", e: NewRevokeToken("nope"), code: metapb.Code_CODE_UNKNOWN_TOKEN},
		{name: "revoke consumed", e: NewRevokeToken("tok-n2"), code: metapb.Code_CODE_TOKEN_CONSUMED},
		{name: "revoke without id", e: NewRevokeToken(""), code: metapb.Code_CODE_INVALID_ARGUMENT},
	})
}

func TestApplyBeginJoin(t *testing.T) {
	bj := func(tok, secret, who string) *metapb.Entry {
		return NewBeginJoin(tok, HashSecret(secret), key(who), who+":7000", who+":8000", "z9")
	}
	runCases(t, []applyCase{
		{name: "admits", e: bj("free", "s-free", "n5"), check: func(t *testing.T, prev, st *metapb.State, res *metapb.Result, eff []Effect) {
			if res.GetNodeId() != 5 || st.GetNextNodeId() != 6 || prev.GetNextNodeId() != 5 {
				t.Fatalf("node id %d, next %d", res.GetNodeId(), st.GetNextNodeId())
			}
			n := st.GetNodes()[5]
			if n.GetState() != metapb.NodeState_NODE_STATE_JOINING || n.GetPeerAddr() != "n5:7000" || n.GetApiAddr() != "n5:8000" || n.GetZone() != "z9" || n.GetJoinToken() != "free" || n.GetJoinedUnixNanos() != t0 {
				t.Fatalf("node %v", n)
			}
			tok := st.GetTokens()["free"]
			if tok.GetState() != metapb.TokenState_TOKEN_STATE_IN_FLIGHT || tok.GetNodeId() != 5 || !bytes.Equal(tok.GetBoundKeyHash(), key("n5")) {
				t.Fatalf("token %v", tok)
			}
			if len(eff) != 2 {
				t.Fatalf("effects %v", eff)
			}
		}},
		{name: "at the expiry instant", now: t0 + hour, e: bj("free", "s-free", "n5")},
		{name: "unknown token", e: bj("nope", "s-free", "n5"), code: metapb.Code_CODE_UNKNOWN_TOKEN},
		{name: "forged secret", e: bj("free", "guess", "n5"), code: metapb.Code_CODE_BAD_SECRET},
		{name: "expired", now: t0 + hour + 1, e: bj("free", "s-free", "n5"), code: metapb.Code_CODE_TOKEN_EXPIRED},
		{name: "revoked", e: bj("gone", "s-gone", "n5"), code: metapb.Code_CODE_TOKEN_REVOKED},
		{name: "consumed, other key", e: bj("tok-n2", "secret-n2", "n5"), code: metapb.Code_CODE_TOKEN_CONSUMED},
		{name: "in flight, other key", e: bj("tok-n4", "secret-n4", "n5"), code: metapb.Code_CODE_TOKEN_BOUND},
		{name: "in flight, same key (retry)", e: bj("tok-n4", "secret-n4", "n4"), check: func(t *testing.T, prev, next *metapb.State, res *metapb.Result, eff []Effect) {
			if res.GetNodeId() != 4 {
				t.Fatalf("node id %d, want 4", res.GetNodeId())
			}
			noop(t, prev, next, res, eff)
		}},
		{name: "consumed, same key, after expiry", now: t0 + 5*hour, e: bj("tok-n2", "secret-n2", "n2"), check: func(t *testing.T, prev, next *metapb.State, res *metapb.Result, eff []Effect) {
			if res.GetNodeId() != 2 {
				t.Fatalf("node id %d, want 2", res.GetNodeId())
			}
			noop(t, prev, next, res, eff)
		}},
		{name: "same key, forged secret", e: bj("tok-n4", "guess", "n4"), code: metapb.Code_CODE_BAD_SECRET},
		{name: "short key hash", e: NewBeginJoin("free", HashSecret("s-free"), []byte{1}, "a:1", "", ""), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "no peer address", e: NewBeginJoin("free", HashSecret("s-free"), key("x"), "", "", ""), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "long zone", e: NewBeginJoin("free", HashSecret("s-free"), key("x"), "a:1", "", strings.Repeat("z", MaxStringBytes+1)), code: metapb.Code_CODE_INVALID_ARGUMENT},
	})
}

func TestApplyNodes(t *testing.T) {
	state := func(id uint64, s metapb.NodeState) *metapb.Entry { return NewSetNodeState(id, s) }
	const (
		joining  = metapb.NodeState_NODE_STATE_JOINING
		active   = metapb.NodeState_NODE_STATE_ACTIVE
		draining = metapb.NodeState_NODE_STATE_DRAINING
		decomm   = metapb.NodeState_NODE_STATE_DECOMMISSIONED
	)
	isState := func(id uint64, s metapb.NodeState) func(t *testing.T, _, st *metapb.State, _ *metapb.Result, _ []Effect) {
		return func(t *testing.T, _, st *metapb.State, _ *metapb.Result, _ []Effect) {
			if got := st.GetNodes()[id].GetState(); got != s {
				t.Fatalf("node %d is %v, want %v", id, got, s)
			}
		}
	}
	runCases(t, []applyCase{
		{name: "activate", e: NewActivateNode(4), check: func(t *testing.T, _, st *metapb.State, _ *metapb.Result, eff []Effect) {
			isState(4, active)(t, nil, st, nil, nil)
			if st.GetTokens()["tok-n4"].GetState() != metapb.TokenState_TOKEN_STATE_CONSUMED {
				t.Fatal("token not consumed")
			}
			if len(eff) != 2 || eff[1] != (NodeStateChanged{Node: 4, From: joining, To: active}) {
				t.Fatalf("effects %v", eff)
			}
		}},
		{name: "activate active", e: NewActivateNode(2), check: noop},
		{name: "activate unknown", e: NewActivateNode(99), code: metapb.Code_CODE_UNKNOWN_NODE},
		{name: "activate 0", e: NewActivateNode(0), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "activate draining", start: with(state(3, draining)), e: NewActivateNode(3), code: metapb.Code_CODE_BAD_TRANSITION},
		{name: "activate with revoked token", start: with(NewRevokeToken("tok-n4")), e: NewActivateNode(4), code: metapb.Code_CODE_TOKEN_REVOKED},
		{name: "drain", e: state(2, draining), check: isState(2, draining)},
		{name: "undrain", start: with(state(2, draining)), e: state(2, active), check: isState(2, active)},
		{name: "decommission idle node", e: state(2, decomm), check: isState(2, decomm)},
		{name: "decommission drained node", start: with(state(2, draining)), e: state(2, decomm), check: isState(2, decomm)},
		{name: "decommission node with replicas", e: state(1, decomm), code: metapb.Code_CODE_NODE_HAS_REPLICAS},
		{name: "abandon a join", e: state(4, decomm), check: isState(4, decomm)},
		{name: "joining to active activates", e: state(4, active), check: func(t *testing.T, _, st *metapb.State, _ *metapb.Result, _ []Effect) {
			isState(4, active)(t, nil, st, nil, nil)
			if st.GetTokens()["tok-n4"].GetState() != metapb.TokenState_TOKEN_STATE_CONSUMED {
				t.Fatal("token not consumed")
			}
		}},
		{name: "joining to draining", e: state(4, draining), code: metapb.Code_CODE_BAD_TRANSITION},
		{name: "back to joining", e: state(2, joining), code: metapb.Code_CODE_BAD_TRANSITION},
		{name: "out of decommissioned", start: with(state(2, decomm)), e: state(2, active), code: metapb.Code_CODE_BAD_TRANSITION},
		{name: "same state", e: state(2, active), check: noop},
		{name: "unknown node", e: state(99, draining), code: metapb.Code_CODE_UNKNOWN_NODE},
		{name: "unspecified state", e: state(2, metapb.NodeState_NODE_STATE_UNSPECIFIED), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "out of range state", e: state(2, metapb.NodeState(99)), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "addresses", e: NewSetNodeAddrs(2, "m2:7000", "m2:8000"), check: func(t *testing.T, _, st *metapb.State, _ *metapb.Result, eff []Effect) {
			if n := st.GetNodes()[2]; n.GetPeerAddr() != "m2:7000" || n.GetApiAddr() != "m2:8000" || len(eff) != 1 {
				t.Fatalf("node %v, effects %v", n, eff)
			}
		}},
		{name: "same addresses", e: NewSetNodeAddrs(2, "n2:7000", "n2:8000"), check: noop},
		{name: "addresses of unknown node", e: NewSetNodeAddrs(99, "a:1", ""), code: metapb.Code_CODE_UNKNOWN_NODE},
		{name: "no peer address", e: NewSetNodeAddrs(2, "", "a:1"), code: metapb.Code_CODE_INVALID_ARGUMENT},
	})
}

func TestApplyReplicas(t *testing.T) {
	learner := metapb.Role_ROLE_LEARNER
	withLearner := with(NewAddReplica(1, 2, learner))
	withVoter := with(NewAddReplica(1, 2, learner), NewPromoteReplica(1, 2), NewSetLeaderHint(1, 2))
	runCases(t, []applyCase{
		{name: "add", e: NewAddReplica(1, 2, learner), check: func(t *testing.T, _, st *metapb.State, res *metapb.Result, eff []Effect) {
			g := st.GetGroups()[1]
			r := ReplicaOnNode(g, 2)
			if res.GetReplicaId() != 2 || r.GetId() != 2 || r.GetRole() != learner || r.GetFounder() || g.GetNextReplicaId() != 3 {
				t.Fatalf("result %v, group %v", res, g)
			}
			if len(eff) != 1 || eff[0] != (ReplicaAdded{Group: 1, Replica: 2, Node: 2, Role: learner}) {
				t.Fatalf("effects %v", eff)
			}
			if got := GroupsOfNode(st, 2); len(got) != 1 || got[0] != 1 {
				t.Fatalf("groups of node 2: %v", got)
			}
		}},
		{name: "add unspecified role", e: NewAddReplica(1, 2, metapb.Role_ROLE_UNSPECIFIED), check: func(t *testing.T, _, st *metapb.State, _ *metapb.Result, _ []Effect) {
			if len(Learners(st, 1)) != 1 {
				t.Fatal("not a learner")
			}
		}},
		{name: "add to the metadata group", e: NewAddReplica(0, 3, learner)},
		{name: "add voter", e: NewAddReplica(1, 2, metapb.Role_ROLE_VOTER), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "add to unknown group", e: NewAddReplica(99, 2, learner), code: metapb.Code_CODE_UNKNOWN_GROUP},
		{name: "add on unknown node", e: NewAddReplica(1, 99, learner), code: metapb.Code_CODE_UNKNOWN_NODE},
		{name: "add on node 0", e: NewAddReplica(1, 0, learner), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "add on joining node", e: NewAddReplica(1, 4, learner), code: metapb.Code_CODE_NODE_NOT_ACTIVE},
		{name: "add where one is", e: NewAddReplica(1, 1, learner), code: metapb.Code_CODE_REPLICA_EXISTS},
		{name: "ids are not reused", start: with(NewAddReplica(1, 2, learner), NewRemoveReplica(1, 2)), e: NewAddReplica(1, 2, learner), check: func(t *testing.T, _, _ *metapb.State, res *metapb.Result, _ []Effect) {
			if res.GetReplicaId() != 3 {
				t.Fatalf("replica id %d, want 3", res.GetReplicaId())
			}
		}},
		{name: "promote", start: withLearner, e: NewPromoteReplica(1, 2), check: func(t *testing.T, _, st *metapb.State, _ *metapb.Result, eff []Effect) {
			if len(Voters(st, 1)) != 2 || len(Learners(st, 1)) != 0 || len(eff) != 1 || eff[0] != (ReplicaPromoted{Group: 1, Replica: 2, Node: 2}) {
				t.Fatalf("voters %v, effects %v", Voters(st, 1), eff)
			}
		}},
		{name: "promote voter", e: NewPromoteReplica(1, 1), check: noop},
		{name: "promote unknown replica", e: NewPromoteReplica(1, 7), code: metapb.Code_CODE_UNKNOWN_REPLICA},
		{name: "promote in unknown group", e: NewPromoteReplica(99, 1), code: metapb.Code_CODE_UNKNOWN_GROUP},
		{name: "promote replica 0", e: NewPromoteReplica(1, 0), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "remove learner", start: withLearner, e: NewRemoveReplica(1, 2), check: func(t *testing.T, _, st *metapb.State, _ *metapb.Result, eff []Effect) {
			if len(st.GetGroups()[1].GetReplicas()) != 1 || len(eff) != 1 {
				t.Fatalf("replicas %v, effects %v", st.GetGroups()[1].GetReplicas(), eff)
			}
		}},
		{name: "remove absent", e: NewRemoveReplica(1, 7), check: noop},
		{name: "remove last voter", e: NewRemoveReplica(1, 1), code: metapb.Code_CODE_LAST_VOTER},
		{name: "remove last voter with a learner", start: withLearner, e: NewRemoveReplica(1, 1), code: metapb.Code_CODE_LAST_VOTER},
		{name: "remove hinted leader", start: withVoter, e: NewRemoveReplica(1, 2), check: func(t *testing.T, _, st *metapb.State, _ *metapb.Result, eff []Effect) {
			if st.GetGroups()[1].GetLeaderHint() != 0 || len(eff) != 2 {
				t.Fatalf("hint %d, effects %v", st.GetGroups()[1].GetLeaderHint(), eff)
			}
		}},
		{name: "remove in unknown group", e: NewRemoveReplica(99, 1), code: metapb.Code_CODE_UNKNOWN_GROUP},
		{name: "hint", start: withLearner, e: NewSetLeaderHint(1, 2), check: func(t *testing.T, _, st *metapb.State, _ *metapb.Result, _ []Effect) {
			if st.GetGroups()[1].GetLeaderHint() != 2 {
				t.Fatal("hint not set")
			}
		}},
		{name: "hint unchanged", e: NewSetLeaderHint(1, 1), check: noop},
		{name: "hint cleared", e: NewSetLeaderHint(1, 0), check: func(t *testing.T, _, st *metapb.State, _ *metapb.Result, _ []Effect) {
			if st.GetGroups()[1].GetLeaderHint() != 0 {
				t.Fatal("hint not cleared")
			}
		}},
		{name: "hint at a node without a replica", e: NewSetLeaderHint(1, 2), code: metapb.Code_CODE_UNKNOWN_REPLICA},
		{name: "hint for unknown group", e: NewSetLeaderHint(99, 1), code: metapb.Code_CODE_UNKNOWN_GROUP},
	})
}

func TestApplyRoutes(t *testing.T) {
	runCases(t, []applyCase{
		{name: "move", e: NewSetRoute(0, 2, 2), check: func(t *testing.T, _, st *metapb.State, _ *metapb.Result, eff []Effect) {
			if g, e := RouteOf(st, 0); g != 2 || e != 2 || st.GetRoutingVersion() != 2 {
				t.Fatalf("route %d@%d, version %d", g, e, st.GetRoutingVersion())
			}
			if len(eff) != 1 || eff[0] != (RouteChanged{VShard: 0, Group: 2, Epoch: 2, FromGroup: 1, RoutingVersion: 2}) {
				t.Fatalf("effects %v", eff)
			}
		}},
		{name: "same epoch", e: NewSetRoute(0, 2, 1), code: metapb.Code_CODE_BAD_EPOCH},
		{name: "skipped epoch", e: NewSetRoute(0, 2, 3), code: metapb.Code_CODE_BAD_EPOCH},
		{name: "vShard out of range", e: NewSetRoute(testV, 2, 2), code: metapb.Code_CODE_OUT_OF_RANGE},
		{name: "huge vShard", e: NewSetRoute(^uint32(0), 2, 2), code: metapb.Code_CODE_OUT_OF_RANGE},
		{name: "unknown group", e: NewSetRoute(0, 99, 2), code: metapb.Code_CODE_UNKNOWN_GROUP},
		{name: "to the metadata group", e: NewSetRoute(0, 0, 2), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "epoch 0", e: NewSetRoute(0, 2, 0), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "ghost", e: NewPutGhost(3, 2, 2, t0+hour), check: func(t *testing.T, _, st *metapb.State, _ *metapb.Result, _ []Effect) {
			if g := st.GetGhosts()[3]; g.GetNewGroup() != 2 || g.GetNewEpoch() != 2 || g.GetExpiresUnixNanos() != t0+hour {
				t.Fatalf("ghost %v", g)
			}
		}},
		{name: "same ghost", start: with(NewPutGhost(3, 2, 2, t0+hour)), e: NewPutGhost(3, 2, 2, t0+hour), check: noop},
		{name: "ghost out of range", e: NewPutGhost(testV, 2, 2, 0), code: metapb.Code_CODE_OUT_OF_RANGE},
		{name: "ghost to unknown group", e: NewPutGhost(3, 99, 2, 0), code: metapb.Code_CODE_UNKNOWN_GROUP},
		{name: "ghost to group 0", e: NewPutGhost(3, 0, 2, 0), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "ghost without ghost", e: &metapb.Entry{Version: 1, Kind: &metapb.Entry_PutGhost{PutGhost: &metapb.PutGhost{Vshard: 3}}}, code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "delete ghost", start: with(NewPutGhost(3, 2, 2, t0+hour)), e: NewDeleteGhost(3), check: func(t *testing.T, _, st *metapb.State, _ *metapb.Result, eff []Effect) {
			if len(st.GetGhosts()) != 0 || len(eff) != 1 || eff[0] != (GhostChanged{VShard: 3, Deleted: true}) {
				t.Fatalf("ghosts %v, effects %v", st.GetGhosts(), eff)
			}
		}},
		{name: "delete absent ghost", e: NewDeleteGhost(3), check: noop},
	})
}

func TestApplyCheckpoints(t *testing.T) {
	const (
		vmove = metapb.MigrationKind_MIGRATION_KIND_VSHARD_MOVE
		rmove = metapb.MigrationKind_MIGRATION_KIND_REPLICA_MOVE
	)
	cp := func(phase string, attempt uint32, payload string) *metapb.Entry {
		return NewPutCheckpoint(NewCheckpoint("m1", vmove, phase, attempt, []byte(payload)))
	}
	corrupt := NewCheckpoint("m1", vmove, "copy", 1, []byte("p"))
	corrupt.Crc32C ^= 1
	tampered := NewCheckpoint("m1", vmove, "copy", 1, []byte("p"))
	tampered.Payload = []byte("q")
	stored := with(cp("copy", 2, "p"))
	runCases(t, []applyCase{
		{name: "put", e: cp("copy", 1, "p"), now: t0 + 5, check: func(t *testing.T, _, st *metapb.State, _ *metapb.Result, eff []Effect) {
			c := st.GetMigrations()["m1"]
			if c.GetPhase() != "copy" || c.GetAttempt() != 1 || string(c.GetPayload()) != "p" || c.GetTimestampUnixNanos() != t0+5 || c.GetCrc32C() != CheckpointCRC(c) {
				t.Fatalf("row %v", c)
			}
			if len(eff) != 1 || eff[0] != (CheckpointChanged{ID: "m1", Phase: "copy", Attempt: 1}) {
				t.Fatalf("effects %v", eff)
			}
		}},
		{name: "same phase and attempt", start: stored, e: cp("copy", 2, "other payload"), check: noop},
		{name: "next phase", start: stored, e: cp("catchup", 2, ""), check: func(t *testing.T, _, st *metapb.State, _ *metapb.Result, _ []Effect) {
			if st.GetMigrations()["m1"].GetPhase() != "catchup" {
				t.Fatal("phase not recorded")
			}
		}},
		{name: "next attempt", start: stored, e: cp("copy", 3, "p")},
		{name: "older attempt", start: stored, e: cp("cutover", 1, "p"), code: metapb.Code_CODE_CHECKPOINT_CONFLICT},
		{name: "other kind", start: stored, e: NewPutCheckpoint(NewCheckpoint("m1", rmove, "copy", 2, nil)), code: metapb.Code_CODE_CHECKPOINT_CONFLICT},
		{name: "corrupted crc", e: NewPutCheckpoint(corrupt), code: metapb.Code_CODE_BAD_CHECKSUM},
		{name: "tampered payload", start: stored, e: NewPutCheckpoint(tampered), code: metapb.Code_CODE_BAD_CHECKSUM},
		{name: "no row", e: NewPutCheckpoint(nil), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "no kind", e: NewPutCheckpoint(NewCheckpoint("m1", metapb.MigrationKind_MIGRATION_KIND_UNSPECIFIED, "copy", 1, nil)), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "no phase", e: NewPutCheckpoint(NewCheckpoint("m1", vmove, "", 1, nil)), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "no id", e: NewPutCheckpoint(NewCheckpoint("", vmove, "copy", 1, nil)), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "delete", start: stored, e: NewDeleteCheckpoint("m1"), check: func(t *testing.T, _, st *metapb.State, _ *metapb.Result, _ []Effect) {
			if len(st.GetMigrations()) != 0 {
				t.Fatal("row left")
			}
		}},
		{name: "delete absent", e: NewDeleteCheckpoint("m1"), check: noop},
		{name: "delete without id", e: NewDeleteCheckpoint(""), code: metapb.Code_CODE_INVALID_ARGUMENT},
	})
}

func TestApplyBatch(t *testing.T) {
	runCases(t, []applyCase{
		{name: "all", e: NewBatch(NewAddReplica(1, 2, metapb.Role_ROLE_LEARNER), NewPromoteReplica(1, 2), NewSetRoute(0, 2, 2)), check: func(t *testing.T, prev, st *metapb.State, res *metapb.Result, eff []Effect) {
			if len(Voters(st, 1)) != 2 || res.GetReplicaId() != 2 || len(eff) != 3 || st.GetAppliedEntries() != prev.GetAppliedEntries()+1 {
				t.Fatalf("voters %v, result %v, effects %v", Voters(st, 1), res, eff)
			}
		}},
		{name: "none when one fails", e: NewBatch(NewAddReplica(1, 2, metapb.Role_ROLE_LEARNER), NewSetRoute(0, 2, 5)), code: metapb.Code_CODE_BAD_EPOCH},
		{name: "join in a batch", e: NewBatch(NewCreateToken("t9", HashSecret("s9"), t0+hour), NewBeginJoin("t9", HashSecret("s9"), key("n9"), "n9:1", "", "")), check: func(t *testing.T, _, _ *metapb.State, res *metapb.Result, _ []Effect) {
			if res.GetNodeId() != 5 {
				t.Fatalf("node %d", res.GetNodeId())
			}
		}},
		{name: "bootstrap in a batch", start: empty, e: NewBatch(bootstrapEntry(), NewCreateToken("t", HashSecret("s"), t0+hour))},
		{name: "empty", e: NewBatch(), check: noop},
		{name: "nested", e: NewBatch(NewActivateNode(4), NewBatch()), code: metapb.Code_CODE_NESTED_BATCH},
		{name: "nil member", e: NewBatch(NewActivateNode(4), nil), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "invalid member", e: NewBatch(NewActivateNode(4), NewSetRoute(0, 0, 2)), code: metapb.Code_CODE_INVALID_ARGUMENT},
	})
	// The refusal names the member that failed.
	_, res, _, _ := Apply(base(t), NewBatch(NewActivateNode(4), NewSetRoute(0, 2, 5)), t0)
	if !strings.Contains(res.GetMessage(), "batch entry 1") {
		t.Fatalf("message %q", res.GetMessage())
	}
}
