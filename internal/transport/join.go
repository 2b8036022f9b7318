package transport

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/pki"
	"github.com/prometheus/client_golang/prometheus"
)

// Joining: a node that wants to join the cluster has no certificate yet. It
// connects to any node with the ALPN JoinALPN and no client certificate,
// checks the server against the CA public key hash of its join token
// (pki.VerifyPinned), and only then sends one request and reads one answer:
//
//	joiner                                  node (a join handler set)
//	  TLS 1.3, ALPN nodedb-join/1, no client certificate
//	  verify: the chain holds the CA whose hash is the token's,
//	          the leaf is a node certificate from that CA
//	  one bidirectional stream (QUIC) or the connection itself (TCP):
//	    FrameRPCRequest(request)      -->     bounded to MaxJoinRequestBytes
//	                                          the join handler(ctx, request)
//	                                  <--     FrameRPCResponse(answer)
//	                                          or FrameRefuse{reason, message}
//
// The payloads are opaque here: the node's join handler defines them. A join
// connection is never a cluster session: it carries no hello, no node
// identity, no Raft batches, snapshots or RPCs. This file holds what both
// transports share: the TLS configurations, the bounds and the framing of
// the exchange; quicnet and tcpnet carry it.

// JoinALPN is the TLS application protocol of join connections.
const JoinALPN = "nodedb-join/1"

// Bounds of the join channel.
const (
	// MaxJoinRequestBytes bounds a join request; a larger one is refused
	// (reason "too_large") before it is read.
	MaxJoinRequestBytes = 64 << 10
	// MaxJoinResponseBytes bounds a join response.
	MaxJoinResponseBytes = 1 << 20
	// JoinTimeout is the deadline a join handler runs under.
	JoinTimeout = 30 * time.Second
	// MaxJoinConns bounds the join connections an endpoint serves at once;
	// beyond it new ones are closed at once.
	MaxJoinConns = 64
)

// ErrCAMismatch is returned by a join when the server did not prove that it
// is a node of the cluster whose CA public key hash the joiner holds: its
// chain lacks a CA certificate with that hash, or its certificate was not
// issued by that CA. It is pki.ErrCAMismatch.
var ErrCAMismatch = pki.ErrCAMismatch

// JoinStats counts the join channel's traffic.
type JoinStats struct {
	Conns    atomic.Uint64 // join connections accepted
	Requests atomic.Uint64 // requests handed to the join handler
	Refused  atomic.Uint64 // connections, streams and requests refused (busy, malformed, too large)
}

// RegisterJoinMetrics exports s on reg (nil: nowhere) as
// nodedb_transport_join_{connections,requests,refused}_total.
func RegisterJoinMetrics(reg prometheus.Registerer, s *JoinStats, log *slog.Logger) {
	if reg == nil {
		return
	}
	for _, c := range []prometheus.Collector{
		Counter("join_connections_total", "Join connections accepted (no client certificate, ALPN "+JoinALPN+").", &s.Conns),
		Counter("join_requests_total", "Join requests handed to the join handler.", &s.Requests),
		Counter("join_refused_total", "Join connections, streams and requests refused (busy, malformed, too large).", &s.Refused),
	} {
		if err := reg.Register(c); err != nil {
			log.Warn("register transport metric", "err", err)
		}
	}
}

// JoinServerTLS is the TLS configuration a node presents to joiners: its own
// certificate chain (which must include the CA that issued it, or joiners
// refuse it: see ChainHasCA), and no client certificate asked for.
func JoinServerTLS(id *pki.Identity) *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		ClientAuth:             tls.NoClientCert,
		SessionTicketsDisabled: true,
		NextProtos:             []string{JoinALPN},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return id.Certificate(), nil
		},
	}
}

// IsJoinHello reports whether a TLS client asks for a join connection: it
// offers JoinALPN and not the cluster ALPN. A server gives such a client
// JoinServerTLS and every other client the cluster configuration, which
// requires and verifies a node certificate.
func IsJoinHello(hello *tls.ClientHelloInfo) bool {
	return slices.Contains(hello.SupportedProtos, JoinALPN) && !slices.Contains(hello.SupportedProtos, ALPN)
}

// ChainHasCA reports whether c's chain (after the leaf) holds the CA
// certificate that signed the leaf.
func ChainHasCA(c *tls.Certificate) bool {
	if c == nil || c.Leaf == nil {
		return false
	}
	for _, raw := range c.Certificate[1:] {
		ca, err := x509.ParseCertificate(raw)
		if err == nil && ca.IsCA && c.Leaf.CheckSignatureFrom(ca) == nil {
			return true
		}
	}
	return false
}

// JoinClientTLS is a joiner's TLS configuration: no client certificate, ALPN
// JoinALPN, and a server accepted only if the certificates it presents
// include a CA certificate whose public key hash is caHash and its own is a
// node certificate issued by exactly that CA and valid now
// (pki.VerifyPinned). Verified returns that CA once the server passed, the
// verification's error once it failed, and neither before the server's
// certificates arrived: a connection for which it returns no CA must not
// carry the request.
func JoinClientTLS(caHash string) (conf *tls.Config, verified func() (*x509.Certificate, error)) {
	var (
		mu   sync.Mutex
		ca   *x509.Certificate
		verr error
	)
	conf = &tls.Config{
		MinVersion:             tls.VersionTLS13,
		ServerName:             "nodedb-node", // informational: identity is checked below
		SessionTicketsDisabled: true,
		NextProtos:             []string{JoinALPN},
		InsecureSkipVerify:     true, // replaced, not skipped: see VerifyPeerCertificate
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			c, _, err := pki.VerifyPinned(rawCerts, caHash, time.Now())
			mu.Lock()
			ca, verr = c, err
			mu.Unlock()
			return err
		},
	}
	return conf, func() (*x509.Certificate, error) {
		mu.Lock()
		defer mu.Unlock()
		return ca, verr
	}
}

// CheckJoinRequest checks what a joiner may send before connecting: the CA
// hash and the request's size.
func CheckJoinRequest(caHash string, req []byte) error {
	if _, err := pki.ParsePublicKeyHash(caHash); err != nil {
		return err
	}
	if len(req) > MaxJoinRequestBytes {
		return fmt.Errorf("join request of %d bytes, at most %d", len(req), MaxJoinRequestBytes)
	}
	return nil
}

// ReadJoinRequest reads one join request from r. The frame's type and size
// are checked before any buffer for the payload exists: a request that is
// not a FrameRPCRequest or is over MaxJoinRequestBytes gives a refusal to
// write back (reason "malformed" or "too_large") instead. Any other error is
// the connection's.
func ReadJoinRequest(r io.Reader) (req []byte, refusal *Refusal, err error) {
	br := bufio.NewReaderSize(r, 32<<10)
	hdr, err := br.Peek(FrameHeaderSize)
	if err != nil {
		return nil, nil, err
	}
	typ, n := FrameType(hdr[0]), binary.BigEndian.Uint32(hdr[1:5])
	switch {
	case typ != FrameRPCRequest:
		return nil, &Refusal{Reason: "malformed", Message: fmt.Sprintf("a join request is a %s frame, got type %d", FrameRPCRequest, hdr[0])}, nil
	case n > MaxJoinRequestBytes:
		return nil, &Refusal{Reason: "too_large", Message: fmt.Sprintf("join request of %d bytes, at most %d", n, MaxJoinRequestBytes)}, nil
	}
	_, req, err = NewFrameReader(br, MaxJoinRequestBytes).Next()
	if errors.Is(err, ErrFrame) {
		return nil, &Refusal{Reason: "malformed", Message: err.Error()}, nil
	}
	return req, nil, err
}

// ExchangeJoin sends req on rw, a connection (or stream) to a node that has
// proven it belongs to the token's cluster, and reads the answer. closeWrite,
// when not nil, ends the request direction after the request. It returns the
// node's *Refusal as the error when it refused; an I/O error after ctx ended
// becomes ctx's cause.
func ExchangeJoin(ctx context.Context, rw io.ReadWriter, closeWrite func() error, req []byte) ([]byte, error) {
	ioErr := func(what string, err error) error {
		if ctx.Err() != nil {
			err = context.Cause(ctx)
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := WriteFrame(rw, FrameRPCRequest, req); err != nil {
		return nil, ioErr("send request", err)
	}
	if closeWrite != nil {
		closeWrite()
	}
	resp, err := ReadJoinAnswer(rw)
	var rf *Refusal
	if err != nil && !errors.As(err, &rf) {
		return nil, ioErr("read response", err)
	}
	return resp, err
}

// ReadJoinAnswer reads the answer to a join request from r: the response's
// payload (a copy), or the node's *Refusal as the error.
func ReadJoinAnswer(r io.Reader) ([]byte, error) {
	t, payload, err := NewFrameReader(r, MaxJoinResponseBytes).Next()
	if err != nil {
		return nil, err
	}
	switch t {
	case FrameRPCResponse:
		return append([]byte{}, payload...), nil
	case FrameRefuse:
		rf, err := DecodeRefusal(payload)
		if err != nil {
			return nil, err
		}
		return nil, &rf
	default:
		return nil, fmt.Errorf("%w: %s frame in a join answer", ErrFrame, t)
	}
}
