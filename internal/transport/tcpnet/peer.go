package tcpnet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// peer is what an endpoint knows about one other node: its address, the
// connections this node dialed to it, the dial backoff they share, and the
// Raft batches queued for it.
type peer struct {
	e     *Endpoint
	id    ids.NodeID
	queue *transport.SendQueue // encoded frames waiting for the send loop

	mu         sync.Mutex
	addr       string
	nextDial   time.Time // no dial before this (backoff after a failure)
	backoff    transport.Backoff
	raft       *conn // the outgoing Raft connection; written only by the send loop
	rpc        *transport.RPCClient
	rpcDialing chan struct{} // closed when the RPC dial in progress ends
}

// dial opens a connection of the given kind to the peer, unless it is in
// dial backoff. Every failure wraps transport.ErrUnreachable.
func (p *peer) dial(kind byte) (*conn, error) {
	p.mu.Lock()
	if p.addr == "" || time.Now().Before(p.nextDial) {
		p.mu.Unlock()
		return nil, transport.ErrUnreachable
	}
	addr := p.addr
	p.mu.Unlock()
	c, err := p.e.dial(p.id, addr, kind)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		if errors.Is(err, transport.ErrClosed) {
			return nil, err
		}
		p.e.stats.DialFailures.Add(1)
		p.nextDial = time.Now().Add(p.backoff.Fail())
		p.e.cfg.Logger.Debug("dial failed", "peer", p.id, "addr", addr, "err", err)
		return nil, fmt.Errorf("%w: %w", transport.ErrUnreachable, err)
	}
	p.backoff.Reset()
	p.nextDial = time.Time{}
	return c, nil
}

// Send queues a batch of Raft messages for node to. It never blocks: the
// batch is dropped (and counted) when the peer's queue is full, and
// ErrUnreachable is returned when the peer is unknown or in dial backoff
// without a connection.
func (e *Endpoint) Send(to ids.NodeID, msgs []transport.Message) error {
	if e.ctx.Err() != nil {
		return transport.ErrClosed
	}
	if !e.allowed(e.node, to) {
		e.stats.BatchesDropped.Add(1)
		return nil // dropped like a lost packet; Raft retries
	}
	p := e.peer(to)
	if p == nil {
		return transport.ErrUnreachable
	}
	b, err := transport.EncodeBatchFrame(msgs)
	if err != nil {
		return err
	}
	if len(b)-transport.FrameHeaderSize > e.cfg.MaxFrameBytes {
		e.stats.BatchesDropped.Add(1)
		return nil
	}
	p.mu.Lock()
	down := p.raft == nil && (p.addr == "" || time.Now().Before(p.nextDial))
	p.mu.Unlock()
	if down {
		return transport.ErrUnreachable
	}
	if !p.queue.Push(b) {
		e.stats.BatchesDropped.Add(1) // like a lost packet; Raft retries
	}
	return nil
}

// sendLoop writes the peer's queued batches to its Raft connection,
// connecting first when needed. It is the only writer of that connection.
func (p *peer) sendLoop() {
	defer p.e.wg.Done()
	var c *conn
	p.queue.Run(p.e.ctx, func(buf []byte) error {
		var err error
		if c, err = p.raftConn(); err != nil {
			c = nil
			return err
		}
		// A peer that stops reading must not block the send loop forever.
		c.raw.SetWriteDeadline(time.Now().Add(p.e.cfg.IdleTimeout))
		_, err = c.tls.Write(buf)
		return err
	}, func(n int, err error) {
		switch {
		case err == nil:
			p.e.stats.BatchesSent.Add(uint64(n))
		case c != nil:
			p.e.stats.BatchesDropped.Add(uint64(n))
			p.dropRaft(c)
			p.e.cfg.Logger.Debug("raft connection lost", "peer", p.id, "err", err)
		default:
			p.e.stats.BatchesDropped.Add(uint64(n))
		}
	})
}

// raftConn returns the outgoing Raft connection, dialing it if needed.
func (p *peer) raftConn() (*conn, error) {
	p.mu.Lock()
	c := p.raft
	p.mu.Unlock()
	if c != nil {
		return c, nil
	}
	c, err := p.dial(transport.StreamRaft)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.raft = c
	p.mu.Unlock()
	// The acceptor never writes on a Raft connection, so a read returns
	// only when the connection ends: the send loop learns at once that the
	// peer went away, not at its next write.
	if !p.e.spawn(func() {
		io.Copy(io.Discard, c.r)
		p.dropRaft(c)
	}) {
		p.dropRaft(c)
		return nil, transport.ErrClosed
	}
	return c, nil
}

func (p *peer) dropRaft(c *conn) {
	p.mu.Lock()
	if p.raft == c {
		p.raft = nil
	}
	p.mu.Unlock()
	p.e.untrack(c.raw)
}

// rpcClient returns the RPC connection's client, dialing it if needed.
// Concurrent callers share one dial; after a failed dial, callers fail fast
// until the backoff expires.
func (p *peer) rpcClient(ctx context.Context) (*transport.RPCClient, error) {
	for {
		p.mu.Lock()
		if c := p.rpc; c != nil && c.Err() == nil {
			p.mu.Unlock()
			return c, nil
		}
		if ch := p.rpcDialing; ch != nil {
			p.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		ch := make(chan struct{})
		p.rpcDialing = ch
		p.mu.Unlock()

		client, err := p.dialRPC()
		p.mu.Lock()
		p.rpcDialing = nil
		if err == nil {
			p.rpc = client
		}
		p.mu.Unlock()
		close(ch)
		return client, err
	}
}

func (p *peer) dialRPC() (*transport.RPCClient, error) {
	c, err := p.dial(transport.StreamRPC)
	if err != nil {
		return nil, err
	}
	client := transport.NewRPCClient(c.tls, p.id, p.e.cfg.MaxFrameBytes, func() { c.raw.Close() })
	if !p.e.spawn(func() {
		if err := client.ReadResponses(c.r); errors.Is(err, transport.ErrProtocol) {
			p.e.protocolError(p.id, err)
		}
		p.e.untrack(c.raw)
	}) {
		p.e.untrack(c.raw)
		return nil, transport.ErrClosed
	}
	return client, nil
}
