// Package quicnet is the production transport between nodes: QUIC with
// mutual TLS 1.3, one connection per pair of nodes.
//
// Every connection starts with a hello on a control stream: the dialer sends
// the protocol versions it speaks and the node ID it claims, the acceptor
// checks the claim against the node ID bound in the dialer's certificate
// (which the TLS handshake has already verified against the cluster CA) and
// answers with the version chosen, or refuses. The dialer, for its part,
// accepts only a certificate for the node it meant to reach. After the
// hello, either side opens streams on the connection:
//
//   - one long-lived unidirectional stream per direction for Raft message
//     batches (highest priority, so heartbeats never queue behind bulk data);
//   - one bidirectional stream per snapshot, lowest priority, flow-controlled
//     by QUIC, ending with a result frame from the receiver;
//   - a small pool of long-lived bidirectional streams for RPCs, multiplexed
//     by request ID (opening a stream per request halves throughput with
//     quic-go, while many requests in flight over a few streams match TCP).
//
// Every payload travels in a frame (see transport.AppendFrame): bounded
// before allocation, checksummed, decoded with validation. A peer that breaks
// the framing loses its stream or its connection, never crashes the node.
package quicnet

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/pki"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// Config configures an Endpoint.
type Config struct {
	// Identity is this node's certificate and key; its node ID is the
	// endpoint's.
	Identity *pki.Identity
	// Verifier checks peers' certificates against the cluster CA.
	Verifier *pki.Verifier
	// Listen is the UDP address to listen on ("127.0.0.1:7401"; port 0 picks
	// one, see Endpoint.Addr).
	Listen string
	// Peers maps node IDs to their addresses; SetPeer changes it later.
	Peers map[ids.NodeID]string
	// ClusterID, when set, must match the peer's.
	ClusterID string

	// MaxFrameBytes bounds any frame's payload. Default 64 MiB.
	MaxFrameBytes int
	// MaxQueuedBytes bounds the Raft batches queued for one peer; beyond it
	// batches are dropped (Raft retries). Default 64 MiB.
	MaxQueuedBytes int
	// RPCStreams is the number of long-lived RPC streams per connection.
	// Default 8.
	RPCStreams int
	// MaxConcurrentRPCs bounds the requests one connection may have in
	// service at once. Default 1024.
	MaxConcurrentRPCs int
	// DialTimeout bounds connecting and the hello. Default 5s.
	DialTimeout time.Duration
	// IdleTimeout closes a connection that heard nothing for this long
	// (keep-alives flow at a third of it). Default 10s.
	IdleTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between failed dials to a
	// peer (exponential, with full jitter). Defaults 50ms and 5s.
	MinBackoff, MaxBackoff time.Duration

	Logger     *slog.Logger
	Registerer prometheus.Registerer

	// Join, when set, serves join requests: the endpoint then also accepts
	// connections negotiating ALPN JoinALPN without a client certificate
	// (the cluster ALPN keeps requiring and verifying one). Such a
	// connection carries only join requests: each is at most
	// MaxJoinRequestBytes, Join runs it under a JoinTimeout deadline (its
	// ctx is also done when the joiner's connection or the endpoint closes)
	// and owns req; its answer, at most MaxJoinResponseBytes, goes back as
	// is. The joiner knows nothing but the CA's public key hash (see Join),
	// so Identity must have been built with the cluster CA certificate as
	// its chain (pki.NewIdentity(cert, []*x509.Certificate{ca}, key)): the
	// TLS handshake then sends it, and joiners refuse a node that does not
	// (Listen logs a warning). Nil: the join ALPN is not offered.
	Join func(ctx context.Context, req []byte) []byte

	// Filter, when set, is asked about every Raft batch, snapshot and RPC
	// before it is sent to or accepted from a peer; false drops it. Tests use
	// it to partition nodes over real sockets.
	Filter func(from, to ids.NodeID) bool
}

func (c *Config) setDefaults() {
	if c.MaxFrameBytes <= 0 {
		c.MaxFrameBytes = transport.DefaultMaxFrameBytes
	}
	if c.MaxQueuedBytes <= 0 {
		c.MaxQueuedBytes = 64 << 20
	}
	if c.RPCStreams <= 0 {
		c.RPCStreams = 8
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
