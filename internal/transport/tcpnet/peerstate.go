package tcpnet

import (
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// PeerState reports the link to node id: connected while this node's Raft or
// RPC connection to it is open.
func (e *Endpoint) PeerState(id ids.NodeID) transport.PeerState {
	p := e.peer(id)
	if p == nil {
		return transport.PeerUnknown
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return transport.LinkState(p.raft != nil || p.rpc != nil && p.rpc.Err() == nil, p.nextDial)
}
