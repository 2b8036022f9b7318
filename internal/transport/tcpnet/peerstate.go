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

// connectedPeers counts the peers this node has a connection to.
func (e *Endpoint) connectedPeers() int {
	e.mu.Lock()
	peers := make([]ids.NodeID, 0, len(e.peers))
	for id := range e.peers {
		peers = append(peers, id)
	}
	e.mu.Unlock()
	n := 0
	for _, id := range peers {
		if e.PeerState(id) == transport.PeerConnected {
			n++
		}
	}
	return n
}
