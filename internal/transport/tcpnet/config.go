// Package tcpnet is a transport between nodes over TCP with mutual TLS 1.3:
// the fallback for networks that block UDP (and so QUIC), and the baseline
// that quicnet is benchmarked against (internal/transport/transportbench).
// It implements the same interfaces as quicnet, with the same identity
// checks, frames and RPC multiplexing; only the connection handling differs,
// because TCP has no streams:
//
//   - every TCP connection starts with the TLS handshake (the same
//     pki.ServerTLS and pki.ClientTLS configurations as quicnet, ALPN
//     transport.ALPN) and the same hello: the dialer claims a node ID, the
//     acceptor checks it against the certificate and answers HelloOK or a
//     refusal frame; then the dialer sends one stream-kind byte
//     (transport.StreamRaft, StreamRPC or StreamSnapshot) that fixes what the
//     connection carries for its lifetime;
//   - Raft batches: one long-lived connection per direction, dialed by the
//     sender; the acceptor never writes on it;
//   - RPCs: one long-lived connection per direction, dialed by the caller,
//     requests and responses multiplexed by request ID exactly as on a
//     quicnet RPC stream (transport.RPCClient / transport.RPCServer);
//   - snapshots: a new connection per snapshot; the sender ends its data
//     with a TLS close_notify (CloseWrite) and the receiver answers with a
//     FrameResult;
//   - joins (with Config.Join): a connection that asks for
//     transport.JoinALPN, without a client certificate, carries one join
//     request and its answer (internal/transport/join.go), then closes.
//
// Raft traffic shares no connection with snapshots or RPCs, so a bulk
// transfer never delays a heartbeat behind it in a TCP send buffer; what
// TCP cannot give is QUIC's loss recovery per stream and its single
// handshake per pair of nodes.
//
// A peer that breaks the framing loses that connection (counted in
// Stats.FrameErrors), never the node.
package tcpnet

import (
	"context"
	"log/slog"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/pki"
	"github.com/nodedb/nodedb-cluster/internal/transport"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures an Endpoint. It follows quicnet.Config; what TCP does
// not need or has not got yet (stream counts, QUIC path metrics) is left
// out.
type Config struct {
	// Identity is this node's certificate and key; its node ID is the
	// endpoint's.
	Identity *pki.Identity
	// Verifier checks peers' certificates against the cluster CA.
	Verifier *pki.Verifier
	// Listen is the TCP address to listen on ("127.0.0.1:7401"; port 0
	// picks one, see Endpoint.Addr).
	Listen string
	// Peers maps node IDs to their addresses; SetPeer changes it later.
	Peers map[ids.NodeID]string
	// ClusterID, when set, must match the peer's.
	ClusterID string
	// Join, when set, serves join requests (internal/transport/join.go):
	// connections without a client certificate that ask for
	// transport.JoinALPN get this node's certificate chain, send one
	// request and get Join's answer, on the same port as the peers. The
	// identity's chain must include the CA certificate.
	Join func(ctx context.Context, req []byte) []byte

	// MaxFrameBytes bounds any frame's payload. Default 64 MiB.
	MaxFrameBytes int
	// MaxQueuedBytes bounds the Raft batches queued for one peer; beyond it
	// batches are dropped (Raft retries). Default 64 MiB.
	MaxQueuedBytes int
	// MaxConcurrentRPCs bounds the requests one connection may have in
	// service at once. Default 1024.
	MaxConcurrentRPCs int
	// DialTimeout bounds connecting, the TLS handshake and the hello.
	// Default 5s.
	DialTimeout time.Duration
	// IdleTimeout bounds a write that makes no progress, and is the time
	// TCP keep-alives take to declare a silent peer dead. Default 10s.
	IdleTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between failed dials to a
	// peer (exponential, with full jitter). Defaults 50ms and 5s.
	MinBackoff, MaxBackoff time.Duration

	// Registerer, when set, gets the endpoint's join metrics (the same
	// names as quicnet's).
	Registerer prometheus.Registerer

	// Filter, when set, is asked about every Raft batch, snapshot and RPC
	// before it is sent to or accepted from a peer; false drops it, as
	// quicnet.Config.Filter does. Tests use it to partition nodes over real
	// sockets.
	Filter func(from, to ids.NodeID) bool

	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.MaxFrameBytes <= 0 {
		c.MaxFrameBytes = transport.DefaultMaxFrameBytes
	}
	if c.MaxQueuedBytes <= 0 {
		c.MaxQueuedBytes = 64 << 20
	}
	if c.MaxConcurrentRPCs <= 0 {
		c.MaxConcurrentRPCs = 1024
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 5 * time.Second
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 10 * time.Second
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = 50 * time.Millisecond
	}
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = max(5*time.Second, c.MinBackoff)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}
