package transport

import "time"

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

// LinkState is the state of a link that is connected or not, and whose next
// dial may not come before nextDial.
func LinkState(connected bool, nextDial time.Time) PeerState {
	switch {
	case connected:
		return PeerConnected
	case time.Now().Before(nextDial):
		return PeerBackoff
	}
	return PeerUnknown
}
