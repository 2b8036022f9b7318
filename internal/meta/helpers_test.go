package meta

import (
	"errors"

	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"google.golang.org/protobuf/proto"
)

// tb is what the helpers need of a *testing.T or a *rapid.T.
type tb interface {
	Helper()
	Fatalf(format string, args ...any)
}

const (
	testCluster = "c-test"
	testV       = 16
	testGroups  = 4
	t0          = int64(1_000_000) // the tests' "now"
	hour        = int64(3600e9)
)

func testSettings() *metapb.ClusterSettings {
	return &metapb.ClusterSettings{ClusterId: testCluster, VshardCount: testV, ReplicationFactor: 3}
}

func bootstrapEntry() *metapb.Entry {
	return NewBootstrap(testSettings(), &metapb.Node{PeerAddr: "n1:7000", ApiAddr: "n1:8000", Zone: "z1"}, testGroups)
}

// key returns a distinct 32-byte key hash per joiner name.
func key(name string) []byte { return HashKey([]byte("key of " + name)) }

// mustApply applies e and fails the test on refusal.
func mustApply(t tb, st *metapb.State, e *metapb.Entry, now int64) (*metapb.State, *metapb.Result, []Effect) {
	t.Helper()
	next, res, eff, err := Apply(st, e, now)
	if err != nil {
		t.Fatalf("apply %s: %v", kindName(e), err)
	}
	if res.GetCode() != metapb.Code_CODE_OK {
		t.Fatalf("apply %s: result %v without error", kindName(e), res)
	}
	return next, res, eff
}

// join creates a token and joins a node with it; active says whether to
// activate it too. It returns the node id.
func join(t tb, st *metapb.State, name, zone string, active bool) (*metapb.State, uint64) {
	t.Helper()
	st, _, _ = mustApply(t, st, NewCreateToken("tok-"+name, HashSecret("secret-"+name), t0+hour), t0)
	st, res, _ := mustApply(t, st, NewBeginJoin("tok-"+name, HashSecret("secret-"+name), key(name), name+":7000", name+":8000", zone), t0)
	if active {
		st, _, _ = mustApply(t, st, NewActivateNode(res.GetNodeId()), t0)
	}
	return st, res.GetNodeId()
}

// base is a bootstrapped cluster with node 1 (founder, z1), nodes 2 (z2)
// and 3 (z3) active, node 4 joining, a registered token "free" and a
// revoked token "gone".
func base(t tb) *metapb.State {
	t.Helper()
	st, _, _ := mustApply(t, nil, bootstrapEntry(), t0)
	st, _ = join(t, st, "n2", "z2", true)
	st, _ = join(t, st, "n3", "z3", true)
	st, _ = join(t, st, "n4", "z1", false)
	st, _, _ = mustApply(t, st, NewCreateToken("free", HashSecret("s-free"), t0+hour), t0)
	st, _, _ = mustApply(t, st, NewCreateToken("gone", HashSecret("s-gone"), t0+hour), t0)
	st, _, _ = mustApply(t, st, NewRevokeToken("gone"), t0)
	return st
}

// wantCode checks err's code, its sentinel and the result's code.
func wantCode(t tb, err error, res *metapb.Result, code metapb.Code) {
	t.Helper()
	if got := codeOf(err); got != code {
		t.Fatalf("code %v (%v), want %v", got, err, code)
	}
	if res.GetCode() != code {
		t.Fatalf("result code %v, want %v", res.GetCode(), code)
	}
	if code == metapb.Code_CODE_OK {
		return
	}
	var me *Error
	if !errors.As(err, &me) || me.Code != code {
		t.Fatalf("%v is not an *Error with code %v", err, code)
	}
	if !errors.Is(err, sentinels[code]) {
		t.Fatalf("%v is not its sentinel %v", err, sentinels[code])
	}
	if !errors.Is(ResultError(res), sentinels[code]) {
		t.Fatalf("ResultError(%v) is not its sentinel", res)
	}
}

var sentinels = map[metapb.Code]error{
	metapb.Code_CODE_INTERNAL:            ErrInternal,
	metapb.Code_CODE_INVALID_ARGUMENT:    ErrInvalidArgument,
	metapb.Code_CODE_UNSUPPORTED_VERSION: ErrUnsupportedVersion,
	metapb.Code_CODE_TOO_LARGE:           ErrTooLarge,
	metapb.Code_CODE_MALFORMED:           ErrMalformed,
	metapb.Code_CODE_INVALID_STATE:       ErrInvalidState,
	metapb.Code_CODE_NOT_BOOTSTRAPPED:    ErrNotBootstrapped,
	metapb.Code_CODE_CLUSTER_MISMATCH:    ErrClusterMismatch,
	metapb.Code_CODE_UNKNOWN_TOKEN:       ErrUnknownToken,
	metapb.Code_CODE_BAD_SECRET:          ErrBadSecret,
	metapb.Code_CODE_TOKEN_EXPIRED:       ErrTokenExpired,
	metapb.Code_CODE_TOKEN_CONSUMED:      ErrTokenConsumed,
	metapb.Code_CODE_TOKEN_REVOKED:       ErrTokenRevoked,
	metapb.Code_CODE_TOKEN_BOUND:         ErrTokenBound,
	metapb.Code_CODE_TOKEN_EXISTS:        ErrTokenExists,
	metapb.Code_CODE_UNKNOWN_NODE:        ErrUnknownNode,
	metapb.Code_CODE_NODE_NOT_ACTIVE:     ErrNodeNotActive,
	metapb.Code_CODE_BAD_TRANSITION:      ErrBadTransition,
	metapb.Code_CODE_NODE_HAS_REPLICAS:   ErrNodeHasReplicas,
	metapb.Code_CODE_UNKNOWN_GROUP:       ErrUnknownGroup,
	metapb.Code_CODE_UNKNOWN_REPLICA:     ErrUnknownReplica,
	metapb.Code_CODE_REPLICA_EXISTS:      ErrReplicaExists,
	metapb.Code_CODE_LAST_VOTER:          ErrLastVoter,
	metapb.Code_CODE_OUT_OF_RANGE:        ErrOutOfRange,
	metapb.Code_CODE_BAD_EPOCH:           ErrBadEpoch,
	metapb.Code_CODE_BAD_CHECKSUM:        ErrBadChecksum,
	metapb.Code_CODE_CHECKPOINT_CONFLICT: ErrCheckpointConflict,
	metapb.Code_CODE_NESTED_BATCH:        ErrNestedBatch,
	metapb.Code_CODE_CONFLICT:            ErrConflict,
}

// encoded returns st's deterministic encoding, failing the test if it does
// not encode or does not decode back.
func encoded(t tb, st *metapb.State) []byte {
	t.Helper()
	b, err := EncodeState(st)
	if err != nil {
		t.Fatalf("%v", err)
	}
	back, err := DecodeState(b)
	if err != nil {
		t.Fatalf("state does not decode back: %v", err)
	}
	if !proto.Equal(back, st) && !(len(b) == 0 && proto.Size(st) == 0) {
		t.Fatalf("state changed through encode/decode")
	}
	return b
}
