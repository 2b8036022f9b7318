package transport

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"time"
)

// This file holds the per-peer sending machinery that the stream transports
// (quicnet, tcpnet) share: the bounded queue of encoded Raft batches that a
// peer's send loop drains, and the dial backoff.

// EncodeBatchFrame returns msgs encoded as one FrameRaftBatch frame.
func EncodeBatchFrame(msgs []Message) ([]byte, error) {
	// Size the buffer up front: growing it message by message cost a
	// sixth of a Raft batch's CPU in the transport benchmarks.
	n := FrameHeaderSize + 1 + binary.MaxVarintLen64
	for i := range msgs {
		n += 2*binary.MaxVarintLen64 + msgs[i].Msg.Size()
	}
	b, off := BeginFrame(make([]byte, 0, n))
	b, err := EncodeBatch(b, msgs)
	if err != nil {
		return nil, err
	}
	return FinishFrame(b, off, FrameRaftBatch)
}

// SendQueue holds encoded frames waiting for a peer's send loop, bounded in
// bytes: a full queue refuses frames (the caller drops them, as a network
// drops packets; Raft retries) instead of blocking or growing without bound.
// It is safe for concurrent use by many producers and one consumer.
type SendQueue struct {
	max  int
	wake chan struct{}

	mu     sync.Mutex
	frames [][]byte
	bytes  int
}

// NewSendQueue returns a queue holding at most maxBytes of frames.
func NewSendQueue(maxBytes int) *SendQueue {
	return &SendQueue{max: maxBytes, wake: make(chan struct{}, 1)}
}

// Push queues frame and wakes the consumer. It reports false, queueing
// nothing, when the frame does not fit.
func (q *SendQueue) Push(frame []byte) bool {
	q.mu.Lock()
	if q.bytes+len(frame) > q.max {
		q.mu.Unlock()
		return false
	}
	q.frames = append(q.frames, frame)
	q.bytes += len(frame)
	q.mu.Unlock()
	q.Wake()
	return true
}

// Wake signals the consumer without queueing anything (a connection came
// up, say).
func (q *SendQueue) Wake() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Ready is signalled after frames are pushed or Wake is called.
func (q *SendQueue) Ready() <-chan struct{} { return q.wake }

// Take removes every queued frame, appends them to dst (so the consumer
// writes them with one call) and returns dst and the number of frames.
func (q *SendQueue) Take(dst []byte) ([]byte, int) {
	q.mu.Lock()
	frames := q.frames
	q.frames, q.bytes = nil, 0
	q.mu.Unlock()
	for _, f := range frames {
		dst = append(dst, f...)
	}
	return dst, len(frames)
}

// Run is a peer's send loop: until ctx ends, it takes everything queued and
// hands it to write as one buffer (fewer syscalls and packets than a write
// per batch), then reports the number of frames and write's error to done.
// It is the only consumer of q.
func (q *SendQueue) Run(ctx context.Context, write func([]byte) error, done func(frames int, err error)) {
	var buf []byte
	for {
		select {
		case <-ctx.Done():
			return
		case <-q.Ready():
		}
		var n int
		buf, n = q.Take(buf[:0])
		if n == 0 {
			continue
		}
		done(n, write(buf))
		if cap(buf) > 4<<20 {
			buf = nil // do not pin a burst's buffer
		}
	}
}

// RPCHandlers maps RPC method names to handlers, for the endpoints that serve
// them. The zero value is ready; it is safe for concurrent use.
type RPCHandlers struct {
	mu sync.RWMutex
	m  map[string]RPCHandler
}

// Handle registers the handler of an RPC method. Register every method
// before peers call it: a call to an unknown method fails with
// RPCUnknownMethod.
func (r *RPCHandlers) Handle(method string, h RPCHandler) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[string]RPCHandler{}
	}
	r.m[method] = h
}

// Lookup returns the handler of method, or nil.
func (r *RPCHandlers) Lookup(method string) RPCHandler {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.m[method]
}

// Backoff spaces out failed dials to a peer: exponential between Min and
// Max, with full jitter so that peers that lost each other at once do not
// redial in lockstep. The zero value with Min and Max set is ready to use;
// it is not safe for concurrent use (callers hold their peer's lock).
type Backoff struct {
	Min, Max time.Duration
	cur      time.Duration
}

// Fail records a failed attempt and returns how long to wait before the
// next one.
func (b *Backoff) Fail() time.Duration {
	b.cur = min(max(2*b.cur, b.Min), b.Max)
	if b.cur <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(b.cur)) + 1)
}

// Reset records a success.
func (b *Backoff) Reset() { b.cur = 0 }
