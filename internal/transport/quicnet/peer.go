package quicnet

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// peer is what an endpoint knows about one other node: its address, the
// connection in use, and the Raft batches queued for it.
type peer struct {
	e  *Endpoint
	id ids.NodeID

	mu       sync.Mutex
	addr     string
	sess     *session // the connection in use; nil when none
	dialing  chan struct{}
	dialErr  error
	nextDial time.Time // no dial before this (backoff after a failure)
	backoff  transport.Backoff
	queue    *transport.SendQueue // encoded frames waiting for the send loop
}

// current returns the session in use, or nil.
func (p *peer) current() *session {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sess
}

// enqueue queues one encoded Raft batch frame. It reports false when the peer
// is known to be unreachable (in dial backoff without a connection) or its
// queue is full; the batch is then dropped.
func (p *peer) enqueue(frame []byte) error {
	p.mu.Lock()
	if p.sess == nil && time.Now().Before(p.nextDial) {
		p.mu.Unlock()
		return transport.ErrUnreachable
	}
	if p.addr == "" && p.sess == nil {
		p.mu.Unlock()
		return transport.ErrUnreachable
	}
	p.mu.Unlock()
	if !p.queue.Push(frame) {
		p.e.stats.BatchesDropped.Add(1)
	}
	return nil // when dropped, dropped like a lost packet; Raft retries
}

// Send queues a batch of Raft messages for node to.
func (e *Endpoint) Send(to ids.NodeID, msgs []transport.Message) error {
	if !e.allowed(e.node, to) {
		e.stats.BatchesDropped.Add(1)
		return nil
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
	return p.enqueue(b)
}

// sendLoop writes the peer's queued batches to its Raft stream, connecting
// first when needed. It is the only writer of that stream.
func (p *peer) sendLoop() {
	defer p.e.wg.Done()
	var s *session
	p.queue.Run(p.e.ctx, func(buf []byte) error {
		var err error
		if s, err = p.session(p.e.ctx); err != nil {
			s = nil
			return err
		}
		return s.writeRaft(buf)
	}, func(n int, err error) {
		switch {
		case err == nil:
			p.e.stats.BatchesSent.Add(uint64(n))
		case s != nil:
			p.e.stats.BatchesDropped.Add(uint64(n))
			p.drop(s, err)
		default:
			p.e.stats.BatchesDropped.Add(uint64(n))
		}
	})
}

// session returns the connection to use, dialing if there is none. Concurrent
// callers share one dial; after a failed dial, callers fail fast until the
// backoff expires.
func (p *peer) session(ctx context.Context) (*session, error) {
	for {
		p.mu.Lock()
		if p.sess != nil {
			s := p.sess
			p.mu.Unlock()
			return s, nil
		}
		if ch := p.dialing; ch != nil {
			p.mu.Unlock()
			select {
			case <-ch:
				p.mu.Lock()
				err := p.dialErr
				s := p.sess
				p.mu.Unlock()
				if s != nil {
					return s, nil
				}
				if err != nil {
					return nil, err
				}
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if time.Now().Before(p.nextDial) || p.addr == "" {
			p.mu.Unlock()
			return nil, transport.ErrUnreachable
		}
		addr := p.addr
		ch := make(chan struct{})
		p.dialing = ch
		p.mu.Unlock()

		s, err := p.e.dial(p.e.ctx, p.id, addr)
		p.mu.Lock()
		p.dialing = nil
		if err != nil {
			p.e.stats.DialFailures.Add(1)
			p.nextDial = time.Now().Add(p.backoff.Fail())
			p.dialErr = err
			p.mu.Unlock()
			close(ch)
			p.e.cfg.Logger.Debug("dial failed", "peer", p.id, "addr", addr, "err", err)
			if p.sess == nil {
				return nil, transport.ErrUnreachable
			}
			continue
		}
		p.dialErr = nil
		p.mu.Unlock()
		if hook := testHookDialed.Load(); hook != nil {
			(*hook)()
		}
		p.register(s)
		close(ch)
	}
}

// register makes s the peer's connection unless a better one exists. When two
// connections between the same pair of nodes exist (both dialed at once, or a
// peer restarted before the old connection timed out), both ends keep the
// same one: the one from the peer's latest incarnation; between two of the
// same incarnations, the one dialed by the lower node ID, or else the newer.
func (p *peer) register(s *session) {
	p.mu.Lock()
	old := p.sess
	keep := s
	if old != nil && !old.closed() && !better(s, old, p.e.node, p.id) {
		keep = old
	}
	p.sess = keep
	if keep == s {
		p.backoff.Reset()
		p.nextDial = time.Time{}
	}
	p.mu.Unlock()
	// A dial that finished while the endpoint was closing registers after
	// Close closed the peers' connections: nothing would close this one,
	// and its goroutines would hold Close's wait forever. Starting under
	// e.mu orders every start before Close's wait, or after its closed
	// flag, which is then seen here.
	p.e.mu.Lock()
	if p.e.closed {
		p.e.mu.Unlock()
		p.mu.Lock()
		if p.sess == s {
			p.sess = nil
		}
		p.mu.Unlock()
		s.close(codeNormal, "node stopping")
		return
	}
	s.start()
	p.e.mu.Unlock()
	if keep == s {
		if old != nil {
			p.e.stats.ConnsReplaced.Add(1)
			old.close(codeDuplicate, "replaced by a newer connection")
		}
	} else {
		p.e.stats.ConnsReplaced.Add(1)
		// The loser still serves streams the peer may already have opened on
		// it until it closes; closing it tells the peer to switch.
		s.close(codeDuplicate, "another connection to this peer is in use")
	}
	p.queue.Wake()
}

// testHookDialed, when set, runs after a dial succeeds and before its
// connection is registered (tests close the endpoint there). Atomic: a test
// sets it while other endpoints' dials may be reading it.
var testHookDialed atomic.Pointer[func()]

// better reports whether connection a should replace b.
func better(a, b *session, local, remote ids.NodeID) bool {
	if a.peerInc != b.peerInc {
		// A connection from a newer process of the peer wins; incarnations
		// are random, so "newer" is the one established later.
		return a.seq > b.seq
	}
	lower := min(local, remote)
	aLow, bLow := a.dialer == lower, b.dialer == lower
	if aLow != bLow {
		return aLow
	}
	return a.seq > b.seq
}

// drop forgets s after an error on it, so that the next send dials again.
func (p *peer) drop(s *session, err error) {
	p.mu.Lock()
	if p.sess == s {
		p.sess = nil
	}
	p.mu.Unlock()
	s.close(codeNormal, "")
	p.e.cfg.Logger.Debug("connection lost", "peer", p.id, "err", err)
}

// closeAll closes the peer's connection at endpoint shutdown.
func (p *peer) closeAll() {
	p.mu.Lock()
	s := p.sess
	p.sess = nil
	p.mu.Unlock()
	if s != nil {
		s.close(codeNormal, "node stopping")
	}
}
