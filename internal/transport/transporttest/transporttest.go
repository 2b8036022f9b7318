// Package transporttest holds test helpers shared by the transports' tests.
package transporttest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
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
