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
	row := func(phase string, attempt uint32, payload string) *metapb.Checkpoint {
		return NewCheckpoint("m1", vmove, phase, attempt, []byte(payload))
	}
	cp := func(phase string, attempt uint32, payload string) *metapb.Entry {
		return NewPutCheckpoint(row(phase, attempt, payload))
	}
	cpIf := func(phase string, attempt uint32, payload string, want *metapb.CheckpointExpectation) *metapb.Entry {
		return NewPutCheckpointIf(row(phase, attempt, payload), want)
	}
	corrupt := NewCheckpoint("m1", vmove, "copy", 1, []byte("p"))
	corrupt.Crc32C ^= 1
	tampered := NewCheckpoint("m1", vmove, "copy", 1, []byte("p"))
	tampered.Payload = []byte("q")
	stored := with(cp("copy", 2, "p"))
	advanced := with(cp("copy", 2, "p"), cpIf("catchup", 2, "p", ExpectRow("copy", 2)))
	// A row whose checksum broke in storage: quarantined, kept.
	quarantined := func(t *testing.T) *metapb.State {
		st := stored(t)
		st.Migrations["m1"].Payload = []byte("rot")
		return st
	}
	rowIs := func(phase string, attempt uint32, payload string, ts int64) func(t *testing.T, _, st *metapb.State, _ *metapb.Result, _ []Effect) {
		return func(t *testing.T, _, st *metapb.State, _ *metapb.Result, _ []Effect) {
			t.Helper()
			c := st.GetMigrations()["m1"]
			if c.GetPhase() != phase || c.GetAttempt() != attempt || string(c.GetPayload()) != payload || c.GetTimestampUnixNanos() != ts || VerifyCheckpoint("m1", c) != nil {
				t.Fatalf("row %v, want %s/%d %q at %d", c, phase, attempt, payload, ts)
			}
		}
	}
	gone := func(t *testing.T, _, st *metapb.State, _ *metapb.Result, _ []Effect) {
		t.Helper()
		if len(st.GetMigrations()) != 0 {
			t.Fatal("row left")
		}
	}
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
		// Replays and payload updates within a phase.
		{name: "same row again", start: stored, e: cp("copy", 2, "p"), now: t0 + 9, check: noop},
		{name: "same phase and attempt, new payload (last error)", start: stored, e: cp("copy", 2, "p; last error: timeout"), now: t0 + 9, check: func(t *testing.T, prev, st *metapb.State, res *metapb.Result, eff []Effect) {
			rowIs("copy", 2, "p; last error: timeout", t0+9)(t, prev, st, res, eff)
			if len(eff) != 1 || eff[0] != (CheckpointChanged{ID: "m1", Phase: "copy", Attempt: 2}) {
				t.Fatalf("effects %v", eff)
			}
		}},
		{name: "same phase and attempt, new payload, conditional", start: stored, e: cpIf("copy", 2, "q", ExpectRow("copy", 2)), now: t0 + 9, check: rowIs("copy", 2, "q", t0+9)},
		{name: "next phase", start: stored, e: cp("catchup", 2, ""), check: func(t *testing.T, _, st *metapb.State, _ *metapb.Result, _ []Effect) {
			if st.GetMigrations()["m1"].GetPhase() != "catchup" {
				t.Fatal("phase not recorded")
			}
		}},
		{name: "next attempt", start: stored, e: cp("copy", 3, "p")},
		{name: "older attempt", start: stored, e: cp("cutover", 1, "p"), code: metapb.Code_CODE_CHECKPOINT_CONFLICT},
		{name: "other kind", start: stored, e: NewPutCheckpoint(NewCheckpoint("m1", rmove, "copy", 2, nil)), code: metapb.Code_CODE_CHECKPOINT_CONFLICT},
		{name: "other kind, same phase, attempt and payload", start: stored, e: NewPutCheckpoint(NewCheckpoint("m1", rmove, "copy", 2, []byte("p"))), code: metapb.Code_CODE_CHECKPOINT_CONFLICT},
		// Conditional writes.
		{name: "expect absent: first write", e: cpIf("copy", 1, "p", ExpectAbsent()), check: rowIs("copy", 1, "p", t0)},
		{name: "expect absent: a row is stored", start: stored, e: cpIf("copy", 1, "p", ExpectAbsent()), code: metapb.Code_CODE_CHECKPOINT_CONFLICT},
		{name: "expect absent: the same row is stored (retried first write)", start: stored, e: cpIf("copy", 2, "p", ExpectAbsent()), check: noop},
		{name: "expect row: matches", start: stored, e: cpIf("catchup", 2, "p", ExpectRow("copy", 2)), check: rowIs("catchup", 2, "p", t0)},
		{name: "expect row: another phase", start: stored, e: cpIf("cutover", 2, "p", ExpectRow("catchup", 2)), code: metapb.Code_CODE_CHECKPOINT_CONFLICT},
		{name: "expect row: another attempt", start: stored, e: cpIf("catchup", 2, "p", ExpectRow("copy", 1)), code: metapb.Code_CODE_CHECKPOINT_CONFLICT},
		{name: "expect row: none stored", e: cpIf("catchup", 2, "p", ExpectRow("copy", 2)), code: metapb.Code_CODE_CHECKPOINT_CONFLICT},
		{name: "expect row: retried advance is a no-op", start: advanced, e: cpIf("catchup", 2, "p", ExpectRow("copy", 2)), check: noop},
		{name: "expect row: a second coordinator advancing from the same read", start: advanced, e: cpIf("cutover", 2, "p", ExpectRow("copy", 2)), code: metapb.Code_CODE_CHECKPOINT_CONFLICT},
		{name: "expect row: backwards from a stale read", start: advanced, e: cpIf("copy", 2, "p; retry", ExpectRow("copy", 2)), code: metapb.Code_CODE_CHECKPOINT_CONFLICT},
		{name: "expect row: new attempt", start: stored, e: cpIf("copy", 3, "p", ExpectRow("copy", 2)), check: rowIs("copy", 3, "p", t0)},
		{name: "expect absent and a phase", e: cpIf("copy", 1, "p", &metapb.CheckpointExpectation{Absent: true, Phase: "copy"}), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "expect a row without a phase", start: stored, e: cpIf("copy", 2, "q", ExpectRow("", 2)), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "expect a phase too long", start: stored, e: cpIf("copy", 2, "q", ExpectRow(strings.Repeat("x", MaxStringBytes+1), 2)), code: metapb.Code_CODE_INVALID_ARGUMENT},
		// Refusals of the row itself.
		{name: "corrupted crc", e: NewPutCheckpoint(corrupt), code: metapb.Code_CODE_BAD_CHECKSUM},
		{name: "tampered payload", start: stored, e: NewPutCheckpoint(tampered), code: metapb.Code_CODE_BAD_CHECKSUM},
		{name: "no row", e: NewPutCheckpoint(nil), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "no kind", e: NewPutCheckpoint(NewCheckpoint("m1", metapb.MigrationKind_MIGRATION_KIND_UNSPECIFIED, "copy", 1, nil)), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "no phase", e: NewPutCheckpoint(NewCheckpoint("m1", vmove, "", 1, nil)), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "no id", e: NewPutCheckpoint(NewCheckpoint("", vmove, "copy", 1, nil)), code: metapb.Code_CODE_INVALID_ARGUMENT},
		// Deletion.
		{name: "delete", start: stored, e: NewDeleteCheckpoint("m1"), check: gone},
		{name: "delete absent", e: NewDeleteCheckpoint("m1"), check: noop},
		{name: "delete without id", e: NewDeleteCheckpoint(""), code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "delete expecting the row", start: stored, e: NewDeleteCheckpointIf("m1", ExpectRow("copy", 2)), check: gone},
		{name: "delete expecting the attempt, any phase", start: advanced, e: NewDeleteCheckpointIf("m1", ExpectRow("", 2)), check: gone},
		{name: "delete expecting another attempt", start: stored, e: NewDeleteCheckpointIf("m1", ExpectRow("", 1)), code: metapb.Code_CODE_CHECKPOINT_CONFLICT},
		{name: "delete expecting another phase", start: advanced, e: NewDeleteCheckpointIf("m1", ExpectRow("copy", 2)), code: metapb.Code_CODE_CHECKPOINT_CONFLICT},
		{name: "delete expecting a row, none stored (retried delete)", e: NewDeleteCheckpointIf("m1", ExpectRow("copy", 2)), check: noop},
		{name: "delete expecting absent", start: stored, e: NewDeleteCheckpointIf("m1", ExpectAbsent()), code: metapb.Code_CODE_INVALID_ARGUMENT},
		// A quarantined row: kept, never overwritten, cleared only
		// unconditionally; the rest of the state works.
		{name: "quarantined: other entries apply", start: quarantined, e: NewActivateNode(4), check: func(t *testing.T, _, st *metapb.State, _ *metapb.Result, _ []Effect) {
			if q := QuarantinedCheckpoints(st); len(q) != 1 || q[0] != "m1" {
				t.Fatalf("quarantined %v", q)
			}
		}},
		{name: "quarantined: put over it", start: quarantined, e: cp("copy", 3, "p"), code: metapb.Code_CODE_BAD_CHECKSUM},
		{name: "quarantined: put of what it once was", start: quarantined, e: cp("copy", 2, "p"), code: metapb.Code_CODE_BAD_CHECKSUM},
		{name: "quarantined: conditional delete", start: quarantined, e: NewDeleteCheckpointIf("m1", ExpectRow("copy", 2)), code: metapb.Code_CODE_BAD_CHECKSUM},
		{name: "quarantined: unconditional delete", start: quarantined, e: NewDeleteCheckpoint("m1"), check: gone},
	})
}

// A group held by a migration (a sound row with fence_group) takes
// membership changes only from that migration; everything else is
// refused with CONFLICT, and a migration that does not hold the group with
// CHECKPOINT_CONFLICT.
func TestApplyFence(t *testing.T) {
	const rmove = metapb.MigrationKind_MIGRATION_KIND_REPLICA_MOVE
	learner := metapb.Role_ROLE_LEARNER
	mv := func(id, phase string, fence uint64) *metapb.Checkpoint {
		return NewFencingCheckpoint(id, rmove, phase, 1, []byte(id), fence)
	}
	// Group 1: voter 1 (node 1), learner 2 (node 2) added by the move
	// "mv", which holds the group.
	held := with(NewPutCheckpointIf(mv("mv", "add_learner", 1), ExpectAbsent()), WithMigration("mv", NewAddReplica(1, 2, learner)))
	heldCorrupt := func(t *testing.T) *metapb.State {
		st := held(t)
		st.Migrations["mv"].Crc32C ^= 1
		return st
	}
	released := with(NewPutCheckpointIf(mv("mv", "add_learner", 1), ExpectAbsent()), WithMigration("mv", NewAddReplica(1, 2, learner)),
		NewPutCheckpoint(mv("mv", "complete", 0)))
	deleted := with(NewPutCheckpoint(mv("mv", "add_learner", 1)), NewDeleteCheckpoint("mv"))
	conflict, stale := metapb.Code_CODE_CONFLICT, metapb.Code_CODE_CHECKPOINT_CONFLICT
	runCases(t, []applyCase{
		{name: "row holds its group", e: NewPutCheckpoint(mv("mv", "add_learner", 1)), check: func(t *testing.T, _, st *metapb.State, _ *metapb.Result, _ []Effect) {
			if id, ok := GroupFence(st, 1); !ok || id != "mv" || st.GetMigrations()["mv"].GetFenceGroup() != 1 {
				t.Fatalf("fence %q %v", id, ok)
			}
			if _, ok := GroupFence(st, 2); ok {
				t.Fatal("group 2 held")
			}
		}},
		{name: "row holds an unknown group", e: NewPutCheckpoint(mv("mv", "add_learner", 99)), code: metapb.Code_CODE_UNKNOWN_GROUP},
		{name: "second row for a held group", start: held, e: NewPutCheckpointIf(mv("mv2", "add_learner", 1), ExpectAbsent()), code: conflict},
		{name: "second row for another group", start: held, e: NewPutCheckpointIf(mv("mv2", "add_learner", 2), ExpectAbsent())},
		{name: "second row once the first released the group", start: released, e: NewPutCheckpointIf(mv("mv2", "add_learner", 1), ExpectAbsent())},
		{name: "second row over a quarantined holder", start: heldCorrupt, e: NewPutCheckpointIf(mv("mv2", "add_learner", 1), ExpectAbsent())},
		{name: "fence not covered by the checksum is refused", e: NewPutCheckpoint(func() *metapb.Checkpoint {
			c := mv("mv", "add_learner", 0)
			c.FenceGroup = 1
			return c
		}()), code: metapb.Code_CODE_BAD_CHECKSUM},

		{name: "placement adds to a held group", start: held, e: NewAddReplica(1, 3, learner), code: conflict},
		{name: "placement adds to another group", start: held, e: NewAddReplica(2, 3, learner)},
		{name: "the move adds", start: held, e: WithMigration("mv", NewAddReplica(1, 3, learner))},
		{name: "another migration adds", start: held, e: WithMigration("other", NewAddReplica(1, 3, learner)), code: stale},
		{name: "the move adds to a group it does not hold", start: held, e: WithMigration("mv", NewAddReplica(2, 3, learner)), code: stale},
		{name: "placement promotes in a held group", start: held, e: NewPromoteReplica(1, 2), code: conflict},
		{name: "the move promotes", start: held, e: WithMigration("mv", NewPromoteReplica(1, 2))},
		{name: "placement promotes a voter (no-op)", start: held, e: NewPromoteReplica(1, 1), check: noop},
		{name: "placement removes in a held group", start: held, e: NewRemoveReplica(1, 2), code: conflict},
		{name: "the move removes", start: held, e: WithMigration("mv", NewRemoveReplica(1, 2))},
		{name: "placement removes an absent replica (no-op)", start: held, e: NewRemoveReplica(1, 9), check: noop},
		{name: "placement replaces (batch) in a held group", start: held, e: NewBatch(NewPromoteReplica(1, 2), NewRemoveReplica(1, 1)), code: conflict},
		{name: "leader hints are not held", start: held, e: NewSetLeaderHint(1, 2)},
		{name: "the move records and releases the group in one batch", start: held,
			e: WithMigration("mv", NewBatch(NewPromoteReplica(1, 2), NewRemoveReplica(1, 1), NewPutCheckpointIf(mv("mv", "complete", 0), ExpectRow("add_learner", 1)))),
			check: func(t *testing.T, _, st *metapb.State, _ *metapb.Result, _ []Effect) {
				if _, ok := GroupFence(st, 1); ok || ReplicaOnNode(st.GetGroups()[1], 1) != nil || len(Voters(st, 1)) != 1 {
					t.Fatalf("group %v", st.GetGroups()[1])
				}
			}},
		{name: "released: placement adds", start: released, e: NewAddReplica(1, 3, learner)},
		{name: "released: the move's retried record is a no-op", start: released, e: WithMigration("mv", NewRemoveReplica(1, 9)), check: noop},
		{name: "released: the move changes the group", start: released, e: WithMigration("mv", NewRemoveReplica(1, 2)), code: stale},
		{name: "deleted: the move adds", start: deleted, e: WithMigration("mv", NewAddReplica(1, 3, learner)), code: stale},
		{name: "deleted: placement adds", start: deleted, e: NewAddReplica(1, 3, learner)},
		{name: "quarantined holder: placement adds", start: heldCorrupt, e: NewAddReplica(1, 3, learner)},
		{name: "quarantined holder: the move adds", start: heldCorrupt, e: WithMigration("mv", NewAddReplica(1, 3, learner)), code: stale},
		{name: "migration id too long", start: held, e: WithMigration(strings.Repeat("m", MaxStringBytes+1), NewAddReplica(1, 3, learner)), code: metapb.Code_CODE_INVALID_ARGUMENT},
	})
	// The refusal names the migration that holds the group.
	_, res, _, _ := Apply(held(t), NewAddReplica(1, 3, learner), t0)
	if !strings.Contains(res.GetMessage(), `"mv"`) {
		t.Fatalf("message %q", res.GetMessage())
	}
	// WithMigration leaves other kinds alone.
	if e := WithMigration("mv", NewSetLeaderHint(1, 1)); e.GetSetLeaderHint().GetNode() != 1 {
		t.Fatalf("entry %v", e)
	}
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
