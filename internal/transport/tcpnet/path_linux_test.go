package tcpnet

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nodedb/nodedb-cluster/internal/transport/transporttest"
)

// TestPathMetricsPerPeer checks the TCP path metrics of the peer a node
// sends Raft batches to, as quicnet's test of the same name does for QUIC.
func TestPathMetricsPerPeer(t *testing.T) {
	p := newPKI(t)
	reg := prometheus.NewRegistry()
	r2 := &recorder{}
	e1 := p.endpoint(t, 1, &recorder{}, func(c *Config) { c.Registerer = reg })
	e2 := p.endpoint(t, 2, r2, nil)
	connect(e1, e2)
	sendUntil(t, e1, 2, r2, 1, heartbeat(7, 1, 2, 0))
	transporttest.CheckPathMetrics(t, e1, r2.count, reg, transporttest.PathMetricNames{Sent: "nodedb_transport_tcp_segments_sent_total", Lost: "nodedb_transport_tcp_segments_retransmitted_total",
		SmoothedRTT: "nodedb_transport_tcp_smoothed_rtt_seconds", CongestionWindow: "nodedb_transport_tcp_congestion_window_bytes"})
}
