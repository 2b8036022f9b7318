package transport

import (
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Stats are the counters every stream transport keeps (quicnet, tcpnet).
// Tests read them directly; Register exports the same values as
// Prometheus metrics, under the same names whichever transport a node runs.
type Stats struct {
	ConnsDialed       atomic.Uint64 // connections this node opened and completed the hello on
	ConnsAccepted     atomic.Uint64 // connections peers opened and this node accepted
	DialFailures      atomic.Uint64
	BatchesSent       atomic.Uint64
	BatchesReceived   atomic.Uint64
	BatchesDropped    atomic.Uint64 // queue full, peer unreachable, or filtered
	FrameErrors       atomic.Uint64 // malformed, oversized or corrupt frames received
	RPCsServed        atomic.Uint64
	RPCsCalled        atomic.Uint64
	SnapshotsSent     atomic.Uint64
	SnapshotsReceived atomic.Uint64

	mu       sync.Mutex
	refusals map[string]uint64
	vec      *prometheus.CounterVec // set by Register
}

// Refusals returns how many handshakes were refused, by reason
// ("unknown_authority", "expired", "no_certificate", "node_id_mismatch",
// "version", "cluster_mismatch", "malformed", ...), counting both connections
// this node refused and peers that refused this node's.
func (s *Stats) Refusals() map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]uint64, len(s.refusals))
	for k, v := range s.refusals {
		out[k] = v
	}
	return out
}

// Refuse counts one refused handshake.
func (s *Stats) Refuse(reason string) {
	s.mu.Lock()
	if s.refusals == nil {
		s.refusals = map[string]uint64{}
	}
	s.refusals[reason]++
	vec := s.vec
	s.mu.Unlock()
	if vec != nil {
		vec.WithLabelValues(reason).Inc()
	}
}

// Register exports the counters on reg (nil: nowhere) as
// nodedb_transport_*, with extra collectors of the transport's own.
func (s *Stats) Register(reg prometheus.Registerer, log *slog.Logger, extra ...prometheus.Collector) {
	if reg == nil {
		return
	}
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "nodedb", Subsystem: "transport", Name: "handshake_refusals_total",
		Help: "Inter-node connections refused during the TLS handshake or the hello, by reason.",
	}, []string{"reason"})
	s.mu.Lock()
	s.vec = vec
	s.mu.Unlock()
	cs := append([]prometheus.Collector{
		vec,
		Counter("connections_dialed_total", "Connections this node opened to peers.", &s.ConnsDialed),
		Counter("connections_accepted_total", "Connections peers opened to this node.", &s.ConnsAccepted),
		Counter("dial_failures_total", "Failed attempts to connect to a peer.", &s.DialFailures),
		Counter("raft_batches_sent_total", "Raft message batches written to peers.", &s.BatchesSent),
		Counter("raft_batches_received_total", "Raft message batches received from peers.", &s.BatchesReceived),
		Counter("raft_batches_dropped_total", "Raft message batches dropped (queue full, unreachable).", &s.BatchesDropped),
		Counter("frame_errors_total", "Malformed, oversized or corrupt frames received.", &s.FrameErrors),
		Counter("rpcs_served_total", "RPC requests served.", &s.RPCsServed),
		Counter("rpcs_called_total", "RPC requests sent.", &s.RPCsCalled),
		Counter("snapshots_sent_total", "Snapshot streams sent.", &s.SnapshotsSent),
		Counter("snapshots_received_total", "Snapshot streams received.", &s.SnapshotsReceived),
	}, extra...)
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			log.Warn("register transport metric", "err", err)
		}
	}
}

// Counter is nodedb_transport_<name>, read from v.
func Counter(name, help string, v *atomic.Uint64) prometheus.Collector {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: "nodedb", Subsystem: "transport", Name: name, Help: help,
	}, func() float64 { return float64(v.Load()) })
}

// PeersConnected is nodedb_transport_peers_connected, read from n.
func PeersConnected(n func() int) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "nodedb", Subsystem: "transport", Name: "peers_connected",
		Help: "Peers with an established connection.",
	}, func() float64 { return float64(n()) })
}
