package memnet

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// countingHandler counts messages without keeping them, so the benchmark
// measures the network, not the recorder.
type countingHandler struct {
	recorder
	batches, msgs atomic.Int64
}

func (h *countingHandler) HandleRaft(_ ids.NodeID, msgs []transport.Message) {
	h.msgs.Add(int64(len(msgs)))
	h.batches.Add(1)
}

// BenchmarkSendSmallBatches measures end-to-end throughput of batches of
// four heartbeats on a clean link: encode, queue, schedule, decode, deliver.
// Senders keep at most a quarter of QueueLimit batches in flight, as a
// sender with flow control would, so the figure is sustained delivery
// throughput rather than the rate at which a full queue drops; any drops
// are still reported as drops/op.
func BenchmarkSendSmallBatches(b *testing.B) {
	for _, tc := range []struct {
		name    string
		senders int
	}{{"1sender", 1}, {"4senders", 4}} {
		b.Run(tc.name, func(b *testing.B) {
			n := New(1)
			defer n.Close()
			h := &countingHandler{}
			n.Endpoint(100, h)
			eps := make([]*Endpoint, tc.senders)
			for i := range eps {
				eps[i] = n.Endpoint(ids.NodeID(i+1), nil)
			}
			b.ReportAllocs()
			b.ResetTimer()
			var next atomic.Int64
			done := make(chan struct{})
			for _, e := range eps {
				go func() {
					defer func() { done <- struct{}{} }()
					msgs := []transport.Message{hb(0, 1), hb(1, 2), hb(2, 3), hb(3, 4)}
					for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
						for i-h.batches.Load() > QueueLimit/4 {
							runtime.Gosched()
						}
						if err := e.Send(100, msgs); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			for range eps {
				<-done
			}
			for !n.Stats().Conserved() {
				time.Sleep(10 * time.Microsecond)
			}
			b.StopTimer()
			s := n.Stats()
			b.ReportMetric(float64(s.DroppedOverflow)/float64(b.N), "drops/op")
			b.ReportMetric(float64(h.msgs.Load())/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
