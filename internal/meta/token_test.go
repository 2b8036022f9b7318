package meta

import (
	"errors"
	"testing"

	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

// The whole life of a join token: registered, bound to one joiner's key
// (retries by that joiner are answered the same, anyone else refused),
// consumed when the node becomes active.
func TestTokenLifecycle(t *testing.T) {
	st := base(t)
	sec := HashSecret("s-free")
	st, _, _ = mustApply(t, st, NewCreateToken("t", sec, t0+hour), t0)
	begin := func(who string, now int64) (*metapb.State, *metapb.Result, error) {
		next, res, _, err := Apply(st, NewBeginJoin("t", sec, key(who), who+":1", "", ""), now)
		return next, res, err
	}

	st, res, err := begin("alice", t0+1)
	if err != nil {
		t.Fatal(err)
	}
	id := res.GetNodeId()
	if id != 5 || st.GetTokens()["t"].GetState() != metapb.TokenState_TOKEN_STATE_IN_FLIGHT {
		t.Fatalf("node %d, token %v", id, st.GetTokens()["t"])
	}

	// Alice's answer was lost; she retries, after the token expired.
	again, res, err := begin("alice", t0+2*hour)
	if err != nil || res.GetNodeId() != id || len(again.GetNodes()) != len(st.GetNodes()) {
		t.Fatalf("retry: %v, node %d", err, res.GetNodeId())
	}
	st = again

	if _, _, err := begin("mallory", t0+2); !errors.Is(err, ErrTokenBound) {
		t.Fatalf("other key while in flight: %v", err)
	}

	st, _, _ = mustApply(t, st, NewActivateNode(id), t0+3)
	if st.GetTokens()["t"].GetState() != metapb.TokenState_TOKEN_STATE_CONSUMED || st.GetNodes()[id].GetState() != metapb.NodeState_NODE_STATE_ACTIVE {
		t.Fatalf("after activation: token %v, node %v", st.GetTokens()["t"], st.GetNodes()[id])
	}
	if _, _, err := begin("mallory", t0+4); !errors.Is(err, ErrTokenConsumed) {
		t.Fatalf("other key after activation: %v", err)
	}
	if _, res, err := begin("alice", t0+4); err != nil || res.GetNodeId() != id {
		t.Fatalf("retry after activation: %v, node %d", err, res.GetNodeId())
	}
	// Activation is idempotent too.
	if _, _, _, err := Apply(st, NewActivateNode(id), t0+5); err != nil {
		t.Fatal(err)
	}
}

func TestTokenRefusals(t *testing.T) {
	st := base(t)
	bj := func(tok, secret string, now int64) error {
		_, _, _, err := Apply(st, NewBeginJoin(tok, HashSecret(secret), key("eve"), "eve:1", "", ""), now)
		return err
	}
	for _, c := range []struct {
		name        string
		tok, secret string
		now         int64
		want        error
	}{
		{"expired", "free", "s-free", t0 + hour + 1, ErrTokenExpired},
		{"revoked", "gone", "s-gone", t0, ErrTokenRevoked},
		{"forged secret", "free", "s-fre", t0, ErrBadSecret},
		{"forged secret on expired token", "free", "x", t0 + 2*hour, ErrBadSecret},
		{"unknown", "who", "s-free", t0, ErrUnknownToken},
	} {
		if err := bj(c.tok, c.secret, c.now); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
}

// Node ids are allocated, never reused: two joiners get two ids, and a
// node joining after another was decommissioned gets a new one.
func TestNodeIDsNeverReused(t *testing.T) {
	st := base(t)
	st, _, _ = mustApply(t, st, NewCreateToken("x", HashSecret("sx"), t0+hour), t0)
	st, _, _ = mustApply(t, st, NewCreateToken("y", HashSecret("sy"), t0+hour), t0)
	st, rx, _ := mustApply(t, st, NewBeginJoin("x", HashSecret("sx"), key("x"), "x:1", "", ""), t0)
	st, ry, _ := mustApply(t, st, NewBeginJoin("y", HashSecret("sy"), key("y"), "y:1", "", ""), t0)
	if rx.GetNodeId() == ry.GetNodeId() {
		t.Fatalf("both joiners got node %d", rx.GetNodeId())
	}
	seen := map[uint64]bool{}
	for id := range st.GetNodes() {
		seen[id] = true
	}
	next := st.GetNextNodeId()
	st, _, _ = mustApply(t, st, NewSetNodeState(ry.GetNodeId(), metapb.NodeState_NODE_STATE_DECOMMISSIONED), t0)
	for i := range 3 {
		name := string(rune('a' + i))
		var id uint64
		st, id = join(t, st, name, "", true)
		if seen[id] || id < next {
			t.Fatalf("node id %d reused (next was %d)", id, next)
		}
		seen[id] = true
		if st.GetNextNodeId() <= next {
			t.Fatalf("next node id went from %d to %d", next, st.GetNextNodeId())
		}
		next = st.GetNextNodeId()
	}
}
