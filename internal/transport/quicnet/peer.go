package quicnet

import (
	"context"
	"math/rand/v2"
	"sync"
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
	backoff  time.Duration
	queue    [][]byte // encoded frames waiting for the send loop
	queued   int      // bytes in queue
	wake     chan struct{}
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
	if p.queued+len(frame) > p.e.cfg.MaxQueuedBytes {
		p.mu.Unlock()
		p.e.stats.BatchesDropped.Add(1)
		return nil // dropped like a lost packet; Raft retries
	}
	p.queue = append(p.queue, frame)
	p.queued += len(frame)
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
	return nil
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
	b, off := transport.BeginFrame(make([]byte, 0, 256))
	b, err := transport.EncodeBatch(b, msgs)
	if err != nil {
		return err
	}
	b, err = transport.FinishFrame(b, off, transport.FrameRaftBatch)
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
	var buf []byte
	for {
		select {
		case <-p.e.ctx.Done():
			return
		case <-p.wake:
		}
		p.mu.Lock()
		q := p.queue
		p.queue, p.queued = nil, 0
		p.mu.Unlock()
		if len(q) == 0 {
			continue
		}
		s, err := p.session(p.e.ctx)
		if err != nil {
			p.e.stats.BatchesDropped.Add(uint64(len(q)))
			continue
		}
		// One write for everything queued: fewer syscalls and packets.
		buf = buf[:0]
		for _, f := range q {
			buf = append(buf, f...)
		}
		if err := s.writeRaft(buf); err != nil {
			p.e.stats.BatchesDropped.Add(uint64(len(q)))
			p.drop(s, err)
			continue
		}
		p.e.stats.BatchesSent.Add(uint64(len(q)))
		if cap(buf) > 4<<20 {
			buf = nil // do not pin a burst's buffer
		}
	}
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
			p.backoff = min(max(2*p.backoff, p.e.cfg.MinBackoff), p.e.cfg.MaxBackoff)
			// Full jitter: peers that lost each other at once do not redial
			// in lockstep.
			p.nextDial = time.Now().Add(time.Duration(rand.Int64N(int64(p.backoff)) + 1))
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
		p.backoff = 0
		p.nextDial = time.Time{}
	}
	p.mu.Unlock()
	if keep == s {
		s.start()
		if old != nil {
			p.e.stats.ConnsReplaced.Add(1)
			old.close(codeDuplicate, "replaced by a newer connection")
		}
	} else {
		p.e.stats.ConnsReplaced.Add(1)
		// The loser still serves streams the peer may already have opened on
		// it until it closes; closing it tells the peer to switch.
		s.start()
		s.close(codeDuplicate, "another connection to this peer is in use")
	}
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

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
