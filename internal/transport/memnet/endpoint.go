package memnet

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// Endpoint is one node's attachment to a Network; it implements
// transport.Transport. Each call to Network.Endpoint creates a new
// incarnation: traffic addressed to an earlier incarnation of the same node
// is never delivered to a later one.
type Endpoint struct {
	n    *Network
	node ids.NodeID
	h    transport.Handler

	// calls counts handler calls in progress (raft deliveries and snapshot
	// receivers). Add happens only under n.mu while the endpoint is still
	// registered, and Close unregisters it under n.mu before Wait, so no Add
	// races with Wait.
	calls sync.WaitGroup

	// closed is guarded by n.mu.
	closed bool
}

var _ transport.Transport = (*Endpoint)(nil)

// Node returns the node this endpoint was registered for.
func (e *Endpoint) Node() ids.NodeID { return e.node }

// Send queues msgs for node to and returns without waiting for delivery. The
// batch is encoded before Send returns, so the caller may reuse msgs at
// once. Traffic on a cut link or to a node without an endpoint is dropped
// silently (and counted), as a real network loses packets to a dead or
// unreachable host; Send reports only a closed endpoint or network
// (transport.ErrClosed) and batches that cannot be encoded.
func (e *Endpoint) Send(to ids.NodeID, msgs []transport.Message) error {
	n := e.n
	k := linkKey{e.node, to}
	n.mu.RLock()
	if n.closed || e.closed {
		n.mu.RUnlock()
		return transport.ErrClosed
	}
	l := n.links[k]
	cut := n.cutLocked(k)
	dest := n.endpoints[to]
	f := n.faultsLocked(k)
	n.mu.RUnlock()
	if len(msgs) == 0 {
		return nil
	}
	if l == nil {
		if l = n.link(k); l == nil {
			return transport.ErrClosed
		}
	}
	if cut || dest == nil {
		l.stats.sent.Add(1)
		l.stats.sentMsgs.Add(uint64(len(msgs)))
		if cut {
			l.stats.droppedCut.Add(1)
		} else {
			l.stats.droppedUnknown.Add(1)
		}
		return nil
	}
	buf, err := transport.EncodeBatch(getBuf(), msgs)
	if err != nil {
		return fmt.Errorf("memnet: send to %s: %w", to, err)
	}
	return l.enqueue(buf, len(msgs), dest, f)
}

// Close unregisters the endpoint: later traffic to the node is dropped,
// queued batches addressed to this incarnation are discarded at their
// delivery time, and snapshot streams to or from it fail. Close returns once
// no handler call for this endpoint is running, so after it returns the
// handler is never called again. It is idempotent and must not be called
// from this endpoint's own handler, which it would wait for.
func (e *Endpoint) Close() error {
	n := e.n
	n.mu.Lock()
	if e.closed {
		n.mu.Unlock()
		e.calls.Wait()
		return nil
	}
	e.closed = true
	if n.endpoints[e.node] == e {
		delete(n.endpoints, e.node)
	}
	var in, out []*snapshot
	for s := range n.snaps {
		switch {
		case s.dest == e:
			in = append(in, s)
		case s.src == e:
			out = append(out, s)
		}
	}
	n.mu.Unlock()
	// The sender of a stream into a dead node sees it as unreachable; this
	// node's own outgoing streams end because it is gone.
	for _, s := range in {
		s.abort(transport.ErrUnreachable)
	}
	for _, s := range out {
		s.abort(transport.ErrClosed)
	}
	e.calls.Wait()
	return nil
}

// discardHandler stands in for a nil Handler so that delivery never has to
// check for one.
type discardHandler struct{}

func (discardHandler) HandleRaft(ids.NodeID, []transport.Message) {}

func (discardHandler) HandleSnapshot(context.Context, ids.NodeID, io.Reader) error {
	return errNoHandler
}
