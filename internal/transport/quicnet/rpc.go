package quicnet

import (
	"bufio"
	"context"
	"errors"
	"fmt"

	"github.com/quic-go/quic-go"

	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// rpcStream is one long-lived RPC stream on the calling side: a
// transport.RPCClient writing requests to the stream, and one reader
// goroutine handing each response to the call waiting for its ID.
type rpcStream struct {
	*transport.RPCClient
	st *quic.Stream
}

// call sends one request on one of the session's RPC streams.
func (s *session) call(ctx context.Context, method string, req []byte) ([]byte, error) {
	rs, err := s.rpcStream(ctx)
	if err != nil {
		return nil, err
	}
	return rs.Call(ctx, method, req)
}

// rpcStream picks a stream of the pool round-robin, opening streams up to
// the configured number.
func (s *session) rpcStream(ctx context.Context) (*rpcStream, error) {
	n := s.rpcNext.Add(1)
	s.rpcMu.Lock()
	defer s.rpcMu.Unlock()
	if len(s.rpcStreams) >= s.e.cfg.RPCStreams {
		rs := s.rpcStreams[n%uint64(len(s.rpcStreams))]
		if rs.Err() == nil {
			return rs, nil
		}
	}
	// Replace failed streams, open missing ones.
	live := s.rpcStreams[:0]
	for _, rs := range s.rpcStreams {
		if rs.Err() == nil {
			live = append(live, rs)
		}
	}
	s.rpcStreams = live
	st, err := s.conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, fmt.Errorf("open rpc stream to node %s: %w", s.peer, transport.ErrUnreachable)
	}
	st.SetPriority(urgencyRPC, true)
	if _, err := st.Write([]byte{transport.StreamRPC}); err != nil {
		st.CancelRead(0)
		st.CancelWrite(0)
		return nil, fmt.Errorf("open rpc stream to node %s: %w", s.peer, transport.ErrUnreachable)
	}
	rs := &rpcStream{st: st}
	rs.RPCClient = transport.NewRPCClient(st, s.peer, s.e.cfg.MaxFrameBytes, func() {
		st.CancelRead(0)
		st.CancelWrite(0)
	})
	// The reader is one of the endpoint's goroutines, which Close waits
	// for: it may start only before Close begins to wait.
	s.e.mu.Lock()
	if s.e.closed {
		s.e.mu.Unlock()
		rs.Fail(transport.ErrClosed)
		return nil, fmt.Errorf("open rpc stream to node %s: %w", s.peer, transport.ErrClosed)
	}
	s.e.wg.Add(1)
	s.e.mu.Unlock()
	s.rpcStreams = append(s.rpcStreams, rs)
	go func() {
		defer s.e.wg.Done()
		if err := rs.ReadResponses(st); errors.Is(err, transport.ErrProtocol) {
			s.protocolError(err)
		}
	}()
	return rs, nil
}

// serveRPC serves requests on one RPC stream until the peer closes it: each
// request runs in its own goroutine (bounded per connection), responses are
// written as they complete.
func (s *session) serveRPC(st *quic.Stream, r *bufio.Reader) {
	srv := transport.RPCServer{
		From:          s.peer,
		MaxFrameBytes: s.e.cfg.MaxFrameBytes,
		Inflight:      s.inflight,
		Lookup:        s.e.Lookup,
		Accept:        func() bool { return s.e.allowed(s.peer, s.e.node) },
		Served:        func() { s.e.stats.RPCsServed.Add(1) },
		Abort: func() {
			st.CancelRead(0)
			st.CancelWrite(0)
		},
	}
	err := srv.Serve(s.conn.Context(), r, st)
	if errors.Is(err, transport.ErrProtocol) {
		s.protocolError(err)
		return
	}
	st.CancelWrite(0)
}
