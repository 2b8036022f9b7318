package quicnet

import (
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Stats are the endpoint's counters. Tests read them directly; the same
// values are exported as Prometheus metrics when a Registerer is configured.
type Stats struct {
	ConnsDialed       atomic.Uint64 // connections this node opened and completed the hello on
	ConnsAccepted     atomic.Uint64 // connections peers opened and this node accepted
	ConnsReplaced     atomic.Uint64 // duplicate connections closed in favour of another
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

func (s *Stats) refuse(reason string, vec *prometheus.CounterVec) {
	s.mu.Lock()
	if s.refusals == nil {
		s.refusals = map[string]uint64{}
	}
	s.refusals[reason]++
	s.mu.Unlock()
	if vec != nil {
		vec.WithLabelValues(reason).Inc()
	}
}

func (e *Endpoint) registerMetrics(reg prometheus.Registerer) {
	if reg == nil {
		return
	}
	e.refusalVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "nodedb", Subsystem: "transport", Name: "handshake_refusals_total",
		Help: "Inter-node connections refused during the TLS handshake or the hello, by reason.",
	}, []string{"reason"})
	counter := func(name, help string, v *atomic.Uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "nodedb", Subsystem: "transport", Name: name, Help: help,
		}, func() float64 { return float64(v.Load()) })
	}
	s := &e.stats
	cs := []prometheus.Collector{
		e.refusalVec,
		counter("connections_dialed_total", "Connections this node opened to peers.", &s.ConnsDialed),
		counter("connections_accepted_total", "Connections peers opened to this node.", &s.ConnsAccepted),
		counter("connections_replaced_total", "Duplicate connections closed in favour of another.", &s.ConnsReplaced),
		counter("dial_failures_total", "Failed attempts to connect to a peer.", &s.DialFailures),
		counter("raft_batches_sent_total", "Raft message batches written to peers.", &s.BatchesSent),
		counter("raft_batches_received_total", "Raft message batches received from peers.", &s.BatchesReceived),
		counter("raft_batches_dropped_total", "Raft message batches dropped (queue full, unreachable).", &s.BatchesDropped),
		counter("frame_errors_total", "Malformed, oversized or corrupt frames received.", &s.FrameErrors),
		counter("rpcs_served_total", "RPC requests served.", &s.RPCsServed),
		counter("rpcs_called_total", "RPC requests sent.", &s.RPCsCalled),
		counter("snapshots_sent_total", "Snapshot streams sent.", &s.SnapshotsSent),
		counter("snapshots_received_total", "Snapshot streams received.", &s.SnapshotsReceived),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "nodedb", Subsystem: "transport", Name: "peers_connected",
			Help: "Peers with an established connection.",
		}, func() float64 { return float64(e.connectedPeers()) }),
		pathCollector{e},
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			e.cfg.Logger.Warn("register transport metric", "err", err)
		}
	}
}

// pathCollector exports what QUIC knows of the path to each connected peer:
// packets lost and retransmitted show up here before they show up as Raft
// latency, and the congestion window shows a sender held back. The counters
// are the current connection's and start over when it is replaced.
type pathCollector struct{ e *Endpoint }

var (
	descPacketsSent = prometheus.NewDesc("nodedb_transport_quic_packets_sent_total",
		"QUIC packets sent to the peer on the current connection.", []string{"peer"}, nil)
	descPacketsLost = prometheus.NewDesc("nodedb_transport_quic_packets_lost_total",
		"QUIC packets to the peer declared lost on the current connection.", []string{"peer"}, nil)
	descSmoothedRTT = prometheus.NewDesc("nodedb_transport_quic_smoothed_rtt_seconds",
		"QUIC's smoothed round-trip time estimate to the peer.", []string{"peer"}, nil)
	descCongestionWindow = prometheus.NewDesc("nodedb_transport_quic_congestion_window_bytes",
		"QUIC's congestion window towards the peer.", []string{"peer"}, nil)
)

func (c pathCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descPacketsSent
	ch <- descPacketsLost
	ch <- descSmoothedRTT
	ch <- descCongestionWindow
}

func (c pathCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.e.sessions() {
		st := s.conn.ConnectionStats()
		peer := strconv.FormatUint(uint64(s.peer), 10)
		ch <- prometheus.MustNewConstMetric(descPacketsSent, prometheus.CounterValue, float64(st.PacketsSent), peer)
		ch <- prometheus.MustNewConstMetric(descPacketsLost, prometheus.CounterValue, float64(st.PacketsLost), peer)
		ch <- prometheus.MustNewConstMetric(descSmoothedRTT, prometheus.GaugeValue, st.SmoothedRTT.Seconds(), peer)
		ch <- prometheus.MustNewConstMetric(descCongestionWindow, prometheus.GaugeValue, float64(st.CongestionWindow), peer)
	}
}
