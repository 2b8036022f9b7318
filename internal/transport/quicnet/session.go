package quicnet

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// session is one established connection with a peer, after the hello.
type session struct {
	e       *Endpoint
	conn    *quic.Conn
	peer    ids.NodeID
	peerInc uint64
	dialer  ids.NodeID // the node that opened the connection
	seq     uint64     // order of establishment on this endpoint

	startOnce sync.Once
	raftMu    sync.Mutex // serializes writes (only the send loop writes)
	raft      *quic.SendStream

	rpcMu      sync.Mutex
	rpcStreams []*rpcStream
	rpcNext    atomic.Uint64
	inflight   chan struct{} // bounds requests in service from this peer
}

func (e *Endpoint) newSession(conn *quic.Conn, peer ids.NodeID, peerInc uint64, dialer ids.NodeID) *session {
	e.mu.Lock()
	e.sessSeq++
	seq := e.sessSeq
	e.mu.Unlock()
	return &session{e: e, conn: conn, peer: peer, peerInc: peerInc, dialer: dialer, seq: seq,
		inflight: make(chan struct{}, e.cfg.MaxConcurrentRPCs)}
}

func (s *session) closed() bool { return s.conn.Context().Err() != nil }

func (s *session) close(code quic.ApplicationErrorCode, msg string) {
	s.conn.CloseWithError(code, msg)
}

// start runs the goroutines that accept the peer's streams on this
// connection, and forgets the session when the connection ends.
func (s *session) start() {
	s.startOnce.Do(func() {
		e := s.e
		e.wg.Add(2)
		go func() {
			defer e.wg.Done()
			s.acceptUni()
		}()
		go func() {
			defer e.wg.Done()
			s.acceptBidi()
			<-s.conn.Context().Done()
			if p := e.peer(s.peer); p != nil {
				p.drop(s, context.Cause(s.conn.Context()))
			}
		}()
	})
}

// writeRaft writes frames to the connection's outgoing Raft stream, opening
// it on first use.
func (s *session) writeRaft(b []byte) error {
	s.raftMu.Lock()
	defer s.raftMu.Unlock()
	if s.raft == nil {
		st, err := s.conn.OpenUniStream()
		if err != nil {
			return fmt.Errorf("open raft stream to node %s: %w", s.peer, err)
		}
		st.SetPriority(urgencyRaft, true)
		if _, err := st.Write([]byte{transport.StreamRaft}); err != nil {
			return err
		}
		s.raft = st
	}
	// A peer that stops reading must not block the send loop forever: the
	// connection would be idle-closed anyway.
	s.raft.SetWriteDeadline(time.Now().Add(s.e.cfg.IdleTimeout))
	_, err := s.raft.Write(b)
	return err
}

// acceptUni serves the peer's unidirectional streams: Raft batches.
func (s *session) acceptUni() {
	for {
		st, err := s.conn.AcceptUniStream(s.e.ctx)
		if err != nil {
			return
		}
		s.e.wg.Add(1)
		go func() {
			defer s.e.wg.Done()
			s.serveRaft(st)
		}()
	}
}

func (s *session) serveRaft(st *quic.ReceiveStream) {
	fr := transport.NewFrameReader(st, s.e.cfg.MaxFrameBytes)
	kind, err := fr.Reader().ReadByte()
	if err != nil {
		return
	}
	if kind != transport.StreamRaft {
		s.protocolError(fmt.Errorf("unidirectional stream of kind %q", kind))
		return
	}
	for {
		t, payload, err := fr.Next()
		if err != nil {
			if errors.Is(err, transport.ErrFrame) {
				s.protocolError(err)
			}
			return
		}
		if t != transport.FrameRaftBatch {
			s.protocolError(fmt.Errorf("%s frame on a raft stream", t))
			return
		}
		msgs, err := transport.DecodeBatch(payload)
		if err != nil {
			s.protocolError(err)
			return
		}
		if !s.e.allowed(s.peer, s.e.node) {
			continue
		}
		s.e.stats.BatchesReceived.Add(1)
		s.e.h.HandleRaft(s.peer, msgs)
	}
}

// protocolError closes the connection of a peer that broke the protocol.
func (s *session) protocolError(err error) {
	s.e.stats.FrameErrors.Add(1)
	s.e.cfg.Logger.Warn("peer broke the protocol; closing the connection", "peer", s.peer, "err", err)
	s.conn.CloseWithError(codeProtocol, truncateMsg(err.Error()))
}

func truncateMsg(s string) string {
	if len(s) > 256 {
		return s[:256]
	}
	return s
}

// acceptBidi serves the peer's bidirectional streams: RPC streams and
// snapshots.
func (s *session) acceptBidi() {
	for {
		st, err := s.conn.AcceptStream(s.e.ctx)
		if err != nil {
			return
		}
		s.e.wg.Add(1)
		go func() {
			defer s.e.wg.Done()
			br := bufio.NewReaderSize(st, 32<<10)
			st.SetReadDeadline(time.Now().Add(s.e.cfg.DialTimeout))
			kind, err := br.ReadByte()
			if err != nil {
				st.CancelRead(streamProtocol)
				st.CancelWrite(streamProtocol)
				return
			}
			st.SetReadDeadline(time.Time{})
			switch kind {
			case transport.StreamRPC:
				s.serveRPC(st, br)
			case transport.StreamSnapshot:
				s.receiveSnapshot(st, br)
			default:
				s.protocolError(fmt.Errorf("bidirectional stream of kind %q", kind))
			}
		}()
	}
}

// sendSnapshot streams r to the peer and waits for its verdict.
func (s *session) sendSnapshot(ctx context.Context, r io.Reader) error {
	st, err := s.conn.OpenStreamSync(ctx)
	if err != nil {
		return fmt.Errorf("open snapshot stream to node %s: %w", s.peer, err)
	}
	st.SetPriority(urgencySnapshot, true)
	stop := context.AfterFunc(ctx, func() {
		st.CancelWrite(0)
		st.CancelRead(0)
	})
	defer stop()
	w := bufio.NewWriterSize(st, 256<<10)
	w.WriteByte(transport.StreamSnapshot)
	_, err = io.Copy(w, r)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		st.Close()
	} else {
		if ctx.Err() != nil {
			st.CancelRead(0)
			return ctx.Err()
		}
		// The receiver may have refused the snapshot part way (and stopped
		// reading): its verdict, if it sent one, says why.
		st.CancelWrite(0)
		st.SetReadDeadline(time.Now().Add(s.e.cfg.DialTimeout))
	}
	fr := transport.NewFrameReader(st, 8192)
	t, payload, rerr := fr.Next()
	if rerr != nil {
		st.CancelRead(0)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			return fmt.Errorf("stream snapshot to node %s: %w", s.peer, err)
		}
		return fmt.Errorf("snapshot to node %s: no result: %w", s.peer, rerr)
	}
	if t != transport.FrameResult {
		return fmt.Errorf("snapshot to node %s: unexpected %s frame", s.peer, t)
	}
	res, derr := transport.DecodeRefusal(payload)
	if derr != nil {
		return fmt.Errorf("snapshot to node %s: %w", s.peer, derr)
	}
	if res.Reason != "" {
		return fmt.Errorf("snapshot to node %s: %w", s.peer, &res)
	}
	if err != nil {
		return fmt.Errorf("stream snapshot to node %s: %w", s.peer, err)
	}
	s.e.stats.SnapshotsSent.Add(1)
	return nil
}

// receiveSnapshot hands a snapshot stream to the handler and sends back its
// verdict.
func (s *session) receiveSnapshot(st *quic.Stream, r io.Reader) {
	if !s.e.allowed(s.peer, s.e.node) {
		st.CancelRead(0)
		st.CancelWrite(0)
		return
	}
	ctx, cancel := context.WithCancel(s.conn.Context())
	defer cancel()
	err := s.e.h.HandleSnapshot(ctx, s.peer, r)
	res := transport.Refusal{}
	if err != nil {
		res = transport.Refusal{Reason: "rejected", Message: err.Error()}
	} else {
		s.e.stats.SnapshotsReceived.Add(1)
	}
	transport.WriteFrame(st, transport.FrameResult, res.Encode(nil))
	st.Close()
	if err != nil {
		// Stop the sender: the rest of the stream is of no use.
		st.CancelRead(0)
	}
}
