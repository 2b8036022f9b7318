package meta

import (
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

// activateNode marks a joined node ACTIVE and consumes its token: from now
// on placement may give it replicas. Activating an active node is a no-op
// (the joiner retries until it sees itself active).
func (a *applier) activateNode(id uint64) error {
	n := a.st.Nodes[id]
	if n == nil {
		return errorf(metapb.Code_CODE_UNKNOWN_NODE, "activate node %d: no such node", id)
	}
	switch n.GetState() {
	case metapb.NodeState_NODE_STATE_ACTIVE:
		return nil
	case metapb.NodeState_NODE_STATE_JOINING:
	default:
		return errorf(metapb.Code_CODE_BAD_TRANSITION, "activate node %d: it is %s", id, NodeStateName(n.GetState()))
	}
	if t := a.st.Tokens[n.GetJoinToken()]; t != nil && t.GetNodeId() == id {
		switch t.GetState() {
		case metapb.TokenState_TOKEN_STATE_REVOKED:
			return errorf(metapb.Code_CODE_TOKEN_REVOKED, "activate node %d: its token %q was revoked", id, t.GetId())
		case metapb.TokenState_TOKEN_STATE_IN_FLIGHT:
			t.State = metapb.TokenState_TOKEN_STATE_CONSUMED
			a.emit(TokenChanged{Token: t.GetId(), State: t.State})
		}
	}
	a.setState(n, metapb.NodeState_NODE_STATE_ACTIVE)
	return nil
}

// setNodeState moves a node through its lifecycle:
//
//	JOINING → ACTIVE (as ActivateNode) | DECOMMISSIONED (an abandoned join)
//	ACTIVE ⇄ DRAINING
//	ACTIVE, DRAINING → DECOMMISSIONED, once the node holds no replica
//
// DECOMMISSIONED is final: the id is never used again. Setting the current
// state is a no-op.
func (a *applier) setNodeState(x *metapb.SetNodeState) error {
	id, to := x.GetNodeId(), x.GetState()
	n := a.st.Nodes[id]
	if n == nil {
		return errorf(metapb.Code_CODE_UNKNOWN_NODE, "set node state: no node %d", id)
	}
	from := n.GetState()
	if from == to {
		return nil
	}
	bad := errorf(metapb.Code_CODE_BAD_TRANSITION, "set node state: node %d cannot go from %s to %s", id, NodeStateName(from), NodeStateName(to))
	switch {
	case from == metapb.NodeState_NODE_STATE_DECOMMISSIONED, to == metapb.NodeState_NODE_STATE_JOINING:
		return bad
	case to == metapb.NodeState_NODE_STATE_ACTIVE && from == metapb.NodeState_NODE_STATE_JOINING:
		return a.activateNode(id)
	case to == metapb.NodeState_NODE_STATE_DRAINING && from != metapb.NodeState_NODE_STATE_ACTIVE:
		return bad
	case to == metapb.NodeState_NODE_STATE_DECOMMISSIONED:
		if gs := GroupsOfNode(a.st, id); len(gs) > 0 {
			return errorf(metapb.Code_CODE_NODE_HAS_REPLICAS, "set node state: node %d still holds replicas of %d groups (first: group %d); move them first", id, len(gs), gs[0])
		}
	}
	a.setState(n, to)
	return nil
}

func (a *applier) setState(n *metapb.Node, to metapb.NodeState) {
	from := n.GetState()
	n.State = to
	a.emit(NodeStateChanged{Node: n.GetId(), From: from, To: to})
}

// setNodeAddrs records a node's new advertised addresses (it moved hosts or
// ports but kept its data dir and identity).
func (a *applier) setNodeAddrs(x *metapb.SetNodeAddrs) error {
	id := x.GetNodeId()
	n := a.st.Nodes[id]
	if n == nil {
		return errorf(metapb.Code_CODE_UNKNOWN_NODE, "set node addresses: no node %d", id)
	}
	if n.GetPeerAddr() == x.GetPeerAddr() && n.GetApiAddr() == x.GetApiAddr() {
		return nil
	}
	n.PeerAddr, n.ApiAddr = x.GetPeerAddr(), x.GetApiAddr()
	a.emit(NodeAddrsChanged{Node: id, PeerAddr: n.PeerAddr, APIAddr: n.ApiAddr})
	return nil
}

// NodeStateName is a node state's short name ("draining"), as messages
// and status output spell it.
func NodeStateName(s metapb.NodeState) string {
	switch s {
	case metapb.NodeState_NODE_STATE_JOINING:
		return "joining"
	case metapb.NodeState_NODE_STATE_ACTIVE:
		return "active"
	case metapb.NodeState_NODE_STATE_DRAINING:
		return "draining"
	case metapb.NodeState_NODE_STATE_DECOMMISSIONED:
		return "decommissioned"
	}
	return s.String()
}
