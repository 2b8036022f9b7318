package quicnet

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/pki"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// issueWithCA returns an identity for node whose chain carries the CA
// certificate, as a node serving joins must be set up.
func (p *testPKI) issueWithCA(node ids.NodeID) *pki.Identity {
	id, err := p.ca.NewNodeIdentity(node, []string{"127.0.0.1"}, true)
	if err != nil {
		p.t.Fatal(err)
	}
	return id
}

// joinHandler counts the join requests it serves and echoes them.
type joinHandler struct {
	calls   atomic.Int64
	mu      sync.Mutex
	lastDL  time.Duration // the deadline the last call ran under, from its start
	block   chan struct{} // when set, calls wait for it
	running chan struct{} // when set, receives one value per call started
}

func (h *joinHandler) serve(ctx context.Context, req []byte) []byte {
	h.calls.Add(1)
	dl, ok := ctx.Deadline()
	h.mu.Lock()
	h.lastDL = -1
	if ok {
		h.lastDL = time.Until(dl)
	}
	h.mu.Unlock()
	if h.running != nil {
		h.running <- struct{}{}
	}
	if h.block != nil {
		select {
		case <-h.block:
		case <-ctx.Done():
		}
	}
	return append([]byte("joined:"), req...)
}

// joinEndpoint is an endpoint serving joins with h, its identity carrying
// the CA certificate unless bare.
func (p *testPKI) joinEndpoint(t testing.TB, node ids.NodeID, r transport.Handler, h *joinHandler, bare bool) *Endpoint {
	return p.endpoint(t, node, r, func(c *Config) {
		if !bare {
			c.Identity = p.issueWithCA(node)
		}
		c.Join = h.serve
	})
}

func joinCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// rawJoinDial opens a join connection without verifying the server, to
// play a misbehaving joiner.
func rawJoinDial(t testing.TB, e *Endpoint) *quic.Conn {
	t.Helper()
	conf := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{JoinALPN}, InsecureSkipVerify: true}
	conn, err := quic.DialAddr(joinCtx(t), e.Addr().String(), conf, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	return conn
}

// rawJoinRequest writes b on a new stream of conn and reads one frame back.
func rawJoinRequest(t testing.TB, conn *quic.Conn, b []byte) (transport.FrameType, []byte, error) {
	t.Helper()
	st, err := conn.OpenStreamSync(joinCtx(t))
	if err != nil {
		return 0, nil, err
	}
	st.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := st.Write(b); err != nil {
		return 0, nil, err
	}
	st.Close()
	return transport.NewFrameReader(st, 1<<20).Next()
}

func TestJoinRoundTrip(t *testing.T) {
	p := newPKI(t)
	h := &joinHandler{}
	r1 := newRecorder()
	e1 := p.joinEndpoint(t, 1, r1, h, false)

	resp, ca, err := Join(joinCtx(t), e1.Addr().String(), p.ca.PublicKeyHash(), []byte("token+csr"))
	if err != nil {
		t.Fatal(err)
	}
	if string(resp) != "joined:token+csr" {
		t.Fatalf("response %q", resp)
	}
	if ca == nil || !ca.Equal(p.ca.Cert) {
		t.Fatal("Join did not return the cluster CA")
	}
	h.mu.Lock()
	dl := h.lastDL
	h.mu.Unlock()
	if dl < JoinTimeout-5*time.Second || dl > JoinTimeout {
		t.Fatalf("the handler ran with %v left, want about %v", dl, JoinTimeout)
	}
	// The largest request passes; an empty one too.
	big := bytes.Repeat([]byte{'x'}, MaxJoinRequestBytes)
	if resp, _, err := Join(joinCtx(t), e1.Addr().String(), p.ca.PublicKeyHash(), big); err != nil || len(resp) != len("joined:")+len(big) {
		t.Fatalf("request of MaxJoinRequestBytes: %v", err)
	}
	if resp, _, err := Join(joinCtx(t), e1.Addr().String(), p.ca.PublicKeyHash(), nil); err != nil || string(resp) != "joined:" {
		t.Fatalf("empty request: %q %v", resp, err)
	}
	if h.calls.Load() != 3 || e1.JoinStats().Requests.Load() != 3 || e1.JoinStats().Conns.Load() != 3 {
		t.Fatalf("calls %d, stats requests %d conns %d", h.calls.Load(), e1.JoinStats().Requests.Load(), e1.JoinStats().Conns.Load())
	}
	// A join connection is not a peer.
	if e1.Stats().ConnsAccepted.Load() != 0 || e1.connectedPeers() != 0 {
		t.Fatal("a join connection became a session")
	}
	// Cluster traffic is unaffected by the join channel and by the CA in
	// the chain.
	r2 := newRecorder()
	e2 := p.joinEndpoint(t, 2, r2, &joinHandler{}, false)
	connect(e1, e2)
	sendUntil(t, e1, 2, r2, 1, heartbeat(1, 1, 2, 0))
	sendUntil(t, e2, 1, r1, 1, heartbeat(1, 2, 1, 0))
}

func TestJoinRefusesAServerOfAnotherCA(t *testing.T) {
	p, other := newPKI(t), newPKI(t)
	h := &joinHandler{}
	e1 := p.joinEndpoint(t, 1, newRecorder(), h, false)
	hOther := &joinHandler{}
	eOther := other.joinEndpoint(t, 1, newRecorder(), hOther, false)

	cases := []struct {
		name string
		e    *Endpoint
		hash string
	}{
		{"the token of another cluster", e1, other.ca.PublicKeyHash()},
		{"a server of another cluster", eOther, p.ca.PublicKeyHash()},
	}
	for _, c := range cases {
		resp, ca, err := Join(joinCtx(t), c.e.Addr().String(), c.hash, []byte("secret"))
		if !errors.Is(err, ErrCAMismatch) || resp != nil || ca != nil {
			t.Errorf("%s: %v, want ErrCAMismatch", c.name, err)
		}
	}
	if _, _, err := Join(joinCtx(t), e1.Addr().String(), "sha256:1234", []byte("secret")); !errors.Is(err, pki.ErrBadPublicKeyHash) {
		t.Errorf("malformed hash: %v", err)
	}
	time.Sleep(100 * time.Millisecond)
	if n := h.calls.Load() + hOther.calls.Load(); n != 0 {
		t.Fatalf("the join handler was called %d times: the request left before verification", n)
	}
}

func TestJoinRefusesAServerWithoutTheCAInItsChain(t *testing.T) {
	p := newPKI(t)
	h := &joinHandler{}
	e1 := p.joinEndpoint(t, 1, newRecorder(), h, true)
	_, ca, err := Join(joinCtx(t), e1.Addr().String(), p.ca.PublicKeyHash(), []byte("secret"))
	if !errors.Is(err, ErrCAMismatch) || ca != nil {
		t.Fatalf("Join: %v, want ErrCAMismatch", err)
	}
	time.Sleep(100 * time.Millisecond)
	if h.calls.Load() != 0 {
		t.Fatal("the join handler was called")
	}
}

func TestJoinNotOfferedWithoutHandler(t *testing.T) {
	p := newPKI(t)
	e1 := p.endpoint(t, 1, newRecorder(), func(c *Config) { c.Identity = p.issueWithCA(1) })
	if _, _, err := Join(joinCtx(t), e1.Addr().String(), p.ca.PublicKeyHash(), []byte("x")); err == nil {
		t.Fatal("an endpoint without Config.Join served a join")
	}
}

func TestJoinRequestBound(t *testing.T) {
	p := newPKI(t)
	h := &joinHandler{}
	e1 := p.joinEndpoint(t, 1, newRecorder(), h, false)

	// The client does not even connect.
	if _, _, err := Join(joinCtx(t), e1.Addr().String(), p.ca.PublicKeyHash(), make([]byte, MaxJoinRequestBytes+1)); err == nil {
		t.Fatal("an oversized request was sent")
	}
	// A joiner announcing more is refused on the header alone.
	conn := rawJoinDial(t, e1)
	hdr := transport.AppendFrame(nil, transport.FrameRPCRequest, make([]byte, MaxJoinRequestBytes+1))[:transport.FrameHeaderSize]
	typ, payload, err := rawJoinRequest(t, conn, hdr)
	if err != nil {
		t.Fatal(err)
	}
	r, derr := transport.DecodeRefusal(payload)
	if typ != transport.FrameRefuse || derr != nil || r.Reason != "too_large" {
		t.Fatalf("answer %s %+v, want a too_large refusal", typ, r)
	}
	// Sent whole, as a client that does not check the bound would: the
	// endpoint stops the stream's sending side (STOP_SENDING), which fails
	// the client's write, and the refusal still arrives on the other side.
	whole := transport.AppendFrame(nil, transport.FrameRPCRequest, make([]byte, MaxJoinRequestBytes+1))
	for i := range 5 {
		st, err := rawJoinDial(t, e1).OpenStreamSync(joinCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		st.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = st.Write(whole)
		typ, payload, err := transport.NewFrameReader(st, 1<<20).Next()
		if err != nil {
			t.Fatalf("whole oversized request %d: %v, want a too_large refusal", i, err)
		}
		if r, _ := transport.DecodeRefusal(payload); typ != transport.FrameRefuse || r.Reason != "too_large" {
			t.Fatalf("whole oversized request %d: answer %s %+v, want a too_large refusal", i, typ, r)
		}
	}
	// Other frame types and corrupt frames are refused too.
	for name, b := range map[string][]byte{
		"hello":        transport.AppendFrame(nil, transport.FrameHello, (&transport.Hello{MinVersion: 1, MaxVersion: 1, Node: 5}).Encode(nil)),
		"bad checksum": corrupt(transport.AppendFrame(nil, transport.FrameRPCRequest, []byte("secret"))),
		"truncated":    transport.AppendFrame(nil, transport.FrameRPCRequest, []byte("secret"))[:12],
	} {
		typ, payload, err := rawJoinRequest(t, conn, b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if r, _ := transport.DecodeRefusal(payload); typ != transport.FrameRefuse || r.Reason != "malformed" {
			t.Fatalf("%s: answer %s %+v, want a malformed refusal", name, typ, r)
		}
	}
	if h.calls.Load() != 0 {
		t.Fatal("the join handler was called")
	}
	if e1.JoinStats().Refused.Load() != 9 {
		t.Fatalf("refused %d, want 9 (4 + 5 whole oversized requests)", e1.JoinStats().Refused.Load())
	}
	// The connection still serves a good request.
	typ, payload, err = rawJoinRequest(t, conn, transport.AppendFrame(nil, transport.FrameRPCRequest, []byte("ok")))
	if err != nil || typ != transport.FrameRPCResponse || string(payload) != "joined:ok" {
		t.Fatalf("good request after refusals: %s %q %v", typ, payload, err)
	}
}

func TestClusterALPNStillRequiresACertificate(t *testing.T) {
	p := newPKI(t)
	e1 := p.joinEndpoint(t, 1, newRecorder(), &joinHandler{}, false)
	for name, protos := range map[string][]string{
		"cluster ALPN":          {transport.ALPN},
		"cluster and join ALPN": {transport.ALPN, JoinALPN},
		"join and cluster ALPN": {JoinALPN, transport.ALPN},
	} {
		before := e1.Stats().Refusals()["no_certificate"]
		conf := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: protos, InsecureSkipVerify: true}
		conn, err := quic.DialAddr(joinCtx(t), e1.Addr().String(), conf, &quic.Config{})
		if err == nil {
			if np := conn.ConnectionState().TLS.NegotiatedProtocol; np != transport.ALPN {
				t.Fatalf("%s: negotiated %q", name, np)
			}
			_, _, err = hello(t, conn, 5)
			conn.CloseWithError(0, "")
		}
		if err == nil {
			t.Fatalf("%s: a client without a certificate opened a stream", name)
		}
		waitFor(t, "refusal counted", func() bool { return e1.Stats().Refusals()["no_certificate"] > before })
	}
	if e1.JoinStats().Conns.Load() != 0 {
		t.Fatal("a cluster connection was served as a join connection")
	}
}

func TestJoinConnectionCannotReachTheCluster(t *testing.T) {
	p := newPKI(t)
	h := &joinHandler{}
	r1 := newRecorder()
	e1 := p.joinEndpoint(t, 1, r1, h, false)
	var rpcs atomic.Int64
	e1.Handle("echo", func(ctx context.Context, from ids.NodeID, req []byte) ([]byte, error) {
		rpcs.Add(1)
		return req, nil
	})

	// An RPC stream: the kind byte is no join frame.
	conn := rawJoinDial(t, e1)
	req := transport.RPCRequest{ID: 1, Method: "echo", Body: []byte("x")}
	rpc := append([]byte{transport.StreamRPC}, transport.AppendFrame(nil, transport.FrameRPCRequest, req.Encode(nil))...)
	typ, payload, err := rawJoinRequest(t, conn, rpc)
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := transport.DecodeRefusal(payload); typ != transport.FrameRefuse || r.Reason != "malformed" {
		t.Fatalf("RPC stream on a join connection: answer %s %+v", typ, r)
	}
	// A hello, then Raft batches: the connection is closed.
	if typ, _, err := hello(t, conn, 2); err != nil || typ != transport.FrameRefuse {
		t.Fatalf("hello on a join connection: %s %v", typ, err)
	}
	batch, err := transport.EncodeBatch(nil, []transport.Message{{Group: 1, Msg: raftpb.Message{Type: raftpb.MsgHeartbeat, From: 2, To: 1, Term: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	st, err := conn.OpenUniStream()
	if err != nil {
		t.Fatal(err)
	}
	st.Write(append([]byte{transport.StreamRaft}, transport.AppendFrame(nil, transport.FrameRaftBatch, batch)...))
	st.Close()
	select {
	case <-conn.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a join connection that opened a raft stream was kept")
	}
	var ae *quic.ApplicationError
	if err := context.Cause(conn.Context()); !errors.As(err, &ae) || ae.ErrorCode != codeProtocol {
		t.Fatalf("connection closed with %v, want a protocol error", err)
	}
	time.Sleep(100 * time.Millisecond)
	if r1.count() != 0 || rpcs.Load() != 0 || h.calls.Load() != 0 {
		t.Fatalf("delivered: %d raft messages, %d RPCs, %d join calls", r1.count(), rpcs.Load(), h.calls.Load())
	}
	if e1.Stats().ConnsAccepted.Load() != 0 || e1.connectedPeers() != 0 {
		t.Fatal("a join connection became a session")
	}
}

func TestJoinStreamsPerConnectionBounded(t *testing.T) {
	p := newPKI(t)
	h := &joinHandler{block: make(chan struct{}), running: make(chan struct{}, 16)}
	e1 := p.joinEndpoint(t, 1, newRecorder(), h, false)
	conn := rawJoinDial(t, e1)

	type result struct {
		typ transport.FrameType
		err error
	}
	results := make(chan result, JoinStreamsPerConn+1)
	send := func() {
		typ, _, err := rawJoinRequest(t, conn, transport.AppendFrame(nil, transport.FrameRPCRequest, []byte("r")))
		results <- result{typ, err}
	}
	for range JoinStreamsPerConn {
		go send()
	}
	for range JoinStreamsPerConn {
		select {
		case <-h.running:
		case <-time.After(5 * time.Second):
			t.Fatal("requests not in service")
		}
	}
	go send()
	select {
	case r := <-results:
		var se *quic.StreamError
		if !errors.As(r.err, &se) || se.ErrorCode != streamJoinBusy {
			t.Fatalf("request beyond the limit: %s %v, want a busy stream reset", r.typ, r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the request beyond the limit was not reset")
	}
	close(h.block)
	for range JoinStreamsPerConn {
		if r := <-results; r.err != nil || r.typ != transport.FrameRPCResponse {
			t.Fatalf("request in service: %s %v", r.typ, r.err)
		}
	}
	if h.calls.Load() != JoinStreamsPerConn {
		t.Fatalf("%d calls", h.calls.Load())
	}
}

// TestJoinBusyIsARefusal: a joiner turned away because the node serves as
// many join connections as it allows gets a *transport.Refusal with reason
// busy, which the joining node retries, not a bare QUIC error.
func TestJoinBusyIsARefusal(t *testing.T) {
	p := newPKI(t)
	h := &joinHandler{}
	e1 := p.joinEndpoint(t, 1, newRecorder(), h, false)
	for range MaxJoinConns {
		rawJoinDial(t, e1)
	}
	waitFor(t, "every join slot taken", func() bool { return e1.JoinStats().Conns.Load() == MaxJoinConns })
	_, _, err := Join(joinCtx(t), e1.Addr().String(), p.ca.PublicKeyHash(), []byte("r"))
	var rf *transport.Refusal
	if !errors.As(err, &rf) || rf.Reason != transport.RefusalBusy {
		t.Fatalf("join beyond the connection limit: %v, want a busy refusal", err)
	}
	if h.calls.Load() != 0 {
		t.Fatalf("%d join calls", h.calls.Load())
	}
	if got := joinRefusal(errors.New("other")); got.Error() != "other" {
		t.Fatalf("joinRefusal changed an unrelated error: %v", got)
	}
}

func TestIdleJoinConnectionIsClosed(t *testing.T) {
	p := newPKI(t)
	saved := joinIdleTimeout
	joinIdleTimeout = 200 * time.Millisecond
	e1 := p.joinEndpoint(t, 1, newRecorder(), &joinHandler{}, false) // copies the timeout
	joinIdleTimeout = saved
	conn := rawJoinDial(t, e1)
	// A request resets the idle timer, then the connection goes.
	if typ, _, err := rawJoinRequest(t, conn, transport.AppendFrame(nil, transport.FrameRPCRequest, nil)); err != nil || typ != transport.FrameRPCResponse {
		t.Fatalf("request: %s %v", typ, err)
	}
	select {
	case <-conn.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("idle join connection kept open")
	}
}

func TestJoinEndpointCloseWithRequestInService(t *testing.T) {
	p := newPKI(t)
	h := &joinHandler{block: make(chan struct{}), running: make(chan struct{}, 1)}
	e1 := p.joinEndpoint(t, 1, newRecorder(), h, false)
	errc := make(chan error, 1)
	go func() {
		_, _, err := Join(joinCtx(t), e1.Addr().String(), p.ca.PublicKeyHash(), []byte("x"))
		errc <- err
	}()
	<-h.running
	done := make(chan struct{})
	go func() {
		e1.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close waits for a join handler")
	}
	if err := <-errc; err == nil {
		t.Fatal("a join cut by Close succeeded")
	}
}
