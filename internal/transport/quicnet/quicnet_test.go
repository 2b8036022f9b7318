package quicnet

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/pki"
	"github.com/nodedb/nodedb-cluster/internal/testwatch"
	"github.com/nodedb/nodedb-cluster/internal/transport"
	"github.com/nodedb/nodedb-cluster/internal/transport/transporttest"
)

func TestMain(m *testing.M) { testwatch.Main(m) }

// recorder is a transport.Handler that keeps what it receives.
type recorder struct {
	mu        sync.Mutex
	batches   [][]transport.Message
	from      []ids.NodeID
	snapshots [][32]byte
	snapErr   error
	got       chan struct{}
}

func newRecorder() *recorder { return &recorder{got: make(chan struct{}, 1<<16)} }

func (r *recorder) HandleRaft(from ids.NodeID, msgs []transport.Message) {
	r.mu.Lock()
	r.batches = append(r.batches, msgs)
	r.from = append(r.from, from)
	r.mu.Unlock()
	r.got <- struct{}{}
}

func (r *recorder) HandleSnapshot(ctx context.Context, from ids.NodeID, stream io.Reader) error {
	r.mu.Lock()
	fail := r.snapErr
	r.mu.Unlock()
	if fail != nil {
		return fail
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

// testPKI is a cluster CA with helpers to issue node identities.
type testPKI struct {
	t  testing.TB
	ca *pki.CA
	v  *pki.Verifier
}

func newPKI(t testing.TB) *testPKI {
	// Created in the past, so that tests can issue already expired
	// certificates.
	ca, err := pki.NewCA("test", time.Now().Add(-72*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{t: t, ca: ca, v: pki.NewVerifier(ca.Cert)}
}

// issue returns an identity for node with a certificate valid from now+from
// for validity.
func (p *testPKI) issueAt(node ids.NodeID, now time.Time, validity time.Duration) (*pki.Identity, *x509.Certificate, crypto.Signer) {
	key, err := pki.NewNodeKey()
	if err != nil {
		p.t.Fatal(err)
	}
	cert, err := p.ca.IssueNode(key.Public(), node, []string{"127.0.0.1"}, now, validity)
	if err != nil {
		p.t.Fatal(err)
	}
	id, err := pki.NewIdentity(cert, nil, key)
	if err != nil {
		p.t.Fatal(err)
	}
	return id, cert, key
}

func (p *testPKI) issue(node ids.NodeID) *pki.Identity {
	id, _, _ := p.issueAt(node, time.Now(), 0)
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

// sendUntil resends a batch until the receiver has n messages: the first
// batches to a peer may be dropped while the connection is being set up.
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

func TestRaftBatchesBothWays(t *testing.T) {
	p := newPKI(t)
	r1, r2 := newRecorder(), newRecorder()
	e1 := p.endpoint(t, 1, r1, nil)
	e2 := p.endpoint(t, 2, r2, nil)
	connect(e1, e2)

	sendUntil(t, e1, 2, r2, 1, heartbeat(7, 1, 2, 0))
	sendUntil(t, e2, 1, r1, 1, heartbeat(7, 2, 1, 0))

	// In order, complete, from the right node.
	before := r2.count()
	for i := range 500 {
		if err := e1.Send(2, []transport.Message{heartbeat(7, 1, 2, uint64(i)), heartbeat(8, 1, 2, uint64(i))}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "1000 messages", func() bool { return r2.count() == before+1000 })
	r2.mu.Lock()
	var commits []uint64
	for i, b := range r2.batches {
		if r2.from[i] != 1 {
			t.Errorf("batch from %s, want node 1", r2.from[i])
		}
		for _, m := range b {
			if m.Group == 7 {
				commits = append(commits, m.Msg.Commit)
			}
		}
	}
	r2.mu.Unlock()
	commits = commits[len(commits)-500:]
	for i, c := range commits {
		if c != uint64(i) {
			t.Fatalf("message %d carries commit %d: out of order or lost", i, c)
		}
	}
	// One connection serves both directions.
	if d1, d2 := e1.Stats().ConnsDialed.Load(), e2.Stats().ConnsDialed.Load(); d1+d2 == 0 {
		t.Fatal("no connection dialed")
	}
	waitFor(t, "one live connection per side", func() bool { return e1.connectedPeers() == 1 && e2.connectedPeers() == 1 })
	s1, s2 := e1.peer(2).current(), e2.peer(1).current()
	if s1 == nil || s2 == nil || s1.dialer != s2.dialer || s1.peerInc != e2.incarnation || s2.peerInc != e1.incarnation {
		t.Fatalf("the two ends disagree on the connection in use")
	}
}

func TestUnknownPeerIsUnreachable(t *testing.T) {
	p := newPKI(t)
	e1 := p.endpoint(t, 1, newRecorder(), func(c *Config) { c.DialTimeout = 500 * time.Millisecond })
	if err := e1.Send(9, []transport.Message{heartbeat(1, 1, 2, 0)}); !errors.Is(err, transport.ErrUnreachable) {
		t.Fatalf("Send to unknown node: %v, want ErrUnreachable", err)
	}
	if _, err := e1.Call(context.Background(), 9, "x", nil); !errors.Is(err, transport.ErrUnreachable) {
		t.Fatalf("Call to unknown node: %v, want ErrUnreachable", err)
	}
	// A known address where nobody listens: unreachable after the dial fails,
	// and fails fast during the backoff.
	dead, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := dead.LocalAddr().String()
	dead.Close()
	e1.SetPeer(3, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := e1.Call(ctx, 3, "x", nil); !errors.Is(err, transport.ErrUnreachable) {
		t.Fatalf("Call to a dead address: %v, want ErrUnreachable", err)
	}
}

func TestSimultaneousDialsSettleOnOneConnection(t *testing.T) {
	p := newPKI(t)
	r1, r2 := newRecorder(), newRecorder()
	e1 := p.endpoint(t, 1, r1, nil)
	e2 := p.endpoint(t, 2, r2, nil)
	connect(e1, e2)
	var wg sync.WaitGroup
	for _, pair := range [][2]*Endpoint{{e1, e2}, {e2, e1}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pair[0].Send(pair[1].Node(), []transport.Message{heartbeat(1, 1, 2, 0)})
		}()
	}
	wg.Wait()
	sendUntil(t, e1, 2, r2, 2, heartbeat(1, 1, 2, 1))
	sendUntil(t, e2, 1, r1, 2, heartbeat(1, 2, 1, 1))
	waitFor(t, "agreement on one connection", func() bool {
		s1, s2 := e1.peer(2).current(), e2.peer(1).current()
		return s1 != nil && s2 != nil && s1.dialer == s2.dialer && s1.conn.LocalAddr().String() == s2.conn.RemoteAddr().String()
	})
}

func TestRPC(t *testing.T) {
	p := newPKI(t)
	e1 := p.endpoint(t, 1, newRecorder(), nil)
	e2 := p.endpoint(t, 2, newRecorder(), nil)
	connect(e1, e2)
	e2.Handle("echo", func(ctx context.Context, from ids.NodeID, req []byte) ([]byte, error) {
		return append([]byte(fmt.Sprintf("%d:", from)), req...), nil
	})
	e2.Handle("fail", func(ctx context.Context, from ids.NodeID, req []byte) ([]byte, error) {
		return nil, &transport.RPCError{Code: "conflict", Message: "version mismatch"}
	})
	e2.Handle("slow", func(ctx context.Context, from ids.NodeID, req []byte) ([]byte, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Many concurrent calls, each gets its own answer.
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

	var re *transport.RPCError
	if _, err := e1.Call(ctx, 2, "fail", nil); !errors.As(err, &re) || re.Code != "conflict" || re.Message != "version mismatch" {
		t.Fatalf("handler error: %v", err)
	}
	if _, err := e1.Call(ctx, 2, "nope", nil); !errors.As(err, &re) || re.Code != transport.RPCUnknownMethod {
		t.Fatalf("unknown method: %v", err)
	}
	// The deadline travels with the request: the server gives up too.
	short, cancel2 := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel2()
	start := time.Now()
	// Either side's deadline may fire first: the caller's own, or the
	// server's copy of it, answered as deadline_exceeded.
	_, err := e1.Call(short, 2, "slow", nil)
	if !errors.Is(err, context.DeadlineExceeded) && !(errors.As(err, &re) && re.Code == transport.RPCDeadline) {
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
}

func TestSnapshotWhileHeartbeatsFlow(t *testing.T) {
	p := newPKI(t)
	r1, r2 := newRecorder(), newRecorder()
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
	// Heartbeats keep arriving promptly during the transfer.
	var worst time.Duration
	for sent := 0; ; sent++ {
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
	r2 := newRecorder()
	r2.snapErr = errors.New("stale snapshot")
	e1 := p.endpoint(t, 1, newRecorder(), nil)
	e2 := p.endpoint(t, 2, r2, nil)
	connect(e1, e2)
	err := e1.SendSnapshot(context.Background(), 2, bytes.NewReader(make([]byte, 1<<20)))
	var ref *transport.Refusal
	if !errors.As(err, &ref) || ref.Message != "stale snapshot" {
		t.Fatalf("SendSnapshot = %v, want the receiver's refusal", err)
	}
}

func TestPeerRestartReconnects(t *testing.T) {
	p := newPKI(t)
	r1, r2 := newRecorder(), newRecorder()
	e1 := p.endpoint(t, 1, r1, nil)
	e2 := p.endpoint(t, 2, r2, nil)
	connect(e1, e2)
	sendUntil(t, e1, 2, r2, 1, heartbeat(1, 1, 2, 0))
	addr := e2.Addr().String()
	e2.Close()

	// A new process on the same address, with a fresh incarnation.
	r2b := newRecorder()
	e2b := p.endpoint(t, 2, r2b, func(c *Config) { c.Listen = addr })
	e2b.SetPeer(1, e1.Addr().String())
	start := time.Now()
	sendUntil(t, e1, 2, r2b, 1, heartbeat(1, 1, 2, 1))
	sendUntil(t, e2b, 1, r1, 1, heartbeat(1, 2, 1, 1))
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("reconnecting took %v", d)
	}
}

// rawDial connects to e with an arbitrary TLS client configuration, the way
// a misbehaving or foreign peer would.
func rawDial(t testing.TB, e *Endpoint, tlsConf *tls.Config) (*quic.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tlsConf.NextProtos = []string{transport.ALPN}
	tlsConf.InsecureSkipVerify = true
	tlsConf.MinVersion = tls.VersionTLS13
	return quic.DialAddr(ctx, e.Addr().String(), tlsConf, &quic.Config{})
}

func clientCert(id *pki.Identity) *tls.Config {
	return &tls.Config{GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return id.Certificate(), nil
	}}
}

// hello sends a hello claiming node claim on conn and returns the answer.
func hello(t testing.TB, conn *quic.Conn, claim ids.NodeID) (transport.FrameType, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return 0, nil, err
	}
	st.SetDeadline(time.Now().Add(5 * time.Second))
	h := transport.Hello{MinVersion: 1, MaxVersion: 1, Node: claim, Incarnation: 1}
	if err := transport.WriteFrame(st, transport.FrameHello, h.Encode(nil)); err != nil {
		return 0, nil, err
	}
	return transport.NewFrameReader(st, 4096).Next()
}

func TestHandshakeRefusals(t *testing.T) {
	p := newPKI(t)
	e1 := p.endpoint(t, 1, newRecorder(), nil)
	refusals := func(reason string) uint64 { return e1.Stats().Refusals()[reason] }

	t.Run("no client certificate", func(t *testing.T) {
		conn, err := rawDial(t, e1, &tls.Config{})
		if err == nil {
			// TLS 1.3 client auth fails after the client's handshake
			// completes: the first stream must fail.
			_, _, err = hello(t, conn, 5)
			conn.CloseWithError(0, "")
		}
		if err == nil {
			t.Fatal("a client without a certificate opened a stream")
		}
		waitFor(t, "refusal counted", func() bool { return refusals("no_certificate") > 0 })
	})
	t.Run("certificate from another CA", func(t *testing.T) {
		other := newPKI(t)
		conn, err := rawDial(t, e1, clientCert(other.issue(2)))
		if err == nil {
			_, _, err = hello(t, conn, 2)
			conn.CloseWithError(0, "")
		}
		if err == nil {
			t.Fatal("a certificate from another CA was accepted")
		}
		waitFor(t, "refusal counted", func() bool { return refusals("unknown_authority") > 0 })
	})
	t.Run("expired certificate", func(t *testing.T) {
		id, _, _ := p.issueAt(2, time.Now().Add(-48*time.Hour), 24*time.Hour)
		conn, err := rawDial(t, e1, clientCert(id))
		if err == nil {
			_, _, err = hello(t, conn, 2)
			conn.CloseWithError(0, "")
		}
		if err == nil {
			t.Fatal("an expired certificate was accepted")
		}
		waitFor(t, "refusal counted", func() bool { return refusals("expired") > 0 })
	})
	t.Run("valid certificate claiming another node", func(t *testing.T) {
		conn, err := rawDial(t, e1, clientCert(p.issue(2)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.CloseWithError(0, "")
		typ, payload, err := hello(t, conn, 3)
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
	})
	t.Run("dialer refuses a server with the wrong node ID", func(t *testing.T) {
		// Node 3's address actually answers as node 1.
		e4 := p.endpoint(t, 4, newRecorder(), nil)
		e4.SetPeer(3, e1.Addr().String())
		if _, err := e4.Call(context.Background(), 3, "x", nil); !errors.Is(err, transport.ErrUnreachable) {
			t.Fatalf("call to an impostor: %v", err)
		}
		if e4.Stats().Refusals()["node_id_mismatch"] == 0 {
			t.Fatalf("dialer refusals: %v", e4.Stats().Refusals())
		}
	})
	// Through all of it the endpoint kept serving its real peers.
	r2 := newRecorder()
	e2 := p.endpoint(t, 2, r2, nil)
	connect(e1, e2)
	sendUntil(t, e1, 2, r2, 1, heartbeat(1, 1, 2, 0))
}

func TestMalformedFramesCloseTheConnectionNotTheNode(t *testing.T) {
	p := newPKI(t)
	r1 := newRecorder()
	e1 := p.endpoint(t, 1, r1, nil)
	id2 := p.issue(2)

	cases := map[string][]byte{
		"garbage":         append([]byte{transport.StreamRaft}, bytes.Repeat([]byte{0xff}, 64)...),
		"oversized":       append([]byte{transport.StreamRaft}, 4, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0),
		"bad checksum":    append([]byte{transport.StreamRaft}, corrupt(transport.AppendFrame(nil, transport.FrameRaftBatch, []byte{1, 0}))...),
		"wrong frame":     append([]byte{transport.StreamRaft}, transport.AppendFrame(nil, transport.FrameHello, []byte{1})...),
		"bad batch":       append([]byte{transport.StreamRaft}, transport.AppendFrame(nil, transport.FrameRaftBatch, []byte{9, 9, 9})...),
		"unknown stream":  {'Z', 1, 2, 3},
		"local raft type": append([]byte{transport.StreamRaft}, localTypeFrame(t)...),
	}
	for name, payload := range cases {
		t.Run(name, func(t *testing.T) {
			before := e1.Stats().FrameErrors.Load()
			conn, err := rawDial(t, e1, clientCert(id2))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.CloseWithError(0, "")
			if typ, _, err := hello(t, conn, 2); err != nil || typ != transport.FrameHelloOK {
				t.Fatalf("hello: %v %v", typ, err)
			}
			st, err := conn.OpenUniStream()
			if err != nil {
				t.Fatal(err)
			}
			st.Write(payload)
			st.Close()
			select {
			case <-conn.Context().Done():
			case <-time.After(5 * time.Second):
				t.Fatal("the node kept a connection that broke the framing")
			}
			var ae *quic.ApplicationError
			if err := context.Cause(conn.Context()); !errors.As(err, &ae) || ae.ErrorCode != codeProtocol {
				t.Fatalf("connection closed with %v, want a protocol error", err)
			}
			if e1.Stats().FrameErrors.Load() <= before {
				t.Fatal("frame error not counted")
			}
		})
	}
	if r1.count() != 0 {
		t.Fatalf("%d messages from malformed input reached the handler", r1.count())
	}
	// The node still serves well-behaved peers.
	r2 := newRecorder()
	e2 := p.endpoint(t, 2, r2, nil)
	connect(e1, e2)
	sendUntil(t, e1, 2, r2, 1, heartbeat(1, 1, 2, 0))
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

func TestFilterDropsTraffic(t *testing.T) {
	p := newPKI(t)
	var mu sync.Mutex
	blocked := false
	filter := func(from, to ids.NodeID) bool {
		mu.Lock()
		defer mu.Unlock()
		return !blocked
	}
	r2 := newRecorder()
	e1 := p.endpoint(t, 1, newRecorder(), func(c *Config) { c.Filter = filter })
	e2 := p.endpoint(t, 2, r2, nil)
	connect(e1, e2)
	sendUntil(t, e1, 2, r2, 1, heartbeat(1, 1, 2, 0))
	mu.Lock()
	blocked = true
	mu.Unlock()
	n := r2.count()
	for range 20 {
		e1.Send(2, []transport.Message{heartbeat(1, 1, 2, 1)})
	}
	time.Sleep(200 * time.Millisecond)
	if r2.count() != n {
		t.Fatal("a filtered link delivered messages")
	}
	mu.Lock()
	blocked = false
	mu.Unlock()
	sendUntil(t, e1, 2, r2, n+1, heartbeat(1, 1, 2, 2))
}

// TestPathMetricsPerPeer checks that /metrics describes the QUIC path to each
// connected peer: packets sent grow with traffic, none are lost on loopback,
// and the RTT estimate and congestion window are set.
func TestPathMetricsPerPeer(t *testing.T) {
	p := newPKI(t)
	reg := prometheus.NewRegistry()
	r2 := newRecorder()
	e1 := p.endpoint(t, 1, newRecorder(), func(c *Config) { c.Registerer = reg })
	e2 := p.endpoint(t, 2, r2, nil)
	connect(e1, e2)
	sendUntil(t, e1, 2, r2, 1, heartbeat(7, 1, 2, 0))
	transporttest.CheckPathMetrics(t, e1, r2.count, reg, transporttest.PathMetricNames{Sent: "nodedb_transport_quic_packets_sent_total", Lost: "nodedb_transport_quic_packets_lost_total",
		SmoothedRTT: "nodedb_transport_quic_smoothed_rtt_seconds", CongestionWindow: "nodedb_transport_quic_congestion_window_bytes"})
}

// TestCloseDuringADial: a dial that completes while the endpoint is closing
// (after Close closed the peers' connections, while it waits for their
// goroutines) must not leave a connection that nothing closes: Close
// returns, and the call that dialed fails.
func TestCloseDuringADial(t *testing.T) {
	p := newPKI(t)
	e1 := p.endpoint(t, 1, newRecorder(), nil)
	e2 := p.endpoint(t, 2, newRecorder(), nil)
	e3 := p.endpoint(t, 3, newRecorder(), nil)
	connect(e1, e2, e3)
	e2.Handle("echo", func(ctx context.Context, from ids.NodeID, req []byte) ([]byte, error) { return req, nil })
	// A request in service on e1 that takes a while to end keeps Close
	// waiting for e1's goroutines after the connections are closed.
	serving := make(chan struct{})
	e1.Handle("linger", func(ctx context.Context, from ids.NodeID, req []byte) ([]byte, error) {
		close(serving)
		time.Sleep(300 * time.Millisecond)
		return nil, nil
	})
	go e3.Call(context.Background(), 1, "linger", nil)
	<-serving

	closed := make(chan struct{})
	var once sync.Once
	hook := func() {
		once.Do(func() {
			go func() {
				e1.Close()
				close(closed)
			}()
			// Let Close set its flag and close the peers' connections.
			waitFor(t, "close to begin", func() bool {
				e1.mu.Lock()
				defer e1.mu.Unlock()
				return e1.closed
			})
			time.Sleep(50 * time.Millisecond)
		})
	}
	testHookDialed.Store(&hook)
	t.Cleanup(func() { testHookDialed.Store(nil) })

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := e1.Call(ctx, 2, "echo", []byte("x")); err == nil {
		t.Error("a call whose endpoint closed during its dial succeeded")
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return: a connection registered during Close was left open")
	}
}
