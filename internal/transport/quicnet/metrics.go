package quicnet

import (
	"strconv"
	"sync/atomic"

	"github.com/nodedb/nodedb-cluster/internal/transport"
	"github.com/prometheus/client_golang/prometheus"
)

// Stats are the endpoint's counters: the transports' common ones and the
// connections QUIC replaces. Tests read them directly; the same values are
// exported as Prometheus metrics when a Registerer is configured.
type Stats struct {
	transport.Stats
	ConnsReplaced atomic.Uint64 // duplicate connections closed in favour of another
	SendsRefused  atomic.Uint64 // UDP sends the local kernel refused (EPERM, ENOBUFS), taken as lost packets
}

func (e *Endpoint) registerMetrics(reg prometheus.Registerer) {
	e.stats.Register(reg, e.cfg.Logger,
		transport.Counter("connections_replaced_total", "Duplicate connections closed in favour of another.", &e.stats.ConnsReplaced),
		transport.Counter("udp_sends_refused_total", "UDP sends the local kernel refused (EPERM: a firewall or a full conntrack table; ENOBUFS), taken as lost packets.", &e.stats.SendsRefused),
		transport.PeersConnected(e.connectedPeers),
		pathCollector{e})
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
