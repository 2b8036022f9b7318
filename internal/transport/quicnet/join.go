package quicnet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// Joining (the protocol is described in internal/transport/join.go): a
// join connection carries its requests on bidirectional streams, up to
// JoinStreamsPerConn at once, each one request and one answer; it is never
// a cluster session, and its streams reach only Config.Join.

// Names of the join channel, from package transport.
const (
	JoinALPN             = transport.JoinALPN
	MaxJoinRequestBytes  = transport.MaxJoinRequestBytes
	MaxJoinResponseBytes = transport.MaxJoinResponseBytes
	JoinTimeout          = transport.JoinTimeout
	MaxJoinConns         = transport.MaxJoinConns
)

// JoinStreamsPerConn bounds the requests one join connection may have in
// service at once; streams beyond it are reset.
const JoinStreamsPerConn = 4

// Timeouts of join connections, variables for tests.
var (
	// joinIdleTimeout closes a join connection with no request in service
	// for this long.
	joinIdleTimeout = 30 * time.Second
	// joinIOTimeout bounds reading a request and writing its answer.
	joinIOTimeout = 10 * time.Second
)

const (
	codeJoinBusy   quic.ApplicationErrorCode = 4 // too many join connections
	streamJoinBusy quic.StreamErrorCode      = 4 // too many join requests on the connection
)

// ErrCAMismatch is returned by Join when the server did not prove that it is
// a node of the cluster whose CA public key hash the joiner holds. It is
// pki.ErrCAMismatch.
var ErrCAMismatch = transport.ErrCAMismatch

// JoinStats counts the join channel's traffic.
type JoinStats = transport.JoinStats

// JoinStats returns the counters of the join channel (all zero when
// Config.Join is nil).
func (e *Endpoint) JoinStats() *JoinStats {
	if e.join == nil {
		return &JoinStats{}
	}
	return &e.join.stats
}

// joinServer serves join connections for an endpoint whose Config.Join is
// set.
type joinServer struct {
	e     *Endpoint
	tls   *tls.Config   // the TLS configuration of join handshakes
	conns chan struct{} // bounds the join connections in service
	stats JoinStats

	idleTimeout, ioTimeout time.Duration
}

func newJoinServer(e *Endpoint) *joinServer {
	id := e.cfg.Identity
	j := &joinServer{
		e:           e,
		conns:       make(chan struct{}, MaxJoinConns),
		idleTimeout: joinIdleTimeout,
		ioTimeout:   joinIOTimeout,
		tls:         transport.JoinServerTLS(id),
	}
	if !transport.ChainHasCA(id.Certificate()) {
		e.cfg.Logger.Warn("quicnet: Config.Join is set but the identity's certificate chain does not include the CA certificate that issued it; joiners will refuse this node")
	}
	transport.RegisterJoinMetrics(e.cfg.Registerer, &j.stats, e.cfg.Logger)
	return j
}

// configForClient picks the join configuration for a client that offers
// JoinALPN and not the cluster ALPN; every other client gets the cluster
// configuration (nil), which requires and verifies a node certificate as
// before.
func (j *joinServer) configForClient(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	if transport.IsJoinHello(hello) {
		return j.tls, nil
	}
	return nil, nil
}

// serve serves one join connection until it closes, goes idle, or the
// endpoint closes.
func (j *joinServer) serve(conn *quic.Conn) {
	select {
	case j.conns <- struct{}{}:
	default:
		j.stats.Refused.Add(1)
		conn.CloseWithError(codeJoinBusy, "too many join connections")
		return
	}
	defer func() { <-j.conns }()
	j.stats.Conns.Add(1)

	// Cancelled when the endpoint closes or this function returns; either
	// way the connection goes, so no stream outlives it.
	ctx, cancel := context.WithCancel(j.e.ctx)
	context.AfterFunc(ctx, func() { conn.CloseWithError(codeNormal, "") })
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()

	idle := &idleCloser{d: j.idleTimeout, t: time.AfterFunc(j.idleTimeout, func() { conn.CloseWithError(codeNormal, "idle") })}
	defer idle.t.Stop()

	// A join connection has no use for unidirectional streams (Raft batches
	// travel on them): one is a protocol error.
	wg.Add(1)
	go func() {
		defer wg.Done()
		if st, err := conn.AcceptUniStream(ctx); err == nil {
			st.CancelRead(streamProtocol)
			j.stats.Refused.Add(1)
			conn.CloseWithError(codeProtocol, "unidirectional stream on a join connection")
		}
	}()

	slots := make(chan struct{}, JoinStreamsPerConn)
	for {
		st, err := conn.AcceptStream(ctx)
		if err != nil {
			return
		}
		select {
		case slots <- struct{}{}:
		default:
			j.stats.Refused.Add(1)
			st.CancelRead(streamJoinBusy)
			st.CancelWrite(streamJoinBusy)
			continue
		}
		idle.begin()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				<-slots
				idle.end()
			}()
			j.serveStream(ctx, conn, st)
		}()
	}
}

// serveStream reads one request, hands it to Config.Join and writes the
// answer.
func (j *joinServer) serveStream(ctx context.Context, conn *quic.Conn, st *quic.Stream) {
	defer st.CancelRead(0) // whatever else the joiner sends is not read
	st.SetReadDeadline(time.Now().Add(j.ioTimeout))
	st.SetWriteDeadline(time.Now().Add(j.ioTimeout))
	req, refusal, err := transport.ReadJoinRequest(st)
	switch {
	case refusal != nil:
		j.refuse(conn, st, refusal.Reason, refusal.Message)
		return
	case err != nil:
		st.CancelWrite(streamProtocol)
		return
	}
	st.SetWriteDeadline(time.Time{})
	hctx, cancel := context.WithTimeout(ctx, JoinTimeout)
	j.stats.Requests.Add(1)
	resp := j.e.cfg.Join(hctx, req)
	cancel()
	if ctx.Err() != nil {
		// The endpoint is closing or the connection went: the joiner sees
		// the connection fail rather than an answer from a handler whose
		// context was cancelled under it (as Endpoint.Close does for RPCs).
		st.CancelWrite(0)
		return
	}
	if len(resp) > MaxJoinResponseBytes {
		j.e.cfg.Logger.Error("quicnet: join handler answered more than the join channel carries", "bytes", len(resp), "max", MaxJoinResponseBytes)
		j.refuse(conn, st, "internal", "join response too large")
		return
	}
	st.SetWriteDeadline(time.Now().Add(j.ioTimeout))
	if err := transport.WriteFrame(st, transport.FrameRPCResponse, resp); err != nil {
		st.CancelWrite(0)
		return
	}
	st.Close()
}

func (j *joinServer) refuse(conn *quic.Conn, st *quic.Stream, reason, msg string) {
	j.stats.Refused.Add(1)
	j.e.cfg.Logger.Warn("refused join request", "remote", conn.RemoteAddr(), "reason", reason, "msg", msg)
	r := transport.Refusal{Reason: reason, Message: msg}
	if err := transport.WriteFrame(st, transport.FrameRefuse, r.Encode(nil)); err != nil {
		st.CancelWrite(0)
		return
	}
	st.Close()
}

// idleCloser runs its timer's function once no request has been in service
// for the idle timeout.
type idleCloser struct {
	d      time.Duration
	t      *time.Timer
	mu     sync.Mutex
	active int
}

func (c *idleCloser) begin() {
	c.mu.Lock()
	c.active++
	c.t.Stop()
	c.mu.Unlock()
}

func (c *idleCloser) end() {
	c.mu.Lock()
	c.active--
	if c.active == 0 {
		c.t.Reset(c.d)
	}
	c.mu.Unlock()
}

// Join sends one join request to the node at addr (host:port of its QUIC
// endpoint) and returns its answer and the cluster CA certificate.
//
// It connects without a client certificate, with ALPN JoinALPN, and accepts
// the server only if the certificates it presents include a CA certificate
// whose public key hash is caHash ("sha256:<64 hex>", from the join token)
// and its own certificate is a node certificate issued by exactly that CA
// and valid now (pki.VerifyPinned). Otherwise it fails with an error
// matching ErrCAMismatch (or the pki error of the certificate), and req,
// which carries the token's secret, is never sent: the request goes out only
// after the TLS handshake has completed with that verification.
//
// The returned CA certificate is the verified one: the joiner may trust it
// from now on (store it as ca.crt). A node that refuses the request answers
// with a *transport.Refusal (errors.As), reason "too_large" or "malformed";
// req larger than MaxJoinRequestBytes fails without connecting.
func Join(ctx context.Context, addr string, caHash string, req []byte) (resp []byte, ca *x509.Certificate, err error) {
	if err := transport.CheckJoinRequest(caHash, req); err != nil {
		return nil, nil, fmt.Errorf("quicnet: join: %w", err)
	}
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("quicnet: join: address %q: %w", addr, err)
	}
	udp, err := net.ListenUDP("udp", nil)
	if err != nil {
		return nil, nil, fmt.Errorf("quicnet: join: %w", err)
	}
	defer udp.Close()
	// A send the local kernel refuses is a lost packet here too
	// (refusalsAsLoss); a join has no metrics, so the count is dropped.
	qt := &quic.Transport{Conn: refusalsAsLoss{UDPConn: udp, refused: new(atomic.Uint64)}}
	defer qt.Close()

	tlsConf, verified := transport.JoinClientTLS(caHash)
	qconf := &quic.Config{
		HandshakeIdleTimeout:  10 * time.Second,
		MaxIdleTimeout:        JoinTimeout + 10*time.Second,
		KeepAlivePeriod:       5 * time.Second,
		Allow0RTT:             false,
		MaxIncomingStreams:    -1, // the server opens no stream to a joiner
		MaxIncomingUniStreams: -1,
	}
	conn, err := qt.Dial(ctx, ua, tlsConf, qconf)
	ca, vErr := verified()
	if err != nil {
		if vErr != nil {
			return nil, nil, fmt.Errorf("quicnet: join %s: %w", addr, vErr)
		}
		return nil, nil, fmt.Errorf("quicnet: join: connect to %s: %w", addr, joinRefusal(err))
	}
	defer conn.CloseWithError(codeNormal, "")
	if ca == nil || conn.ConnectionState().TLS.NegotiatedProtocol != JoinALPN {
		// Cannot happen with the configuration above; never send the
		// request over a connection that was not verified.
		return nil, nil, fmt.Errorf("quicnet: join %s: %w: server not verified", addr, ErrCAMismatch)
	}

	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("quicnet: join %s: open stream: %w", addr, joinRefusal(err))
	}
	stop := context.AfterFunc(ctx, func() {
		st.CancelRead(0)
		st.CancelWrite(0)
	})
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		st.SetDeadline(dl)
	}
	resp, err = transport.ExchangeJoin(ctx, st, st.Close, req)
	if err != nil {
		return nil, nil, fmt.Errorf("quicnet: join %s: %w", addr, joinRefusal(err))
	}
	return resp, ca, nil
}

// joinRefusal returns the *transport.Refusal (reason transport.RefusalBusy)
// that the join server's busy signals stand for: the connection closed with
// codeJoinBusy, or the request's stream reset with streamJoinBusy. Other
// errors are returned as they are.
func joinRefusal(err error) error {
	var ae *quic.ApplicationError
	if errors.As(err, &ae) && ae.Remote && ae.ErrorCode == codeJoinBusy {
		return &transport.Refusal{Reason: transport.RefusalBusy, Message: ae.ErrorMessage}
	}
	var se *quic.StreamError
	if errors.As(err, &se) && se.Remote && se.ErrorCode == streamJoinBusy {
		return &transport.Refusal{Reason: transport.RefusalBusy, Message: "too many join requests on the connection"}
	}
	return err
}
