package tcpnet

import (
	"testing"

	"github.com/nodedb/nodedb-cluster/internal/transport/transporttest"
)

// TestPathMetricsPerPeer checks the TCP path metrics of the peer a node
// sends Raft batches to, as quicnet's test of the same name does for QUIC.
func TestPathMetricsPerPeer(t *testing.T) {
	reg, e1, r2 := metricsPair(t)
	transporttest.CheckPathMetrics(t, e1, r2.count, reg, transporttest.PathMetricNames{Sent: "nodedb_transport_tcp_segments_sent_total", Lost: "nodedb_transport_tcp_segments_retransmitted_total",
		SmoothedRTT: "nodedb_transport_tcp_smoothed_rtt_seconds", CongestionWindow: "nodedb_transport_tcp_congestion_window_bytes"})
}
