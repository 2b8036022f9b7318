// Package transportbench compares the inter-node transports, quicnet (QUIC)
// and tcpnet (TCP + TLS 1.3), on the loopback interface: each benchmark runs
// both, every sub-benchmark on a fresh pair of endpoints with real sockets
// and real mutual TLS. The results and their conditions are recorded in
// docs/performance.md.
//
//	go test ./internal/transport/transportbench -run XXX -bench . -benchtime 2s -count 3
package transportbench

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/pki"
	"github.com/nodedb/nodedb-cluster/internal/transport"
	"github.com/nodedb/nodedb-cluster/internal/transport/quicnet"
	"github.com/nodedb/nodedb-cluster/internal/transport/tcpnet"
)

// endpoint is what the benchmarks need of a transport.
type endpoint interface {
	transport.Transport
	transport.Caller
	Handle(method string, h transport.RPCHandler)
	SetPeer(id ids.NodeID, addr string)
	Addr() net.Addr
	Node() ids.NodeID
}

type kind struct {
	name string
	// listen starts an endpoint for id; dropped reads its count of dropped
	// Raft batches.
	listen  func(id *pki.Identity, v *pki.Verifier, h transport.Handler) (endpoint, error)
	dropped func(endpoint) uint64
}

var kinds = []kind{
	{
		name: "quic",
		listen: func(id *pki.Identity, v *pki.Verifier, h transport.Handler) (endpoint, error) {
			return quicnet.Listen(quicnet.Config{Identity: id, Verifier: v, Listen: "127.0.0.1:0"}, h)
		},
		dropped: func(e endpoint) uint64 { return e.(*quicnet.Endpoint).Stats().BatchesDropped.Load() },
	},
	{
		name: "tcp",
		listen: func(id *pki.Identity, v *pki.Verifier, h transport.Handler) (endpoint, error) {
			return tcpnet.Listen(tcpnet.Config{Identity: id, Verifier: v, Listen: "127.0.0.1:0"}, h)
		},
		dropped: func(e endpoint) uint64 { return e.(*tcpnet.Endpoint).Stats().BatchesDropped.Load() },
	},
}

// handler counts what it receives.
type handler struct {
	batches, msgs atomic.Int64
	progress      chan struct{} // signalled after every batch
}

func newHandler() *handler { return &handler{progress: make(chan struct{}, 1)} }

func (h *handler) HandleRaft(from ids.NodeID, msgs []transport.Message) {
	h.msgs.Add(int64(len(msgs)))
	h.batches.Add(1)
	select {
	case h.progress <- struct{}{}:
	default:
	}
}

func (h *handler) HandleSnapshot(ctx context.Context, from ids.NodeID, stream io.Reader) error {
	_, err := io.Copy(io.Discard, stream)
	return err
}

func identity(tb testing.TB, ca *pki.CA, node ids.NodeID) *pki.Identity {
	key, err := pki.NewNodeKey()
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := ca.IssueNode(key.Public(), node, []string{"127.0.0.1"}, time.Now(), 0)
	if err != nil {
		tb.Fatal(err)
	}
	id, err := pki.NewIdentity(cert, nil, key)
	if err != nil {
		tb.Fatal(err)
	}
	return id
}

// pair starts two endpoints of kind k (nodes 1 and 2) that know each other,
// with an echo RPC on both, and waits until both directions carry traffic.
func pair(tb testing.TB, k kind, h1, h2 *handler) (endpoint, endpoint) {
	ca, err := pki.NewCA("bench", time.Now().Add(-time.Hour))
	if err != nil {
		tb.Fatal(err)
	}
	v := pki.NewVerifier(ca.Cert)
	e1, err := k.listen(identity(tb, ca, 1), v, h1)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { e1.Close() })
	e2, err := k.listen(identity(tb, ca, 2), v, h2)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { e2.Close() })
	e1.SetPeer(2, e2.Addr().String())
	e2.SetPeer(1, e1.Addr().String())
	echo := func(ctx context.Context, from ids.NodeID, req []byte) ([]byte, error) { return req, nil }
	e1.Handle("echo", echo)
	e2.Handle("echo", echo)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, c := range []struct {
		from, to endpoint
		h        *handler
	}{{e1, e2, h2}, {e2, e1, h1}} {
		if _, err := c.from.Call(ctx, c.to.Node(), "echo", []byte("warm")); err != nil {
			tb.Fatal(err)
		}
		n := c.h.batches.Load()
		for c.h.batches.Load() == n {
			if ctx.Err() != nil {
				tb.Fatal("no Raft batch got through")
			}
			c.from.Send(c.to.Node(), []transport.Message{{Group: 1, Msg: raftpb.Message{Type: raftpb.MsgHeartbeat, From: 1, To: 2}}})
			time.Sleep(5 * time.Millisecond)
		}
	}
	return e1, e2
}

// measureCPU starts measuring the process's CPU time; the returned function
// reports it per operation as cpu-µs/op.
func measureCPU(b *testing.B) func() {
	start := cpuTime()
	return func() {
		b.ReportMetric(float64((cpuTime()-start).Nanoseconds())/1e3/float64(b.N), "cpu-µs/op")
	}
}

// BenchmarkRPCRoundTrip: one caller, sequential 64-byte echo RPCs.
func BenchmarkRPCRoundTrip(b *testing.B) {
	for _, k := range kinds {
		b.Run(k.name, func(b *testing.B) {
			e1, _ := pair(b, k, newHandler(), newHandler())
			req := bytes.Repeat([]byte("r"), 64)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			cpu := measureCPU(b)
			for range b.N {
				if _, err := e1.Call(ctx, 2, "echo", req); err != nil {
					b.Fatal(err)
				}
			}
			cpu()
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/call")
		})
	}
}

// BenchmarkRPCConcurrent: 256 goroutines doing 256-byte echo RPCs.
func BenchmarkRPCConcurrent(b *testing.B) {
	const callers = 256
	for _, k := range kinds {
		b.Run(k.name+"/callers=256", func(b *testing.B) {
			e1, _ := pair(b, k, newHandler(), newHandler())
			req := bytes.Repeat([]byte("c"), 256)
			ctx := context.Background()
			var left atomic.Int64
			left.Store(int64(b.N))
			var failed atomic.Value
			var wg sync.WaitGroup
			b.ReportAllocs()
			b.ResetTimer()
			cpu := measureCPU(b)
			for range callers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for left.Add(-1) >= 0 {
						if _, err := e1.Call(ctx, 2, "echo", req); err != nil {
							failed.Store(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			cpu()
			if err, _ := failed.Load().(error); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
		})
	}
}

// BenchmarkRaftBatchThroughput: one sender, batches of 16 MsgApp messages
// each carrying one 256-byte entry, to a handler that counts them; b.N
// batches must arrive. Send drops batches when the peer's queue is full, so
// the sender keeps at most window batches in flight, and every drop is
// reported (and made up for by another batch).
func BenchmarkRaftBatchThroughput(b *testing.B) {
	const (
		perBatch  = 16
		entrySize = 256
		window    = 512
	)
	msgs := make([]transport.Message, perBatch)
	for i := range msgs {
		msgs[i] = transport.Message{Group: ids.GroupID(1 + i%4), Msg: raftpb.Message{
			Type: raftpb.MsgApp, From: 1, To: 2, Term: 3, Index: uint64(100 + i), LogTerm: 3, Commit: 99,
			Entries: []raftpb.Entry{{Term: 3, Index: uint64(101 + i), Data: bytes.Repeat([]byte{byte(i)}, entrySize)}},
		}}
	}
	for _, k := range kinds {
		b.Run(k.name, func(b *testing.B) {
			h2 := newHandler()
			e1, _ := pair(b, k, newHandler(), h2)
			base := h2.batches.Load()
			droppedBase := k.dropped(e1)
			var sent, refused int64
			dropped := func() int64 { return int64(k.dropped(e1)-droppedBase) + refused }
			b.SetBytes(perBatch * entrySize)
			b.ReportAllocs()
			b.ResetTimer()
			cpu := measureCPU(b)
			deadline := time.Now().Add(5 * time.Minute)
			for {
				got := h2.batches.Load() - base
				if got >= int64(b.N) {
					break
				}
				if sent-got-dropped() >= window || sent-dropped() >= int64(b.N) {
					// Wait for the receiver; a timeout re-checks drops.
					select {
					case <-h2.progress:
					case <-time.After(5 * time.Millisecond):
						if time.Now().After(deadline) {
							b.Fatalf("%d of %d batches arrived", got, b.N)
						}
					}
					continue
				}
				if err := e1.Send(2, msgs); err != nil {
					refused++
				}
				sent++
			}
			b.StopTimer()
			cpu()
			b.ReportMetric(float64(b.N*perBatch)/b.Elapsed().Seconds(), "msgs/s")
			b.ReportMetric(float64(dropped()), "dropped")
		})
	}
}

// BenchmarkSnapshot: 64 MiB snapshot transfers.
func BenchmarkSnapshot(b *testing.B) {
	const size = 64 << 20
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i * 31)
	}
	for _, k := range kinds {
		b.Run(k.name, func(b *testing.B) {
			e1, _ := pair(b, k, newHandler(), newHandler())
			b.SetBytes(size)
			b.ResetTimer()
			cpu := measureCPU(b)
			for range b.N {
				if err := e1.SendSnapshot(context.Background(), 2, bytes.NewReader(data)); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			cpu()
		})
	}
}

// TestQUICConditions logs what quic-go could set up on this machine: the UDP
// socket buffers it got and whether it uses GSO. Benchmark reports quote it.
func TestQUICConditions(t *testing.T) {
	for _, f := range []string{"/proc/sys/net/core/rmem_max", "/proc/sys/net/core/wmem_max"} {
		if b, err := os.ReadFile(f); err == nil {
			t.Logf("%s = %s", f, bytes.TrimSpace(b))
		}
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	tr := &quic.Transport{Conn: udp}
	defer tr.Close()
	ca, err := pki.NewCA("cond", time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	v := pki.NewVerifier(ca.Cert)
	ln, err := tr.Listen(pki.ServerTLS(identity(t, ca, 1), v, []string{transport.ALPN}, nil), &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept(ctx)
		if err == nil {
			<-c.Context().Done()
		}
		accepted <- err
	}()
	conn, err := quic.DialAddr(ctx, udp.LocalAddr().String(),
		pki.ClientTLS(identity(t, ca, 2), v, []string{transport.ALPN}, 1, nil), &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("GSO: %v", conn.ConnectionState().GSO)
	rbuf, wbuf, err := socketBuffers(udp)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("UDP socket buffers after quic-go's setup: SO_RCVBUF %d, SO_SNDBUF %d (the kernel reports double the set value)", rbuf, wbuf)
	conn.CloseWithError(0, "")
	if err := <-accepted; err != nil && !errors.Is(err, context.Canceled) {
		t.Log(err)
	}
}
