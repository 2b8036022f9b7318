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
	n := 0
	for _, p := range e.peerList() {
		if e.PeerState(p.id) == transport.PeerConnected {
			n++
		}
	}
	return n
}

// raftConns returns the socket of this node's outgoing Raft connection to
// each peer that has one.
func (e *Endpoint) raftConns() map[ids.NodeID]net.Conn {
	out := map[ids.NodeID]net.Conn{}
	for _, p := range e.peerList() {
		p.mu.Lock()
		if p.raft != nil {
			out[p.id] = p.raft.raw
		}
		p.mu.Unlock()
	}
	return out
}

// peerList returns the endpoint's peers, taken under its lock.
func (e *Endpoint) peerList() []*peer {
	e.mu.Lock()
	defer e.mu.Unlock()
	peers := make([]*peer, 0, len(e.peers))
	for _, p := range e.peers {
		peers = append(peers, p)
	}
	return peers
}
