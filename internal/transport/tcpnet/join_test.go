package tcpnet

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/pki"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// echoJoin counts the join requests it serves and echoes them.
type echoJoin struct{ calls atomic.Int64 }

func (h *echoJoin) serve(ctx context.Context, req []byte) []byte {
	h.calls.Add(1)
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > transport.JoinTimeout {
		return []byte("no deadline")
	}
	return append([]byte("joined:"), req...)
}

func (p *testPKI) joinEndpoint(t testing.TB, node ids.NodeID, h *echoJoin, bare bool) *Endpoint {
	return p.endpoint(t, node, &recorder{}, func(c *Config) {
		if !bare {
			c.Identity = p.identity(node, true)
		}
		c.Join = h.serve
	})
}

func joinCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// rawJoin sends b on a join connection that does not verify the server (a
// misbehaving joiner) and reads one frame back.
func rawJoin(t testing.TB, e *Endpoint, b []byte) (transport.FrameType, []byte, error) {
	t.Helper()
	c, err := rawDial(t, e, &tls.Config{NextProtos: []string{transport.JoinALPN}})
	if err != nil {
		return 0, nil, err
	}
	defer c.Close()
	if _, err := c.Write(b); err != nil {
		return 0, nil, err
	}
	return transport.NewFrameReader(c, 1<<20).Next()
}

func TestJoinRoundTrip(t *testing.T) {
	p := newPKI(t)
	h := &echoJoin{}
	e1 := p.joinEndpoint(t, 1, h, false)
	resp, ca, err := Join(joinCtx(t), e1.Addr().String(), p.ca.PublicKeyHash(), []byte("token+csr"))
	if err != nil {
		t.Fatal(err)
	}
	if string(resp) != "joined:token+csr" || ca == nil || !ca.Equal(p.ca.Cert) {
		t.Fatalf("response %q, CA returned %v", resp, ca != nil)
	}
	big := bytes.Repeat([]byte{'x'}, transport.MaxJoinRequestBytes)
	if resp, _, err := Join(joinCtx(t), e1.Addr().String(), p.ca.PublicKeyHash(), big); err != nil || len(resp) != len("joined:")+len(big) {
		t.Fatalf("request of MaxJoinRequestBytes: %v", err)
	}
	if h.calls.Load() != 2 || e1.JoinStats().Requests.Load() != 2 || e1.JoinStats().Conns.Load() != 2 {
		t.Fatalf("calls %d, stats %d requests %d conns", h.calls.Load(), e1.JoinStats().Requests.Load(), e1.JoinStats().Conns.Load())
	}
	if e1.Stats().ConnsAccepted.Load() != 0 {
		t.Fatal("a join connection became a peer connection")
	}
	// Cluster traffic on the same port is unaffected.
	r2 := &recorder{}
	e2 := p.endpoint(t, 2, r2, nil)
	connect(e1, e2)
	sendUntil(t, e1, 2, r2, 1, heartbeat(1, 1, 2, 0))
	if s := e1.PeerState(2); s != transport.PeerConnected {
		t.Fatalf("peer state %v after sending, want connected", s)
	}
}

// TestJoinSendsNothingToAnUnprovenServer is PITFALLS 18 over TCP: the
// request, which carries the token's secret, never leaves unless the server
// proved it belongs to the token's CA.
func TestJoinSendsNothingToAnUnprovenServer(t *testing.T) {
	p, other := newPKI(t), newPKI(t)
	h, hOther, hBare := &echoJoin{}, &echoJoin{}, &echoJoin{}
	e1 := p.joinEndpoint(t, 1, h, false)
	eOther := other.joinEndpoint(t, 1, hOther, false)
	eBare := p.joinEndpoint(t, 2, hBare, true)
	for name, c := range map[string]struct {
		e    *Endpoint
		hash string
	}{
		"the token of another cluster":       {e1, other.ca.PublicKeyHash()},
		"a server of another cluster":        {eOther, p.ca.PublicKeyHash()},
		"a server without the CA in a chain": {eBare, p.ca.PublicKeyHash()},
	} {
		resp, ca, err := Join(joinCtx(t), c.e.Addr().String(), c.hash, []byte("secret"))
		if !errors.Is(err, transport.ErrCAMismatch) || resp != nil || ca != nil {
			t.Errorf("%s: %v, want ErrCAMismatch", name, err)
		}
	}
	if _, _, err := Join(joinCtx(t), e1.Addr().String(), "sha256:1234", []byte("secret")); !errors.Is(err, pki.ErrBadPublicKeyHash) {
		t.Errorf("malformed hash: %v", err)
	}
	time.Sleep(100 * time.Millisecond)
	if n := h.calls.Load() + hOther.calls.Load() + hBare.calls.Load(); n != 0 {
		t.Fatalf("the join handler was called %d times: the request left before verification", n)
	}
	// Without a join handler, no join is served at all.
	plain := p.endpoint(t, 3, &recorder{}, func(c *Config) { c.Identity = p.identity(3, true) })
	if _, _, err := Join(joinCtx(t), plain.Addr().String(), p.ca.PublicKeyHash(), []byte("x")); err == nil {
		t.Fatal("an endpoint without Config.Join served a join")
	}
}

// TestJoinBusyIsARefusal: a joiner turned away because the node serves as
// many join connections as it allows reads a busy refusal, which the joining
// node retries, as over QUIC.
func TestJoinBusyIsARefusal(t *testing.T) {
	p := newPKI(t)
	h := &echoJoin{}
	e1 := p.joinEndpoint(t, 1, h, false)
	// Joiners that never send their request hold every slot.
	for range transport.MaxJoinConns {
		c, err := rawDial(t, e1, &tls.Config{NextProtos: []string{transport.JoinALPN}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	waitFor(t, "every join slot taken", func() bool { return e1.JoinStats().Conns.Load() == transport.MaxJoinConns })
	_, _, err := Join(joinCtx(t), e1.Addr().String(), p.ca.PublicKeyHash(), []byte("r"))
	var rf *transport.Refusal
	if !errors.As(err, &rf) || rf.Reason != transport.RefusalBusy {
		t.Fatalf("join beyond the connection limit: %v, want a busy refusal", err)
	}
	if h.calls.Load() != 0 {
		t.Fatalf("%d join calls", h.calls.Load())
	}
}

func TestJoinRequestBound(t *testing.T) {
	p := newPKI(t)
	h := &echoJoin{}
	e1 := p.joinEndpoint(t, 1, h, false)
	if _, _, err := Join(joinCtx(t), e1.Addr().String(), p.ca.PublicKeyHash(), make([]byte, transport.MaxJoinRequestBytes+1)); err == nil {
		t.Fatal("an oversized request was sent")
	}
	for name, tc := range map[string]struct {
		b      []byte
		reason string
	}{
		"announces too much": {transport.AppendFrame(nil, transport.FrameRPCRequest, make([]byte, transport.MaxJoinRequestBytes+1))[:transport.FrameHeaderSize], "too_large"},
		"a hello":            {transport.AppendFrame(nil, transport.FrameHello, (&transport.Hello{MinVersion: 1, MaxVersion: 1, Node: 5}).Encode(nil)), "malformed"},
		"bad checksum":       {corrupt(transport.AppendFrame(nil, transport.FrameRPCRequest, []byte("secret"))), "malformed"},
	} {
		typ, payload, err := rawJoin(t, e1, tc.b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if r, _ := transport.DecodeRefusal(payload); typ != transport.FrameRefuse || r.Reason != tc.reason {
			t.Fatalf("%s: answer %s %+v, want a %s refusal", name, typ, r, tc.reason)
		}
	}
	if h.calls.Load() != 0 || e1.JoinStats().Refused.Load() != 3 {
		t.Fatalf("handler calls %d, refused %d", h.calls.Load(), e1.JoinStats().Refused.Load())
	}
	// An oversized request sent whole, as a client that does not check the
	// bound would: the refusal must reach it, not a connection reset (closing
	// a TCP connection with unread input resets it, and a reset discards
	// what the client has not read yet).
	whole := transport.AppendFrame(nil, transport.FrameRPCRequest, make([]byte, transport.MaxJoinRequestBytes+1))
	for i := range 10 {
		typ, payload, err := rawJoin(t, e1, whole)
		if err != nil {
			t.Fatalf("whole oversized request %d: %v, want a too_large refusal", i, err)
		}
		if r, _ := transport.DecodeRefusal(payload); typ != transport.FrameRefuse || r.Reason != "too_large" {
			t.Fatalf("whole oversized request %d: answer %s %+v, want a too_large refusal", i, typ, r)
		}
	}
	// A joiner's connection can never be a peer's: the cluster ALPN still
	// needs a node certificate.
	c, err := rawDial(t, e1, &tls.Config{})
	if err == nil {
		_, _, err = hello(c, 5, transport.StreamRaft)
		c.Close()
	}
	if err == nil {
		t.Fatal("a client without a certificate passed the hello")
	}
}
