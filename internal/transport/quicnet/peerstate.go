package quicnet

import (
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// PeerState reports the link to node id.
func (e *Endpoint) PeerState(id ids.NodeID) transport.PeerState {
	p := e.peer(id)
	if p == nil {
		return transport.PeerUnknown
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return transport.LinkState(p.sess != nil && !p.sess.closed(), p.nextDial)
}
