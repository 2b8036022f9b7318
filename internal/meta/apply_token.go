package meta

import (
	"bytes"
	"crypto/subtle"

	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

// createToken registers a join token by the hash of its secret. Creating
// the same token again (same id, hash and expiry) is a no-op, so a timed-out
// proposal may be retried; another token under a taken id is refused.
func (a *applier) createToken(x *metapb.CreateToken) error {
	id := x.GetId()
	if t := a.st.Tokens[id]; t != nil {
		if bytes.Equal(t.GetSecretHash(), x.GetSecretHash()) && t.GetExpiresUnixNanos() == x.GetExpiresUnixNanos() {
			return nil
		}
		return errorf(metapb.Code_CODE_TOKEN_EXISTS, "create token %q: a different token has this id", id)
	}
	if a.now > x.GetExpiresUnixNanos() {
		return errorf(metapb.Code_CODE_TOKEN_EXPIRED, "create token %q: it expires before it is created", id)
	}
	a.st.Tokens[id] = &metapb.Token{
		Id:               id,
		SecretHash:       bytes.Clone(x.GetSecretHash()),
		State:            metapb.TokenState_TOKEN_STATE_REGISTERED,
		CreatedUnixNanos: a.now,
		ExpiresUnixNanos: x.GetExpiresUnixNanos(),
	}
	a.emit(TokenChanged{Token: id, State: metapb.TokenState_TOKEN_STATE_REGISTERED})
	return nil
}

// revokeToken stops a token from admitting anyone. A registered or in-flight
// token becomes REVOKED (an in-flight joiner then cannot be activated);
// revoking twice is a no-op; a consumed token has nothing left to revoke.
func (a *applier) revokeToken(x *metapb.RevokeToken) error {
	id := x.GetId()
	t := a.st.Tokens[id]
	if t == nil {
		return errorf(metapb.Code_CODE_UNKNOWN_TOKEN, "revoke token %q: no such token", id)
	}
	switch t.GetState() {
	case metapb.TokenState_TOKEN_STATE_REVOKED:
		return nil
	case metapb.TokenState_TOKEN_STATE_CONSUMED:
		return errorf(metapb.Code_CODE_TOKEN_CONSUMED, "revoke token %q: already used by node %d", id, t.GetNodeId())
	}
	t.State = metapb.TokenState_TOKEN_STATE_REVOKED
	a.emit(TokenChanged{Token: id, State: t.State})
	return nil
}

// beginJoin admits a joiner: it checks the token's secret, binds the token
// to the joiner's public key, allocates the node id and adds the node as
// JOINING. The result carries the node id.
//
// A joiner that retries (its answer was lost) presents the same key, and
// gets the same node id back, whatever the token's expiry: the binding, not
// the clock, decides. Anyone else presenting the token afterwards is
// refused, so a token admits exactly one node.
func (a *applier) beginJoin(x *metapb.BeginJoin) error {
	id := x.GetTokenId()
	t := a.st.Tokens[id]
	if t == nil {
		return errorf(metapb.Code_CODE_UNKNOWN_TOKEN, "begin join: no token %q", id)
	}
	// Constant time: the comparison's duration must not tell an attacker
	// how many leading bytes of a guessed hash were right.
	if subtle.ConstantTimeCompare(t.GetSecretHash(), x.GetSecretHash()) != 1 {
		return errorf(metapb.Code_CODE_BAD_SECRET, "begin join: token %q: wrong secret", id)
	}
	sameKey := subtle.ConstantTimeCompare(t.GetBoundKeyHash(), x.GetKeyHash()) == 1
	switch t.GetState() {
	case metapb.TokenState_TOKEN_STATE_IN_FLIGHT, metapb.TokenState_TOKEN_STATE_CONSUMED:
		if sameKey {
			a.res.NodeId = t.GetNodeId()
			return nil
		}
		if t.GetState() == metapb.TokenState_TOKEN_STATE_CONSUMED {
			return errorf(metapb.Code_CODE_TOKEN_CONSUMED, "begin join: token %q was used by node %d", id, t.GetNodeId())
		}
		return errorf(metapb.Code_CODE_TOKEN_BOUND, "begin join: token %q is bound to another joiner's key", id)
	case metapb.TokenState_TOKEN_STATE_REVOKED:
		return errorf(metapb.Code_CODE_TOKEN_REVOKED, "begin join: token %q was revoked", id)
	case metapb.TokenState_TOKEN_STATE_REGISTERED:
	default:
		return errorf(metapb.Code_CODE_INVALID_STATE, "begin join: token %q is in state %d", id, int32(t.GetState()))
	}
	if TokenExpired(t, a.now) {
		return errorf(metapb.Code_CODE_TOKEN_EXPIRED, "begin join: token %q expired", id)
	}
	node, err := a.allocNodeID()
	if err != nil {
		return wrap(err, "begin join")
	}
	t.State = metapb.TokenState_TOKEN_STATE_IN_FLIGHT
	t.BoundKeyHash = bytes.Clone(x.GetKeyHash())
	t.NodeId = node
	a.st.Nodes[node] = &metapb.Node{
		Id:              node,
		PeerAddr:        x.GetPeerAddr(),
		ApiAddr:         x.GetApiAddr(),
		Zone:            x.GetZone(),
		State:           metapb.NodeState_NODE_STATE_JOINING,
		JoinedUnixNanos: a.now,
		JoinToken:       id,
	}
	a.res.NodeId = node
	a.emit(TokenChanged{Token: id, State: t.State})
	a.emit(NodeAdded{Node: node, State: metapb.NodeState_NODE_STATE_JOINING})
	return nil
}

// allocNodeID hands out next_node_id and advances it: node ids are never
// reused, so a wiped node that joins again is a new node.
func (a *applier) allocNodeID() (uint64, error) {
	id := max(a.st.GetNextNodeId(), FounderNode+1)
	for a.st.Nodes[id] != nil && id != ^uint64(0) {
		id++ // only for a state whose counter fell behind; Apply keeps it ahead
	}
	if id == ^uint64(0) {
		return 0, errorf(metapb.Code_CODE_INVALID_STATE, "node ids exhausted")
	}
	a.st.NextNodeId = id + 1
	return id, nil
}
