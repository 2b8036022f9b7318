// Package transport defines how nodes exchange Raft traffic. The multi-Raft
// host depends only on the Transport and Handler interfaces, so the in-memory
// fault-injecting network used by tests and the QUIC transport used in
// production are interchangeable.
//
// Two kinds of traffic flow between nodes:
//
//   - batches of Raft messages, small and latency sensitive (heartbeats,
//     appends, votes), coalesced per destination node by the sender;
//   - snapshot streams, potentially large, carried separately so that a
//     snapshot in flight never delays heartbeats.
package transport

import (
	"context"
	"errors"
	"io"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// ErrUnreachable is returned when the destination node cannot be reached now.
// The host reports the destination's replicas unreachable to Raft, which then
// probes them instead of streaming appends.
var ErrUnreachable = errors.New("transport: node unreachable")

// ErrRequestLost is returned by Caller.Call when the connection failed after
// the request was sent: the peer may or may not have served it.
var ErrRequestLost = errors.New("transport: connection lost with the request in flight")

// ErrClosed is returned by a transport that has been closed.
var ErrClosed = errors.New("transport: closed")

// Message is one Raft message for one group. Msg.From and Msg.To are replica
// IDs within Group.
type Message struct {
	Group ids.GroupID
	Msg   raftpb.Message
}

// Handler is implemented by the receiving side (the multi-Raft host).
type Handler interface {
	// HandleRaft receives a batch of messages sent by node from. It must not
	// block: it queues the messages for the group's next Raft cycle. The
	// handler owns msgs after the call.
	HandleRaft(from ids.NodeID, msgs []Message)
	// HandleSnapshot consumes one snapshot stream (see the snapshot framing in
	// internal/raftstore). It returns nil once the snapshot has been received
	// in full, verified and handed to Raft, or an error that the sender reports
	// to Raft as a failed snapshot.
	HandleSnapshot(ctx context.Context, from ids.NodeID, stream io.Reader) error
}

// Transport sends traffic from one node to its peers.
type Transport interface {
	// Send queues a batch of messages for node to. It never blocks on the
	// network; delivery is best effort (Raft retries). It returns
	// ErrUnreachable if the destination is known to be down. The transport
	// must not retain msgs after Send returns.
	Send(to ids.NodeID, msgs []Message) error
	// SendSnapshot streams a snapshot to node to and returns once the receiver
	// has accepted it (its Handler returned nil) or the transfer failed.
	SendSnapshot(ctx context.Context, to ids.NodeID, stream io.Reader) error
	// Close stops the transport and waits for its goroutines to exit.
	Close() error
}
