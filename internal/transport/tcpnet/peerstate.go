package tcpnet

import (
	"net"

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

// raftConns returns the socket of this node's outgoing Raft connection to
// each peer that has one.
func (e *Endpoint) raftConns() map[ids.NodeID]net.Conn {
	e.mu.Lock()
	peers := make([]*peer, 0, len(e.peers))
	for _, p := range e.peers {
		peers = append(peers, p)
	}
	e.mu.Unlock()
	out := make(map[ids.NodeID]net.Conn, len(peers))
	for _, p := range peers {
		p.mu.Lock()
		if p.raft != nil {
			out[p.id] = p.raft.raw
		}
		p.mu.Unlock()
	}
	return out
}
