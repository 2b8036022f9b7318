package raftstore

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/kv"
	"github.com/nodedb/nodedb-cluster/internal/storage"
)

// Hot-path benchmarks with allocation counts, the regression guard for
// what every write goes through on this host: the entry envelope, the
// configuration-change context, and propose→apply through a single-node
// host. The KV state machine's own encode and apply are benchmarked in
// internal/kv, the transport's batch send in internal/transport, and
// replicated proposals on a 3-node cluster in internal/testcluster.
//
//	go test ./internal/raftstore -run XXX -bench . -benchtime 2s

var (
	benchSinkBytes []byte
	benchSinkCmd   command
	benchSinkCC    confChangeContext
)

// BenchmarkCommandEnvelope encodes and decodes the header every proposal
// is wrapped in, around a 256-byte payload. encode/propose allocates the
// entry's buffer as Propose does; encode/reused appends to one buffer.
func BenchmarkCommandEnvelope(b *testing.B) {
	payload := make([]byte, 256)
	c := command{proposer: 3, proposal: 1, timestamp: time.Now().UnixNano(), vshard: 517, client: 42, seq: 7, ackedBelow: 6, payload: payload}
	size := int64(commandHeaderLen + len(payload))
	b.Run("encode/propose", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(size)
		for b.Loop() {
			c.proposal++
			benchSinkBytes = encodeCommand(make([]byte, 0, commandHeaderLen+len(c.payload)), &c)
		}
	})
	b.Run("encode/reused", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(size)
		var dst []byte
		for b.Loop() {
			c.proposal++
			dst = encodeCommand(dst[:0], &c)
		}
		benchSinkBytes = dst
	})
	b.Run("decode", func(b *testing.B) {
		enc := encodeCommand(nil, &c)
		b.ReportAllocs()
		b.SetBytes(size)
		for b.Loop() {
			got, err := decodeCommand(enc)
			if err != nil {
				b.Fatal(err)
			}
			benchSinkCmd = got
		}
	})
}

// BenchmarkConfChangeContext encodes and decodes the context of a
// configuration change adding three replicas (a group's move to new nodes).
func BenchmarkConfChangeContext(b *testing.B) {
	c := confChangeContext{proposer: 1, proposal: 9, added: []replicaPlacement{{Replica: 4, Node: 7}, {Replica: 5, Node: 8}, {Replica: 6, Node: 9}}}
	b.Run("encode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			benchSinkBytes = encodeConfChangeContext(&c)
		}
	})
	b.Run("decode", func(b *testing.B) {
		enc := encodeConfChangeContext(&c)
		b.ReportAllocs()
		for b.Loop() {
			got, err := decodeConfChangeContext(enc)
			if err != nil {
				b.Fatal(err)
			}
			benchSinkCC = got
		}
	})
}

// BenchmarkProposeApply proposes 256-byte KV puts with exactly-once
// client IDs to a single-replica group on one host, on real Pebble in a
// temp dir with fsync, and waits for each to apply: the host's cycle, the
// log append and its sync, apply, and handing the result back, without a
// network. With several proposers their entries share cycles and syncs
// (group commit); it reports WAL syncs per proposal.
func BenchmarkProposeApply(b *testing.B) {
	for _, proposers := range []int{1, 16} {
		b.Run(fmt.Sprintf("proposers=%d", proposers), func(b *testing.B) {
			h, eng := newBenchHost(b)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			// One key per proposer; its payload is encoded once.
			payloads := make([][]byte, proposers)
			for p := range proposers {
				cmd, err := kv.EncodePut([]byte(fmt.Sprintf("bench/%d", p)), make([]byte, 256), nil, kv.DefaultLimits())
				if err != nil {
					b.Fatal(err)
				}
				payloads[p] = cmd
			}
			var (
				next    atomic.Int64
				wg      sync.WaitGroup
				errOnce sync.Once
				failed  error
			)
			syncsBefore := eng.WALSyncs()
			b.ReportAllocs()
			b.ResetTimer()
			for p := range proposers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for seq := uint64(1); next.Add(1) <= int64(b.N); seq++ {
						_, err := h.Propose(ctx, 1, Proposal{VShard: uint32(p), Client: uint64(p) + 1, Seq: seq, AckedBelow: seq, Payload: payloads[p]})
						if err != nil {
							errOnce.Do(func() { failed = err })
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			if failed != nil {
				b.Fatal(failed)
			}
			b.ReportMetric(float64(eng.WALSyncs()-syncsBefore)/float64(b.N), "syncs/op")
		})
	}
}

// newBenchHost starts a host with a single-replica group 1, its leader.
func newBenchHost(b *testing.B) (*Host, *storage.Engine) {
	b.Helper()
	h, eng := openTestHost(b, b.TempDir(), 16<<20, Config{})
	b.Cleanup(func() { h.Stop(); _ = eng.Close() })
	leadGroupAlone(b, h)
	return h, eng
}
