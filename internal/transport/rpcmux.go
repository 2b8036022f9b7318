package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// This file holds the RPC multiplexing that the stream transports share: many
// requests in flight on one long-lived stream (a QUIC stream, a TCP
// connection), told apart by request ID. The caller's side is an RPCClient;
// the server's side is an RPCServer.

// ErrProtocol is wrapped by errors that mean the peer broke the protocol
// (bad framing, a frame of the wrong type, an undecodable payload): the
// transport closes the stream or connection it came on.
var ErrProtocol = errors.New("transport: protocol violation")

func protocolErr(err error) error { return fmt.Errorf("%w: %w", ErrProtocol, err) }

type rpcResult struct {
	body []byte
	err  error
}

// RPCClient sends requests on one stream and hands each response to the call
// waiting for its ID. Requests are written whole under a lock, so any number
// of goroutines may call at once; one goroutine runs ReadResponses.
type RPCClient struct {
	w        io.Writer
	peer     ids.NodeID
	maxFrame int
	abort    func()

	wmu sync.Mutex
	buf []byte

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan rpcResult
	err     error // set once the stream failed; every later call fails
}

// NewRPCClient returns a client writing requests to w, a stream to node
// peer. abort is called once when the client fails: it should break the
// stream so that ReadResponses returns.
func NewRPCClient(w io.Writer, peer ids.NodeID, maxFrameBytes int, abort func()) *RPCClient {
	if maxFrameBytes <= 0 {
		maxFrameBytes = DefaultMaxFrameBytes
	}
	return &RPCClient{w: w, peer: peer, maxFrame: maxFrameBytes, abort: abort, pending: map[uint64]chan rpcResult{}}
}

// Err returns why the client failed, or nil while it is usable.
func (c *RPCClient) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Call sends one request and waits for its response or ctx. Errors: an
// *RPCError from the remote side, ctx's error, an error wrapping
// ErrUnreachable when the request could not be sent, or ErrRequestLost when
// the stream broke after it was sent and before the response came.
func (c *RPCClient) Call(ctx context.Context, method string, body []byte) ([]byte, error) {
	ch := make(chan rpcResult, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil, fmt.Errorf("rpc %s to node %s: %w", method, c.peer, ErrUnreachable)
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = ch
	c.mu.Unlock()
	forget := func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}

	req := RPCRequest{ID: id, Method: method, Body: body}
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		if left <= 0 {
			forget()
			return nil, context.DeadlineExceeded
		}
		req.TimeoutMicros = uint64(left.Microseconds()) + 1
	}
	c.wmu.Lock()
	b, off := BeginFrame(c.buf)
	b = req.Encode(b)
	if len(b)-off-FrameHeaderSize > c.maxFrame {
		c.buf = b[:0]
		c.wmu.Unlock()
		forget()
		return nil, fmt.Errorf("rpc %s: request of %d bytes exceeds the frame limit of %d", method, len(body), c.maxFrame)
	}
	b, err := FinishFrame(b, off, FrameRPCRequest)
	if err == nil {
		if d, ok := c.w.(writeDeadliner); ok {
			d.SetWriteDeadline(rpcWriteDeadline(ctx, time.Now()))
		}
		_, err = c.w.Write(b)
	}
	if cap(b) > 1<<20 {
		b = nil // do not pin a large request's buffer
	}
	c.buf = b[:0]
	c.wmu.Unlock()
	if err != nil {
		c.Fail(err)
		forget()
		return nil, fmt.Errorf("rpc %s to node %s: %w", method, c.peer, ErrUnreachable)
	}
	select {
	case res := <-ch:
		return res.body, res.err
	case <-ctx.Done():
		forget()
		return nil, ctx.Err()
	}
}

// writeDeadliner is a stream whose writes can be bounded (a QUIC stream, a
// TCP or TLS connection).
type writeDeadliner interface{ SetWriteDeadline(time.Time) error }

const (
	// rpcWriteFloor is the least time a request's write is given, however
	// close its caller's deadline: a write that times out half-way leaves
	// a partial frame, so the whole stream fails with it, and the calls
	// in flight on it lose their answers.
	rpcWriteFloor = time.Second
	// rpcWriteDefault bounds the write of a request whose context has no
	// deadline.
	rpcWriteDefault = 10 * time.Second
)

// rpcWriteDeadline is the deadline of a request's write. Without one, a
// peer that stops reading (its flow-control window stays shut) would hold
// the caller, and every caller queued behind the stream's write lock, past
// any context, and so hold up the shutdown of whatever made the call.
func rpcWriteDeadline(ctx context.Context, now time.Time) time.Time {
	dl, ok := ctx.Deadline()
	if !ok {
		return now.Add(rpcWriteDefault)
	}
	if floor := now.Add(rpcWriteFloor); dl.Before(floor) {
		return floor
	}
	return dl
}

// Fail marks the client broken, fails every call waiting on it and aborts
// the stream. Only the first call has an effect.
func (c *RPCClient) Fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	pending := c.pending
	c.pending = map[uint64]chan rpcResult{}
	c.mu.Unlock()
	for _, ch := range pending {
		// These requests were sent: the peer may have served them.
		ch <- rpcResult{err: fmt.Errorf("rpc to node %s: %w", c.peer, ErrRequestLost)}
	}
	if c.abort != nil {
		c.abort()
	}
}

// ReadResponses reads responses from r until it fails, then fails the
// client and returns why: an error wrapping ErrProtocol when the peer broke
// the protocol, otherwise the read error.
func (c *RPCClient) ReadResponses(r io.Reader) error {
	fr := NewFrameReader(r, c.maxFrame)
	for {
		t, payload, err := fr.Next()
		if err == nil && t != FrameRPCResponse {
			err = fmt.Errorf("%w: %s frame on an rpc stream", ErrFrame, t)
		}
		var resp RPCResponse
		if err == nil {
			resp, err = DecodeRPCResponse(payload)
		}
		if err != nil {
			if errors.Is(err, ErrFrame) || errors.Is(err, ErrMalformedControl) {
				err = protocolErr(err)
			}
			c.Fail(err)
			return err
		}
		c.mu.Lock()
		ch := c.pending[resp.ID]
		delete(c.pending, resp.ID)
		c.mu.Unlock()
		if ch == nil {
			continue // the caller gave up
		}
		if resp.Code != "" {
			ch <- rpcResult{err: &RPCError{Code: resp.Code, Message: string(resp.Body)}}
		} else {
			ch <- rpcResult{body: append([]byte(nil), resp.Body...)}
		}
	}
}

// RPCServer serves the requests of one stream: each request runs in its own
// goroutine, bounded by Inflight, and responses are written as they
// complete.
type RPCServer struct {
	// From is the peer the requests come from.
	From ids.NodeID
	// MaxFrameBytes bounds a request (0: DefaultMaxFrameBytes).
	MaxFrameBytes int
	// Inflight bounds the requests in service; share one channel between
	// the streams of a connection to bound the connection. Required.
	Inflight chan struct{}
	// Lookup returns the handler of a method, or nil.
	Lookup func(method string) RPCHandler
	// Accept, when set, is asked about every request; false drops it
	// unanswered (tests partition nodes with it).
	Accept func() bool
	// Served, when set, is called for every request served.
	Served func()
	// WriteTimeout bounds each response's write when the stream supports
	// write deadlines (default 10 s): a peer that stops reading cannot hold
	// the handlers, all queued behind the stream's write lock, forever.
	WriteTimeout time.Duration
	// Abort, when set, is called once when a response could not be written:
	// the stream is broken (a partial frame may have gone out), so it must
	// end both directions of the stream, which ends Serve's read.
	Abort func()
}

// Serve reads requests from r and writes responses to w until r fails.
// Handlers run under ctx (and the request's deadline); ctx is cancelled for
// them once reading stops, and Serve returns after they all have. It returns
// an error wrapping ErrProtocol when the peer broke the protocol, otherwise
// the read error (io.EOF when the peer closed the stream).
func (s *RPCServer) Serve(ctx context.Context, r io.Reader, w io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	var wmu sync.Mutex
	broken := false // guarded by wmu
	timeout := s.WriteTimeout
	if timeout <= 0 {
		timeout = rpcWriteDefault
	}
	respond := func(resp RPCResponse) {
		b, off := BeginFrame(make([]byte, 0, 64+len(resp.Body)))
		b = resp.Encode(b)
		b, err := FinishFrame(b, off, FrameRPCResponse)
		if err != nil {
			return
		}
		wmu.Lock()
		defer wmu.Unlock()
		if broken {
			return
		}
		if d, ok := w.(writeDeadliner); ok {
			d.SetWriteDeadline(time.Now().Add(timeout))
		}
		if _, err := w.Write(b); err != nil {
			broken = true
			cancel()
			if s.Abort != nil {
				s.Abort()
			}
		}
	}
	fr := NewFrameReader(r, s.MaxFrameBytes)
	for {
		t, payload, err := fr.Next()
		if err == nil && t != FrameRPCRequest {
			err = fmt.Errorf("%w: %s frame on an rpc stream", ErrFrame, t)
		}
		var req RPCRequest
		if err == nil {
			req, err = DecodeRPCRequest(payload)
		}
		if err != nil {
			if errors.Is(err, ErrFrame) || errors.Is(err, ErrMalformedControl) {
				return protocolErr(err)
			}
			return err
		}
		if s.Accept != nil && !s.Accept() {
			continue
		}
		// The payload buffer is reused by the next frame.
		req.Body = append([]byte(nil), req.Body...)
		select {
		case s.Inflight <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-s.Inflight }()
			respond(s.serve(ctx, req))
		}()
	}
}

func (s *RPCServer) serve(ctx context.Context, req RPCRequest) RPCResponse {
	if s.Served != nil {
		s.Served()
	}
	h := s.Lookup(req.Method)
	if h == nil {
		return RPCResponse{ID: req.ID, Code: RPCUnknownMethod, Body: []byte(req.Method)}
	}
	var cancel context.CancelFunc
	if req.TimeoutMicros > 0 {
		ctx, cancel = context.WithTimeout(ctx, time.Duration(min(req.TimeoutMicros, 1<<40))*time.Microsecond)
	} else {
		ctx, cancel = context.WithCancel(ctx)
	}
	defer cancel()
	body, err := h(ctx, s.From, req.Body)
	if err != nil {
		var re *RPCError
		switch {
		case errors.As(err, &re):
			return RPCResponse{ID: req.ID, Code: re.Code, Body: []byte(re.Message)}
		case errors.Is(err, context.DeadlineExceeded):
			return RPCResponse{ID: req.ID, Code: RPCDeadline, Body: []byte(err.Error())}
		default:
			return RPCResponse{ID: req.ID, Code: RPCInternal, Body: []byte(err.Error())}
		}
	}
	return RPCResponse{ID: req.ID, Body: body}
}
