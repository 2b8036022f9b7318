package tcpnet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// joinIOTimeout bounds reading a join request and writing its answer; a
// variable for tests.
var joinIOTimeout = 10 * time.Second

// A refused request may not have been read whole (one announcing more than
// MaxJoinRequestBytes is refused from its header). Closing a TCP connection
// with unread input resets it, and the reset discards whatever the client
// has not read yet, the refusal included. So after a refusal the endpoint
// half-closes and reads on, up to joinDrainBytes or joinDrainTimeout,
// giving the client time to finish writing and read the answer.
const (
	joinDrainBytes   = 1 << 20
	joinDrainTimeout = 2 * time.Second
	// joinBusyTimeout bounds the refusal of a connection beyond
	// MaxJoinConns: it holds no slot, so it is kept short.
	joinBusyTimeout = 500 * time.Millisecond
)

// JoinStats returns the counters of the join channel (all zero when
// Config.Join is nil).
func (e *Endpoint) JoinStats() *transport.JoinStats { return &e.joinStats }

// serveJoin serves one join connection (internal/transport/join.go): one
// request, one answer, then the connection closes. The caller closes it.
func (e *Endpoint) serveJoin(tc *tls.Conn) {
	select {
	case e.joinSlots <- struct{}{}:
	default:
		// Said, so that the joiner knows to retry (as over QUIC), within
		// a short bound: this connection holds no slot.
		e.joinStats.Refused.Add(1)
		tc.SetDeadline(time.Now().Add(joinBusyTimeout))
		busy := transport.Refusal{Reason: transport.RefusalBusy, Message: "too many join connections"}
		if transport.WriteFrame(tc, transport.FrameRefuse, busy.Encode(nil)) == nil {
			drainRefused(tc, joinBusyTimeout)
		}
		return
	}
	defer func() { <-e.joinSlots }()
	e.joinStats.Conns.Add(1)
	tc.SetDeadline(time.Now().Add(joinIOTimeout))
	req, refusal, err := transport.ReadJoinRequest(tc)
	if err != nil {
		return
	}
	if refusal == nil {
		tc.SetDeadline(time.Time{})
		ctx, cancel := context.WithTimeout(e.ctx, transport.JoinTimeout)
		e.joinStats.Requests.Add(1)
		resp := e.cfg.Join(ctx, req)
		cancel()
		if e.ctx.Err() != nil {
			return // closing: the joiner sees the connection fail
		}
		if len(resp) <= transport.MaxJoinResponseBytes {
			tc.SetDeadline(time.Now().Add(joinIOTimeout))
			transport.WriteFrame(tc, transport.FrameRPCResponse, resp)
			return
		}
		e.cfg.Logger.Error("tcpnet: join handler answered more than the join channel carries", "bytes", len(resp), "max", transport.MaxJoinResponseBytes)
		refusal = &transport.Refusal{Reason: "internal", Message: "join response too large"}
	}
	e.joinStats.Refused.Add(1)
	e.cfg.Logger.Warn("refused join request", "remote", tc.RemoteAddr(), "reason", refusal.Reason, "msg", refusal.Message)
	tc.SetDeadline(time.Now().Add(joinIOTimeout))
	if transport.WriteFrame(tc, transport.FrameRefuse, refusal.Encode(nil)) == nil {
		drainRefused(tc, joinDrainTimeout)
	}
}

// drainRefused half-closes a refused join connection and discards what the
// client still sends, within bounds (see joinDrainBytes).
func drainRefused(tc *tls.Conn, timeout time.Duration) {
	if tc.CloseWrite() != nil {
		return
	}
	if cw, ok := tc.NetConn().(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	tc.SetReadDeadline(time.Now().Add(timeout))
	_, _ = io.Copy(io.Discard, io.LimitReader(tc, joinDrainBytes))
}

// Join sends one join request to the node at addr (host:port of its TCP
// endpoint) and returns its answer and the cluster CA certificate, as
// quicnet.Join does over QUIC: the server is accepted only if it proves,
// in the TLS handshake, that it is a node of the CA whose public key hash is
// caHash, and req, which carries the token's secret, is sent only after
// that. A mismatch fails with an error matching transport.ErrCAMismatch (or
// the pki error of the certificate); a refusal is a *transport.Refusal.
func Join(ctx context.Context, addr string, caHash string, req []byte) (resp []byte, ca *x509.Certificate, err error) {
	if err := transport.CheckJoinRequest(caHash, req); err != nil {
		return nil, nil, fmt.Errorf("tcpnet: join: %w", err)
	}
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("tcpnet: join: connect to %s: %w", addr, err)
	}
	defer raw.Close()
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	conf, verified := transport.JoinClientTLS(caHash)
	tc := tls.Client(raw, conf)
	herr := tc.HandshakeContext(ctx)
	ca, verr := verified()
	switch {
	case verr != nil:
		return nil, nil, fmt.Errorf("tcpnet: join %s: %w", addr, verr)
	case herr != nil:
		if ctx.Err() != nil {
			herr = context.Cause(ctx)
		}
		return nil, nil, fmt.Errorf("tcpnet: join %s: TLS handshake: %w", addr, herr)
	case ca == nil || tc.ConnectionState().NegotiatedProtocol != transport.JoinALPN:
		// Cannot happen with the configuration above; never send the
		// request over a connection that was not verified.
		return nil, nil, fmt.Errorf("tcpnet: join %s: %w: server not verified", addr, transport.ErrCAMismatch)
	}
	resp, err = transport.ExchangeJoin(ctx, tc, nil, req)
	if err != nil {
		return nil, nil, fmt.Errorf("tcpnet: join %s: %w", addr, err)
	}
	return resp, ca, nil
}
