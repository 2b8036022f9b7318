package tcpnet

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nodedb/nodedb-cluster/internal/transport"
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
	for i := range 200 {
		if err := e1.Send(2, []transport.Message{heartbeat(7, 1, 2, uint64(i))}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "200 more messages", func() bool { return r2.count() >= 201 })
	metric := func(name string) float64 { return transporttest.PeerMetric(t, reg, name, "2") }
	if v := metric("nodedb_transport_tcp_segments_sent_total"); v < 1 {
		t.Errorf("segments sent = %v, want at least one", v)
	}
	if v := metric("nodedb_transport_tcp_segments_retransmitted_total"); v != 0 {
		t.Errorf("segments retransmitted on loopback = %v, want 0", v)
	}
	if v := metric("nodedb_transport_tcp_smoothed_rtt_seconds"); v <= 0 || v > 1 {
		t.Errorf("smoothed RTT = %vs, want a loopback figure", v)
	}
	if v := metric("nodedb_transport_tcp_congestion_window_bytes"); v <= 0 {
		t.Errorf("congestion window = %v bytes", v)
	}
}
