package quicnet

import (
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// PeerState is what the endpoint knows about its link to a node: a hint for
// operators (liveness), never a membership decision.
type PeerState int

const (
	// PeerUnknown: no connection and no failed dial (or an unknown node).
	PeerUnknown PeerState = iota
	// PeerConnected: a connection to the node is open.
	PeerConnected
	// PeerBackoff: the last dial failed and the endpoint waits to retry.
	PeerBackoff
)

// PeerState reports the link to node id.
func (e *Endpoint) PeerState(id ids.NodeID) PeerState {
	p := e.peer(id)
	if p == nil {
		return PeerUnknown
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.sess != nil && !p.sess.closed():
		return PeerConnected
	case time.Now().Before(p.nextDial):
		return PeerBackoff
	}
	return PeerUnknown
}
