package tcpnet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/freeport"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/pki"
	"github.com/nodedb/nodedb-cluster/internal/testwatch"
	"github.com/nodedb/nodedb-cluster/internal/transport"
	"github.com/prometheus/client_golang/prometheus"
)

func TestMain(m *testing.M) { testwatch.Main(m) }

// recorder is a transport.Handler that keeps what it receives.
type recorder struct {
	mu        sync.Mutex
	batches   [][]transport.Message
	from      []ids.NodeID
	snapshots [][32]byte
	snapErr   error
}

func (r *recorder) HandleRaft(from ids.NodeID, msgs []transport.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.batches = append(r.batches, msgs)
	r.from = append(r.from, from)
}

func (r *recorder) HandleSnapshot(ctx context.Context, from ids.NodeID, stream io.Reader) error {
	r.mu.Lock()
	fail := r.snapErr
	r.mu.Unlock()
	if fail != nil {
		return fail // without reading: the sender must be stopped
	}
	h := sha256.New()
	if _, err := io.Copy(h, stream); err != nil {
		return err
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	r.mu.Lock()
	r.snapshots = append(r.snapshots, sum)
	r.mu.Unlock()
	return nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, b := range r.batches {
		n += len(b)
	}
	return n
}

type testPKI struct {
	t  testing.TB
	ca *pki.CA
	v  *pki.Verifier
}

func newPKI(t testing.TB) *testPKI {
	ca, err := pki.NewCA("test", time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{t: t, ca: ca, v: pki.NewVerifier(ca.Cert)}
}

func (p *testPKI) issue(node ids.NodeID) *pki.Identity { return p.identity(node, false) }

// identity is a fresh identity for node, with the CA in its chain if
// withCA (as a node serving joins needs).
func (p *testPKI) identity(node ids.NodeID, withCA bool) *pki.Identity {
	id, err := p.ca.NewNodeIdentity(node, []string{"127.0.0.1"}, withCA)
	if err != nil {
		p.t.Fatal(err)
	}
	return id
}

func (p *testPKI) endpoint(t testing.TB, node ids.NodeID, h transport.Handler, mod func(*Config)) *Endpoint {
	cfg := Config{Identity: p.issue(node), Verifier: p.v, Listen: "127.0.0.1:0", MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	e, err := Listen(cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func connect(es ...*Endpoint) {
	for _, a := range es {
		for _, b := range es {
			a.SetPeer(b.Node(), b.Addr().String())
		}
	}
}

func heartbeat(g ids.GroupID, from, to, commit uint64) transport.Message {
	return transport.Message{Group: g, Msg: raftpb.Message{Type: raftpb.MsgHeartbeat, From: from, To: to, Term: 1, Commit: commit}}
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sendUntil resends a batch until the receiver has n messages.
func sendUntil(t testing.TB, from *Endpoint, to ids.NodeID, r *recorder, n int, msgs ...transport.Message) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for r.count() < n {
		if time.Now().After(deadline) {
			t.Fatalf("node %s: only %d of %d messages arrived from %s", to, r.count(), n, from.Node())
		}
		from.Send(to, msgs)
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRaftBatchesBothWaysInOrder(t *testing.T) {
	p := newPKI(t)
	r1, r2 := &recorder{}, &recorder{}
	e1 := p.endpoint(t, 1, r1, nil)
	e2 := p.endpoint(t, 2, r2, nil)
	connect(e1, e2)

	for i := range 500 {
		if err := e1.Send(2, []transport.Message{heartbeat(7, 1, 2, uint64(i)), heartbeat(8, 1, 2, uint64(i))}); err != nil {
			t.Fatal(err)
		}
		if err := e2.Send(1, []transport.Message{heartbeat(7, 2, 1, uint64(i))}); err != nil {
			t.Fatal(err)
		}
	}
	// Nothing is dropped: the queue holds everything while the connection
	// is set up.
	waitFor(t, "1000 messages at node 2", func() bool { return r2.count() == 1000 })
	waitFor(t, "500 messages at node 1", func() bool { return r1.count() == 500 })
	for _, c := range []struct {
		r    *recorder
		from ids.NodeID
	}{{r2, 1}, {r1, 2}} {
		c.r.mu.Lock()
		var commits []uint64
		for i, b := range c.r.batches {
			if c.r.from[i] != c.from {
				t.Errorf("batch from %s, want %s", c.r.from[i], c.from)
			}
			for _, m := range b {
				if m.Group == 7 {
					commits = append(commits, m.Msg.Commit)
				}
			}
		}
		c.r.mu.Unlock()
		for i, commit := range commits {
			if commit != uint64(i) {
				t.Fatalf("message %d from %s carries commit %d: out of order or lost", i, c.from, commit)
			}
		}
	}
	// One Raft connection per direction.
	if d1, d2 := e1.Stats().ConnsDialed.Load(), e2.Stats().ConnsDialed.Load(); d1 != 1 || d2 != 1 {
		t.Fatalf("dialed %d and %d connections, want one each", d1, d2)
	}
	if s := e1.Stats().BatchesSent.Load(); s != 500 {
		t.Fatalf("BatchesSent = %d", s)
	}
}

func TestSendQueueIsBounded(t *testing.T) {
	p := newPKI(t)
	r2 := &recorder{}
	// A peer whose address accepts TCP but never completes a handshake: the
	// queue fills while the send loop waits on the dial.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	e1 := p.endpoint(t, 1, r2, func(c *Config) { c.MaxQueuedBytes = 4096; c.DialTimeout = 300 * time.Millisecond })
	e1.SetPeer(2, ln.Addr().String())
	start := time.Now()
	for i := range 1000 {
		if err := e1.Send(2, []transport.Message{heartbeat(1, 1, 2, uint64(i))}); err != nil && !errors.Is(err, transport.ErrUnreachable) {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > 200*time.Millisecond {
		t.Fatalf("1000 sends took %v: Send blocked", d)
	}
	if e1.Stats().BatchesDropped.Load() == 0 {
		t.Fatal("a full queue dropped nothing")
	}
	// Once the dial failed, the peer is reported unreachable.
	waitFor(t, "ErrUnreachable", func() bool {
		return errors.Is(e1.Send(2, []transport.Message{heartbeat(1, 1, 2, 0)}), transport.ErrUnreachable)
	})
}

func TestUnknownPeerIsUnreachable(t *testing.T) {
	p := newPKI(t)
	e1 := p.endpoint(t, 1, &recorder{}, func(c *Config) { c.DialTimeout = 500 * time.Millisecond })
	if err := e1.Send(9, []transport.Message{heartbeat(1, 1, 2, 0)}); !errors.Is(err, transport.ErrUnreachable) {
		t.Fatalf("Send to unknown node: %v, want ErrUnreachable", err)
	}
	if _, err := e1.Call(context.Background(), 9, "x", nil); !errors.Is(err, transport.ErrUnreachable) {
		t.Fatalf("Call to unknown node: %v, want ErrUnreachable", err)
	}
	if err := e1.SendSnapshot(context.Background(), 9, bytes.NewReader(nil)); !errors.Is(err, transport.ErrUnreachable) {
		t.Fatalf("SendSnapshot to unknown node: %v, want ErrUnreachable", err)
	}
	// A known address where nobody listens: unreachable, and fast during
	// the backoff.
	addr, err := freeport.TCP()
	if err != nil {
		t.Fatal(err)
	}
	e1.SetPeer(3, addr)
	if _, err := e1.Call(context.Background(), 3, "x", nil); !errors.Is(err, transport.ErrUnreachable) {
		t.Fatalf("Call to a dead address: %v, want ErrUnreachable", err)
	}
	if e1.Stats().DialFailures.Load() == 0 {
		t.Fatal("dial failure not counted")
	}
}

func TestRPC(t *testing.T) {
	p := newPKI(t)
	e1 := p.endpoint(t, 1, &recorder{}, nil)
	e2 := p.endpoint(t, 2, &recorder{}, nil)
	connect(e1, e2)
	e2.Handle("echo", func(ctx context.Context, from ids.NodeID, req []byte) ([]byte, error) {
		return append([]byte(fmt.Sprintf("%d:", from)), req...), nil
	})
	e2.Handle("fail", func(ctx context.Context, from ids.NodeID, req []byte) ([]byte, error) {
		return nil, &transport.RPCError{Code: "conflict", Message: "version mismatch"}
	})
	e2.Handle("oops", func(ctx context.Context, from ids.NodeID, req []byte) ([]byte, error) {
		return nil, errors.New("plain error")
	})
	e2.Handle("slow", func(ctx context.Context, from ids.NodeID, req []byte) ([]byte, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Many concurrent calls, each gets its own answer, over one connection.
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			want := fmt.Sprintf("req-%d", i)
			got, err := e1.Call(ctx, 2, "echo", []byte(want))
			if err != nil {
				errs <- err
				return
			}
			if string(got) != "1:"+want {
				errs <- fmt.Errorf("got %q for %q", got, want)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := e1.Stats().ConnsDialed.Load(); n != 1 {
		t.Fatalf("%d connections dialed for 200 calls, want 1", n)
	}

	var re *transport.RPCError
	if _, err := e1.Call(ctx, 2, "fail", nil); !errors.As(err, &re) || re.Code != "conflict" || re.Message != "version mismatch" {
		t.Fatalf("handler error: %v", err)
	}
	if _, err := e1.Call(ctx, 2, "oops", nil); !errors.As(err, &re) || re.Code != transport.RPCInternal {
		t.Fatalf("plain handler error: %v", err)
	}
	if _, err := e1.Call(ctx, 2, "nope", nil); !errors.As(err, &re) || re.Code != transport.RPCUnknownMethod {
		t.Fatalf("unknown method: %v", err)
	}
	if _, err := e1.Call(ctx, 2, "", nil); err == nil {
		t.Fatal("empty method name accepted")
	}
	// The deadline travels with the request: the server gives up too, and
	// says so to a caller still waiting.
	short, cancel2 := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel2()
	start := time.Now()
	// Either side may notice first: the caller's context, or the server's
	// deadline answered as RPCDeadline.
	if _, err := e1.Call(short, 2, "slow", nil); !errors.Is(err, context.DeadlineExceeded) && !(errors.As(err, &re) && re.Code == transport.RPCDeadline) {
		t.Fatalf("slow call: %v", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatal("deadline not honoured")
	}
	// Large bodies round-trip intact.
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	got, err := e1.Call(ctx, 2, "echo", big)
	if err != nil || !bytes.Equal(got, append([]byte("1:"), big...)) {
		t.Fatalf("1 MiB echo: %v", err)
	}
	// And the other way, on a connection of its own.
	e1.Handle("echo", func(ctx context.Context, from ids.NodeID, req []byte) ([]byte, error) { return req, nil })
	if got, err := e2.Call(ctx, 1, "echo", []byte("back")); err != nil || string(got) != "back" {
		t.Fatalf("reverse call: %q %v", got, err)
	}
}

func TestRPCDeadlineReachesTheServer(t *testing.T) {
	p := newPKI(t)
	e1 := p.endpoint(t, 1, &recorder{}, nil)
	e2 := p.endpoint(t, 2, &recorder{}, nil)
	connect(e1, e2)
	got := make(chan time.Duration, 1)
	e2.Handle("deadline", func(ctx context.Context, from ids.NodeID, req []byte) ([]byte, error) {
		dl, ok := ctx.Deadline()
		if !ok {
			got <- -1
			return nil, nil
		}
		got <- time.Until(dl)
		return nil, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := e1.Call(ctx, 2, "deadline", nil); err != nil {
		t.Fatal(err)
	}
	if left := <-got; left <= 0 || left > 3*time.Second {
		t.Fatalf("handler deadline %v away, want within the caller's 3s", left)
	}
}

func TestRPCConcurrencyIsBounded(t *testing.T) {
	p := newPKI(t)
	e1 := p.endpoint(t, 1, &recorder{}, nil)
	e2 := p.endpoint(t, 2, &recorder{}, func(c *Config) { c.MaxConcurrentRPCs = 4 })
	connect(e1, e2)
	var running, peak atomic.Int64
	release := make(chan struct{})
	e2.Handle("block", func(ctx context.Context, from ids.NodeID, req []byte) ([]byte, error) {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			old := peak.Load()
			if n <= old || peak.CompareAndSwap(old, n) {
				break
			}
		}
		<-release
		return req, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := e1.Call(ctx, 2, "block", []byte("x")); err != nil {
				failed.Add(1)
			}
		}()
	}
	waitFor(t, "4 handlers running", func() bool { return running.Load() == 4 })
	time.Sleep(100 * time.Millisecond)
	if peak.Load() != 4 {
		t.Fatalf("%d handlers ran at once, want the bound of 4", peak.Load())
	}
	close(release)
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d calls failed", failed.Load())
	}
}

func TestSnapshotWhileHeartbeatsFlow(t *testing.T) {
	p := newPKI(t)
	r1, r2 := &recorder{}, &recorder{}
	e1 := p.endpoint(t, 1, r1, nil)
	e2 := p.endpoint(t, 2, r2, nil)
	connect(e1, e2)
	sendUntil(t, e1, 2, r2, 1, heartbeat(1, 1, 2, 0))

	data := make([]byte, 20<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	want := sha256.Sum256(data)
	done := make(chan error, 1)
	go func() {
		done <- e1.SendSnapshot(context.Background(), 2, bytes.NewReader(data))
	}()
	var worst time.Duration
	for sent := 1; ; sent++ {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			r2.mu.Lock()
			got := r2.snapshots
			r2.mu.Unlock()
			if len(got) != 1 || got[0] != want {
				t.Fatal("snapshot arrived corrupted")
			}
			if e1.Stats().SnapshotsSent.Load() != 1 || e2.Stats().SnapshotsReceived.Load() != 1 {
				t.Fatal("snapshot not counted")
			}
			t.Logf("%d heartbeats during the snapshot, slowest %v", sent, worst)
			if worst > time.Second {
				t.Fatalf("a heartbeat took %v during the snapshot", worst)
			}
			return
		default:
		}
		n := r2.count()
		t0 := time.Now()
		e1.Send(2, []transport.Message{heartbeat(1, 1, 2, uint64(sent))})
		waitFor(t, "heartbeat", func() bool { return r2.count() > n })
		worst = max(worst, time.Since(t0))
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSnapshotRejectedByReceiver(t *testing.T) {
	p := newPKI(t)
	r2 := &recorder{snapErr: errors.New("stale snapshot")}
	e1 := p.endpoint(t, 1, &recorder{}, nil)
	e2 := p.endpoint(t, 2, r2, nil)
	connect(e1, e2)
	// Far more than the socket buffers hold: the sender must stop on the
	// refusal, not finish writing first.
	start := time.Now()
	err := e1.SendSnapshot(context.Background(), 2, io.LimitReader(zeros{}, 1<<30))
	var ref *transport.Refusal
	if !errors.As(err, &ref) || ref.Reason != "rejected" || ref.Message != "stale snapshot" {
		t.Fatalf("SendSnapshot = %v, want the receiver's refusal", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("refusal took %v", d)
	}
}

type zeros struct{}

func (zeros) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}

func TestSnapshotCancelled(t *testing.T) {
	p := newPKI(t)
	e1 := p.endpoint(t, 1, &recorder{}, nil)
	e2 := p.endpoint(t, 2, &recorder{}, nil)
	connect(e1, e2)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	// An endless source: only the context ends the transfer.
	if err := e1.SendSnapshot(ctx, 2, zeros{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("SendSnapshot = %v, want the context's error", err)
	}
	// A failing source aborts the transfer with the source's error.
	boom := errors.New("disk on fire")
	err := e1.SendSnapshot(context.Background(), 2, io.MultiReader(bytes.NewReader(make([]byte, 1<<20)), failing{boom}))
	if !errors.Is(err, boom) {
		t.Fatalf("SendSnapshot = %v, want the source's error", err)
	}
}

type failing struct{ err error }

func (f failing) Read([]byte) (int, error) { return 0, f.err }

func TestPeerRestartReconnects(t *testing.T) {
	p := newPKI(t)
	r1, r2 := &recorder{}, &recorder{}
	e1 := p.endpoint(t, 1, r1, nil)
	e2 := p.endpoint(t, 2, r2, nil)
	connect(e1, e2)
	e2.Handle("ping", func(ctx context.Context, from ids.NodeID, req []byte) ([]byte, error) { return []byte("1"), nil })
	sendUntil(t, e1, 2, r2, 1, heartbeat(1, 1, 2, 0))
	if _, err := e1.Call(context.Background(), 2, "ping", nil); err != nil {
		t.Fatal(err)
	}
	addr := e2.Addr().String()
	e2.Close()

	r2b := &recorder{}
	e2b := p.endpoint(t, 2, r2b, func(c *Config) { c.Listen = addr })
	e2b.SetPeer(1, e1.Addr().String())
	e2b.Handle("ping", func(ctx context.Context, from ids.NodeID, req []byte) ([]byte, error) { return []byte("2"), nil })
	start := time.Now()
	sendUntil(t, e1, 2, r2b, 1, heartbeat(1, 1, 2, 1))
	sendUntil(t, e2b, 1, r1, 1, heartbeat(1, 2, 1, 1))
	waitFor(t, "RPCs to the new process", func() bool {
		got, err := e1.Call(context.Background(), 2, "ping", nil)
		return err == nil && string(got) == "2"
	})
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("reconnecting took %v", d)
	}
}

// rawDial connects to e with an arbitrary TLS client configuration, the way
// a misbehaving or foreign peer would; the cluster ALPN unless tlsConf names
// protocols.
func rawDial(t testing.TB, e *Endpoint, tlsConf *tls.Config) (*tls.Conn, error) {
	if len(tlsConf.NextProtos) == 0 {
		tlsConf.NextProtos = []string{transport.ALPN}
	}
	tlsConf.InsecureSkipVerify = true
	tlsConf.MinVersion = tls.VersionTLS13
	d := net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(&d, "tcp", e.Addr().String(), tlsConf)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return c, nil
}

func clientCert(id *pki.Identity) *tls.Config {
	return &tls.Config{GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return id.Certificate(), nil
	}}
}

// hello sends a hello claiming node claim, then kind, and returns the
// answer.
func hello(c *tls.Conn, claim ids.NodeID, kind byte) (transport.FrameType, []byte, error) {
	h := transport.Hello{MinVersion: 1, MaxVersion: 1, Node: claim, Incarnation: 1}
	if _, err := c.Write(append(transport.AppendFrame(nil, transport.FrameHello, h.Encode(nil)), kind)); err != nil {
		return 0, nil, err
	}
	// The answer is the only thing the node sends before the payload, so
	// reading it through a frame reader loses nothing.
	return transport.NewFrameReader(c, 4096).Next()
}

func TestHandshakeRefusals(t *testing.T) {
	p := newPKI(t)
	e1 := p.endpoint(t, 1, &recorder{}, nil)
	refusals := func(reason string) uint64 { return e1.Stats().Refusals()[reason] }

	t.Run("no client certificate", func(t *testing.T) {
		c, err := rawDial(t, e1, &tls.Config{})
		if err == nil {
			// TLS 1.3 refuses a client after the client's side of the
			// handshake completed: the first read fails.
			_, _, err = hello(c, 5, transport.StreamRaft)
			c.Close()
		}
		if err == nil {
			t.Fatal("a client without a certificate got an answer")
		}
		waitFor(t, "refusal counted", func() bool { return refusals("no_certificate") > 0 })
	})
	t.Run("certificate from another CA", func(t *testing.T) {
		other := newPKI(t)
		c, err := rawDial(t, e1, clientCert(other.issue(2)))
		if err == nil {
			_, _, err = hello(c, 2, transport.StreamRaft)
			c.Close()
		}
		if err == nil {
			t.Fatal("a certificate from another CA was accepted")
		}
		waitFor(t, "refusal counted", func() bool { return refusals("unknown_authority") > 0 })
	})
	t.Run("an endpoint of another CA", func(t *testing.T) {
		other := newPKI(t)
		e9 := other.endpoint(t, 9, &recorder{}, nil)
		e9.SetPeer(1, e1.Addr().String())
		if _, err := e9.Call(context.Background(), 1, "x", nil); !errors.Is(err, transport.ErrUnreachable) {
			t.Fatalf("call across CAs: %v, want ErrUnreachable", err)
		}
		if e9.Stats().Refusals()["unknown_authority"] == 0 {
			t.Fatalf("dialer refusals: %v", e9.Stats().Refusals())
		}
	})
	t.Run("valid certificate claiming another node", func(t *testing.T) {
		c, err := rawDial(t, e1, clientCert(p.issue(2)))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		typ, payload, err := hello(c, 3, transport.StreamRaft)
		if err != nil {
			t.Fatalf("no answer to the hello: %v", err)
		}
		r, derr := transport.DecodeRefusal(payload)
		if typ != transport.FrameRefuse || derr != nil || r.Reason != "node_id_mismatch" {
			t.Fatalf("answer %s %+v, want a node_id_mismatch refusal", typ, r)
		}
		if refusals("node_id_mismatch") != 1 {
			t.Fatalf("refusals: %v", e1.Stats().Refusals())
		}
		// And the connection is closed.
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("the refused connection stayed open")
		}
	})
	t.Run("dialer refuses a server with the wrong node ID", func(t *testing.T) {
		// Node 3's address actually answers as node 1.
		e4 := p.endpoint(t, 4, &recorder{}, nil)
		e4.SetPeer(3, e1.Addr().String())
		if _, err := e4.Call(context.Background(), 3, "x", nil); !errors.Is(err, transport.ErrUnreachable) {
			t.Fatalf("call to an impostor: %v", err)
		}
		if e4.Stats().Refusals()["node_id_mismatch"] == 0 {
			t.Fatalf("dialer refusals: %v", e4.Stats().Refusals())
		}
	})
	// Through all of it the endpoint kept serving its real peers.
	r2 := &recorder{}
	e2 := p.endpoint(t, 2, r2, nil)
	connect(e1, e2)
	sendUntil(t, e1, 2, r2, 1, heartbeat(1, 1, 2, 0))
}

func TestMalformedFramesCloseTheConnectionNotTheNode(t *testing.T) {
	p := newPKI(t)
	r1 := &recorder{}
	e1 := p.endpoint(t, 1, r1, nil)
	e1.Handle("echo", func(ctx context.Context, from ids.NodeID, req []byte) ([]byte, error) { return req, nil })
	id2 := p.issue(2)

	raft, rpc := transport.StreamRaft, transport.StreamRPC
	cases := []struct {
		name    string
		kind    byte
		payload []byte
	}{
		{"garbage", raft, bytes.Repeat([]byte{0xff}, 64)},
		{"oversized", raft, []byte{4, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}},
		{"bad checksum", raft, corrupt(transport.AppendFrame(nil, transport.FrameRaftBatch, []byte{1, 0}))},
		{"wrong frame", raft, transport.AppendFrame(nil, transport.FrameHello, []byte{1})},
		{"bad batch", raft, transport.AppendFrame(nil, transport.FrameRaftBatch, []byte{9, 9, 9})},
		{"local raft type", raft, localTypeFrame(t)},
		{"truncated", raft, transport.AppendFrame(nil, transport.FrameRaftBatch, []byte{1, 0})[:6]},
		{"unknown kind", 'Z', []byte{1, 2, 3}},
		{"rpc garbage", rpc, bytes.Repeat([]byte{0xee}, 64)},
		{"rpc wrong frame", rpc, transport.AppendFrame(nil, transport.FrameRaftBatch, []byte{1, 0})},
		{"rpc bad request", rpc, transport.AppendFrame(nil, transport.FrameRPCRequest, []byte{0xff})},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e1.Stats().FrameErrors.Load()
			c, err := rawDial(t, e1, clientCert(id2))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if typ, _, err := hello(c, 2, tc.kind); err != nil || typ != transport.FrameHelloOK {
				t.Fatalf("hello: %v %v", typ, err)
			}
			c.Write(tc.payload)
			if tc.name == "truncated" {
				c.CloseWrite() // the stream ends inside the frame
			}
			// The node closes the connection: the read ends with EOF or a
			// reset, not with our 5s deadline.
			_, err = io.Copy(io.Discard, c)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the node kept a connection that broke the framing")
			}
			waitFor(t, "frame error counted", func() bool { return e1.Stats().FrameErrors.Load() > before })
		})
	}
	if r1.count() != 0 {
		t.Fatalf("%d messages from malformed input reached the handler", r1.count())
	}
	// The node still serves well-behaved peers.
	r2 := &recorder{}
	e2 := p.endpoint(t, 2, r2, nil)
	connect(e1, e2)
	sendUntil(t, e1, 2, r2, 1, heartbeat(1, 1, 2, 0))
	if got, err := e2.Call(context.Background(), 1, "echo", []byte("ok")); err != nil || string(got) != "ok" {
		t.Fatalf("call after malformed input: %q %v", got, err)
	}
}

func corrupt(b []byte) []byte {
	b[len(b)-1] ^= 1
	return b
}

func localTypeFrame(t testing.TB) []byte {
	b, err := transport.EncodeBatch(nil, []transport.Message{{Group: 1, Msg: raftpb.Message{Type: raftpb.MsgProp, From: 1, To: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	return transport.AppendFrame(nil, transport.FrameRaftBatch, b)
}

func TestCloseUnblocksCallers(t *testing.T) {
	p := newPKI(t)
	e1 := p.endpoint(t, 1, &recorder{}, nil)
	e2 := p.endpoint(t, 2, &recorder{}, nil)
	connect(e1, e2)
	entered := make(chan struct{}, 1)
	e2.Handle("hang", func(ctx context.Context, from ids.NodeID, req []byte) ([]byte, error) {
		entered <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	})
	done := make(chan error, 1)
	go func() {
		_, err := e1.Call(context.Background(), 2, "hang", nil)
		done <- err
	}()
	<-entered
	if err := e2.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, transport.ErrRequestLost) {
			t.Fatalf("call to a node that closed while serving it: %v, want ErrRequestLost", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a call hung after the peer closed")
	}
	if err := e1.Send(2, []transport.Message{heartbeat(1, 1, 2, 0)}); err != nil && !errors.Is(err, transport.ErrUnreachable) {
		t.Fatal(err)
	}
	e1.Close()
	e1.Close() // idempotent
	if err := e1.Send(2, []transport.Message{heartbeat(1, 1, 2, 0)}); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Send after Close: %v", err)
	}
	if _, err := e1.Call(context.Background(), 2, "hang", nil); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Call after Close: %v", err)
	}
	if err := e1.SendSnapshot(context.Background(), 2, bytes.NewReader(nil)); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("SendSnapshot after Close: %v", err)
	}
}

// TestFilterDropsTraffic: Config.Filter cuts a link, for Raft batches,
// RPCs and snapshots, whether the filtering endpoint sends or receives, and
// traffic flows again once it allows it.
func TestFilterDropsTraffic(t *testing.T) {
	p := newPKI(t)
	var blocked atomic.Bool
	r1, r2 := &recorder{}, &recorder{}
	e1 := p.endpoint(t, 1, r1, func(c *Config) { c.Filter = func(from, to ids.NodeID) bool { return !blocked.Load() } })
	e2 := p.endpoint(t, 2, r2, nil)
	connect(e1, e2)
	e1.Handle("echo", func(ctx context.Context, from ids.NodeID, req []byte) ([]byte, error) { return req, nil })
	sendUntil(t, e1, 2, r2, 1, heartbeat(1, 1, 2, 0))
	sendUntil(t, e2, 1, r1, 1, heartbeat(1, 2, 1, 0))
	blocked.Store(true)
	n2, n1 := r2.count(), r1.count()
	for range 20 {
		e1.Send(2, []transport.Message{heartbeat(1, 1, 2, 1)}) // dropped by the sender
		e2.Send(1, []transport.Message{heartbeat(1, 2, 1, 1)}) // dropped by the receiver
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if _, err := e1.Call(ctx, 2, "echo", []byte("x")); !errors.Is(err, transport.ErrUnreachable) {
		t.Fatalf("call out over a cut link: %v", err)
	}
	if err := e1.SendSnapshot(ctx, 2, bytes.NewReader([]byte("snap"))); !errors.Is(err, transport.ErrUnreachable) {
		t.Fatalf("snapshot out over a cut link: %v", err)
	}
	if _, err := e2.Call(ctx, 1, "echo", []byte("x")); err == nil {
		t.Fatal("a call was served by an endpoint whose filter refuses its caller")
	}
	time.Sleep(200 * time.Millisecond)
	if r2.count() != n2 || r1.count() != n1 {
		t.Fatal("a filtered link delivered messages")
	}
	blocked.Store(false)
	sendUntil(t, e1, 2, r2, n2+1, heartbeat(1, 1, 2, 2))
	sendUntil(t, e2, 1, r1, n1+1, heartbeat(1, 2, 1, 2))
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	if got, err := e2.Call(ctx2, 1, "echo", []byte("back")); err != nil || string(got) != "back" {
		t.Fatalf("call after healing: %q %v", got, err)
	}
}

// metricsPair returns two connected endpoints, nodes 1 and 2, the first
// exporting its metrics to reg, after one batch from 1 reached 2's
// recorder r2.
func metricsPair(t *testing.T) (reg *prometheus.Registry, e1 *Endpoint, r2 *recorder) {
	t.Helper()
	p := newPKI(t)
	reg = prometheus.NewRegistry()
	r2 = &recorder{}
	e1 = p.endpoint(t, 1, &recorder{}, func(c *Config) { c.Registerer = reg })
	e2 := p.endpoint(t, 2, r2, nil)
	connect(e1, e2)
	sendUntil(t, e1, 2, r2, 1, heartbeat(1, 1, 2, 0))
	return reg, e1, r2
}

// TestMetricsExported: with a Registerer, the endpoint exports the same
// transport metrics as quicnet's (counters, refusals by reason, connected
// peers), so dashboards do not change with --transport.
func TestMetricsExported(t *testing.T) {
	reg, e1, _ := metricsPair(t)
	if c, err := rawDial(t, e1, &tls.Config{}); err == nil { // no certificate: refused
		hello(c, 5, transport.StreamRaft)
		c.Close()
	}
	waitFor(t, "the refusal counted", func() bool { return e1.Stats().Refusals()["no_certificate"] > 0 })
	got := map[string]float64{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			got[mf.GetName()] += v
		}
	}
	for name, min := range map[string]float64{
		"nodedb_transport_raft_batches_sent_total":    1,
		"nodedb_transport_connections_dialed_total":   1,
		"nodedb_transport_handshake_refusals_total":   1,
		"nodedb_transport_peers_connected":            1,
		"nodedb_transport_snapshots_received_total":   0,
		"nodedb_transport_raft_batches_dropped_total": 0,
	} {
		v, ok := got[name]
		if !ok || v < min {
			t.Errorf("%s = %v (exported %v), want at least %v", name, v, ok, min)
		}
	}
}
