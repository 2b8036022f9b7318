package tcpnet

import (
	"sync"
	"sync/atomic"
)

// Stats are the endpoint's counters, named as quicnet's.
type Stats struct {
	ConnsDialed       atomic.Uint64 // connections this node opened and completed the hello on
	ConnsAccepted     atomic.Uint64 // connections peers opened and this node accepted
	DialFailures      atomic.Uint64
	BatchesSent       atomic.Uint64
	BatchesReceived   atomic.Uint64
	BatchesDropped    atomic.Uint64 // queue full or peer unreachable
	FrameErrors       atomic.Uint64 // malformed, oversized or corrupt frames received
	RPCsServed        atomic.Uint64
	RPCsCalled        atomic.Uint64
	SnapshotsSent     atomic.Uint64
	SnapshotsReceived atomic.Uint64

	mu       sync.Mutex
	refusals map[string]uint64
}

// Refusals returns how many handshakes were refused, by reason, counting
// both connections this node refused and peers that refused this node's.
func (s *Stats) Refusals() map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]uint64, len(s.refusals))
	for k, v := range s.refusals {
		out[k] = v
	}
	return out
}

func (s *Stats) refuse(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refusals == nil {
		s.refusals = map[string]uint64{}
	}
	s.refusals[reason]++
}
