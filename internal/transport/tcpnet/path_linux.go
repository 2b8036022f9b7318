package tcpnet

import (
	"net"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// pathCollector exports what the kernel knows of the TCP path to each
// peer, from TCP_INFO of this node's outgoing Raft connection to it (the
// connection its Raft batches leave on): retransmitted segments show loss
// on the link before it shows as Raft latency, the smoothed round trip and
// the congestion window show a slow or held-back sender. The counterpart
// of quicnet's nodedb_transport_quic_* path metrics; the counters are the
// current connection's and start over when it is replaced.
type pathCollector struct{ e *Endpoint }

var (
	descSegmentsSent = prometheus.NewDesc("nodedb_transport_tcp_segments_sent_total",
		"TCP segments sent to the peer on the current Raft connection.", []string{"peer"}, nil)
	descSegmentsRetransmitted = prometheus.NewDesc("nodedb_transport_tcp_segments_retransmitted_total",
		"TCP segments retransmitted to the peer on the current Raft connection.", []string{"peer"}, nil)
	descSmoothedRTT = prometheus.NewDesc("nodedb_transport_tcp_smoothed_rtt_seconds",
		"The kernel's smoothed round-trip time estimate to the peer.", []string{"peer"}, nil)
	descCongestionWindow = prometheus.NewDesc("nodedb_transport_tcp_congestion_window_bytes",
		"The congestion window towards the peer (segments times the segment size).", []string{"peer"}, nil)
)

func pathCollectors(e *Endpoint) []prometheus.Collector {
	return []prometheus.Collector{pathCollector{e}}
}

func (c pathCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descSegmentsSent
	ch <- descSegmentsRetransmitted
	ch <- descSmoothedRTT
	ch <- descCongestionWindow
}

func (c pathCollector) Collect(ch chan<- prometheus.Metric) {
	for id, raw := range c.e.raftConns() {
		info, ok := tcpInfo(raw)
		if !ok {
			continue
		}
		peer := strconv.FormatUint(uint64(id), 10)
		ch <- prometheus.MustNewConstMetric(descSegmentsSent, prometheus.CounterValue, float64(info.Segs_out), peer)
		ch <- prometheus.MustNewConstMetric(descSegmentsRetransmitted, prometheus.CounterValue, float64(info.Total_retrans), peer)
		ch <- prometheus.MustNewConstMetric(descSmoothedRTT, prometheus.GaugeValue, float64(info.Rtt)/1e6, peer)
		ch <- prometheus.MustNewConstMetric(descCongestionWindow, prometheus.GaugeValue, float64(info.Snd_cwnd)*float64(info.Snd_mss), peer)
	}
}

// tcpInfo reads TCP_INFO of c; false if c is not a TCP socket or is closed.
func tcpInfo(c net.Conn) (*unix.TCPInfo, bool) {
	var info *unix.TCPInfo
	var err error
	if !controlFD(c, func(fd int) { info, err = unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO) }) || err != nil {
		return nil, false
	}
	return info, true
}
