// Package transporttest holds test helpers shared by the transports' tests.
package transporttest

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// PeerMetric returns the value of metric name with label peer=peer in reg,
// a counter's or a gauge's, and fails t if there is none.
func PeerMetric(t testing.TB, reg *prometheus.Registry, name, peer string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) == 1 && m.GetLabel()[0].GetName() == "peer" && m.GetLabel()[0].GetValue() == peer {
				if c := m.GetCounter(); c != nil {
					return c.GetValue()
				}
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no %s{peer=%q}", name, peer)
	return 0
}

// Sender is the part of a transport endpoint CheckPathMetrics drives.
type Sender interface {
	Send(to ids.NodeID, msgs []transport.Message) error
}

// PathMetricNames are one transport's per-peer path metrics.
type PathMetricNames struct {
	Sent, Lost, SmoothedRTT, CongestionWindow string
}

// CheckPathMetrics sends 200 heartbeats from node 1 (from, whose metrics
// reg holds) to node 2, waits until received() counts them, and checks
// the path metrics of peer 2 on loopback: something sent, nothing lost, a
// round trip between 0 and 1 s, a congestion window.
func CheckPathMetrics(t *testing.T, from Sender, received func() int, reg *prometheus.Registry, names PathMetricNames) {
	t.Helper()
	before := received()
	for i := range 200 {
		m := transport.Message{Group: 7, Msg: raftpb.Message{Type: raftpb.MsgHeartbeat, From: 1, To: 2, Term: 1, Commit: uint64(i)}}
		if err := from.Send(2, []transport.Message{m}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for received() < before+200 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of 200 heartbeats arrived", received()-before)
		}
		time.Sleep(5 * time.Millisecond)
	}
	metric := func(name string) float64 { return PeerMetric(t, reg, name, "2") }
	if v := metric(names.Sent); v < 1 {
		t.Errorf("%s = %v, want at least one", names.Sent, v)
	}
	if v := metric(names.Lost); v != 0 {
		t.Errorf("%s on loopback = %v, want 0", names.Lost, v)
	}
	if v := metric(names.SmoothedRTT); v <= 0 || v > 1 {
		t.Errorf("%s = %vs, want a loopback figure", names.SmoothedRTT, v)
	}
	if v := metric(names.CongestionWindow); v <= 0 {
		t.Errorf("%s = %v bytes", names.CongestionWindow, v)
	}
}
