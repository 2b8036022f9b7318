package transport

// PeerState is what an endpoint knows about its link to a node: a hint for
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
