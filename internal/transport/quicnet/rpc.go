package quicnet

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// rpcStream is one long-lived RPC stream on the calling side: requests are
// written under wmu, and one reader goroutine hands each response to the
// call waiting for its ID.
type rpcStream struct {
	s   *session
	st  *quic.Stream
	wmu sync.Mutex
	buf []byte

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan rpcResult
	err     error // set once the stream failed; every later call fails
}

type rpcResult struct {
	body []byte
	err  error
}

var errStreamBroken = errors.New("quicnet: rpc stream broken")

// call sends one request on one of the session's RPC streams.
func (s *session) call(ctx context.Context, method string, req []byte) ([]byte, error) {
	rs, err := s.rpcStream(ctx)
	if err != nil {
		return nil, err
	}
	return rs.call(ctx, method, req)
}

// rpcStream picks a stream of the pool round-robin, opening streams up to
// the configured number.
func (s *session) rpcStream(ctx context.Context) (*rpcStream, error) {
	n := s.rpcNext.Add(1)
	s.rpcMu.Lock()
	defer s.rpcMu.Unlock()
	if len(s.rpcStreams) >= s.e.cfg.RPCStreams {
		rs := s.rpcStreams[n%uint64(len(s.rpcStreams))]
		if rs.failed() == nil {
			return rs, nil
		}
	}
	// Replace failed streams, open missing ones.
	live := s.rpcStreams[:0]
	for _, rs := range s.rpcStreams {
		if rs.failed() == nil {
			live = append(live, rs)
		}
	}
	s.rpcStreams = live
	st, err := s.conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, fmt.Errorf("open rpc stream to node %s: %w", s.peer, transport.ErrUnreachable)
	}
	st.SetPriority(urgencyRPC, true)
	rs := &rpcStream{s: s, st: st, pending: map[uint64]chan rpcResult{}}
	rs.buf = append(rs.buf, transport.StreamRPC)
	s.rpcStreams = append(s.rpcStreams, rs)
	s.e.wg.Add(1)
	go func() {
		defer s.e.wg.Done()
		rs.readLoop()
	}()
	return rs, nil
}

func (rs *rpcStream) failed() error {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.err
}

func (rs *rpcStream) call(ctx context.Context, method string, body []byte) ([]byte, error) {
	ch := make(chan rpcResult, 1)
	rs.mu.Lock()
	if rs.err != nil {
		rs.mu.Unlock()
		return nil, rs.err
	}
	rs.nextID++
	id := rs.nextID
	rs.pending[id] = ch
	rs.mu.Unlock()
	forget := func() {
		rs.mu.Lock()
		delete(rs.pending, id)
		rs.mu.Unlock()
	}

	req := transport.RPCRequest{ID: id, Method: method, Body: body}
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		if left <= 0 {
			forget()
			return nil, context.DeadlineExceeded
		}
		req.TimeoutMicros = uint64(left.Microseconds()) + 1
	}
	rs.wmu.Lock()
	b, off := transport.BeginFrame(rs.buf)
	b = req.Encode(b)
	b, err := transport.FinishFrame(b, off, transport.FrameRPCRequest)
	if err == nil && len(b)-off-transport.FrameHeaderSize > rs.s.e.cfg.MaxFrameBytes {
		err = fmt.Errorf("quicnet: request of %d bytes exceeds the frame limit", len(body))
		rs.wmu.Unlock()
		forget()
		return nil, err
	}
	if err == nil {
		_, err = rs.st.Write(b)
	}
	rs.buf = b[:0]
	rs.wmu.Unlock()
	if err != nil {
		rs.fail(fmt.Errorf("%w: %v", errStreamBroken, err))
		forget()
		return nil, fmt.Errorf("rpc %s to node %s: %w", method, rs.s.peer, transport.ErrUnreachable)
	}
	select {
	case res := <-ch:
		return res.body, res.err
	case <-ctx.Done():
		forget()
		return nil, ctx.Err()
	}
}

// fail marks the stream broken and fails every call waiting on it.
func (rs *rpcStream) fail(err error) {
	rs.mu.Lock()
	if rs.err == nil {
		rs.err = err
	}
	pending := rs.pending
	rs.pending = map[uint64]chan rpcResult{}
	rs.mu.Unlock()
	for _, ch := range pending {
		ch <- rpcResult{err: fmt.Errorf("rpc to node %s: %w", rs.s.peer, transport.ErrUnreachable)}
	}
	rs.st.CancelRead(0)
	rs.st.CancelWrite(0)
}

func (rs *rpcStream) readLoop() {
	fr := transport.NewFrameReader(rs.st, rs.s.e.cfg.MaxFrameBytes)
	for {
		t, payload, err := fr.Next()
		if err != nil {
			if errors.Is(err, transport.ErrFrame) {
				rs.s.protocolError(err)
			}
			rs.fail(fmt.Errorf("%w: %v", errStreamBroken, err))
			return
		}
		if t != transport.FrameRPCResponse {
			rs.s.protocolError(fmt.Errorf("%s frame on an rpc stream", t))
			rs.fail(errStreamBroken)
			return
		}
		resp, err := transport.DecodeRPCResponse(payload)
		if err != nil {
			rs.s.protocolError(err)
			rs.fail(errStreamBroken)
			return
		}
		rs.mu.Lock()
		ch := rs.pending[resp.ID]
		delete(rs.pending, resp.ID)
		rs.mu.Unlock()
		if ch == nil {
			continue // the caller gave up
		}
		if resp.Code != "" {
			ch <- rpcResult{err: &transport.RPCError{Code: resp.Code, Message: string(resp.Body)}}
		} else {
			ch <- rpcResult{body: append([]byte(nil), resp.Body...)}
		}
	}
}

// serveRPC serves requests on one RPC stream until the peer closes it: each
// request runs in its own goroutine (bounded per connection), responses are
// written as they complete.
func (s *session) serveRPC(st *quic.Stream, r *bufio.Reader) {
	var wmu sync.Mutex
	var wg sync.WaitGroup
	defer wg.Wait()
	fr := transport.NewFrameReader(r, s.e.cfg.MaxFrameBytes)
	respond := func(resp transport.RPCResponse) {
		b, off := transport.BeginFrame(make([]byte, 0, 64+len(resp.Body)))
		b = resp.Encode(b)
		b, err := transport.FinishFrame(b, off, transport.FrameRPCResponse)
		if err != nil {
			return
		}
		wmu.Lock()
		defer wmu.Unlock()
		st.Write(b)
	}
	for {
		t, payload, err := fr.Next()
		if err != nil {
			if errors.Is(err, transport.ErrFrame) {
				s.protocolError(err)
			}
			st.CancelWrite(0)
			return
		}
		if t != transport.FrameRPCRequest {
			s.protocolError(fmt.Errorf("%s frame on an rpc stream", t))
			return
		}
		req, err := transport.DecodeRPCRequest(payload)
		if err != nil {
			s.protocolError(err)
			return
		}
		if !s.e.allowed(s.peer, s.e.node) {
			continue
		}
		// The payload buffer is reused by the next frame.
		req.Body = append([]byte(nil), req.Body...)
		select {
		case s.inflight <- struct{}{}:
		case <-s.conn.Context().Done():
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-s.inflight }()
			respond(s.serve(req))
		}()
	}
}

func (s *session) serve(req transport.RPCRequest) transport.RPCResponse {
	s.e.stats.RPCsServed.Add(1)
	h := s.e.handler(req.Method)
	if h == nil {
		return transport.RPCResponse{ID: req.ID, Code: transport.RPCUnknownMethod, Body: []byte(req.Method)}
	}
	ctx := s.conn.Context()
	var cancel context.CancelFunc
	if req.TimeoutMicros > 0 {
		ctx, cancel = context.WithTimeout(ctx, time.Duration(min(req.TimeoutMicros, 1<<40))*time.Microsecond)
	} else {
		ctx, cancel = context.WithCancel(ctx)
	}
	defer cancel()
	body, err := h(ctx, s.peer, req.Body)
	if err != nil {
		var re *transport.RPCError
		switch {
		case errors.As(err, &re):
			return transport.RPCResponse{ID: req.ID, Code: re.Code, Body: []byte(re.Message)}
		case errors.Is(err, context.DeadlineExceeded):
			return transport.RPCResponse{ID: req.ID, Code: transport.RPCDeadline, Body: []byte(err.Error())}
		default:
			return transport.RPCResponse{ID: req.ID, Code: transport.RPCInternal, Body: []byte(err.Error())}
		}
	}
	return transport.RPCResponse{ID: req.ID, Body: body}
}
