package memnet

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

// snapshotChunk is the largest piece copied into the pipe at once; bandwidth
// limiting and abort checks happen between chunks.
const snapshotChunk = 32 << 10

// errReceiverDone ends the sender's writes once the receiver's handler has
// returned, so a handler that stops reading early cannot block the sender.
var errReceiverDone = errors.New("memnet: snapshot receiver finished")

// snapshot is one stream in flight. The stream ends in one of two ways: the
// receiver's handler returns (its result goes to result), or abort records a
// cause, closes aborted, cancels the receiver's context and breaks the pipe,
// so both sides stop promptly whatever they are blocked on.
type snapshot struct {
	key       linkKey
	src, dest *Endpoint
	pw        *io.PipeWriter
	cancel    context.CancelFunc
	result    chan error // buffered: the receiver never blocks on it

	once    sync.Once
	cause   error         // written once, before aborted is closed
	aborted chan struct{} // closed by abort
}

func (s *snapshot) abort(err error) {
	s.once.Do(func() {
		s.cause = err
		close(s.aborted)
		s.cancel()
		_ = s.pw.CloseWithError(err)
	})
}

// SendSnapshot streams stream to node to's HandleSnapshot through a pipe and
// returns the handler's error, or transport.ErrUnreachable if the link is cut
// (before or during the transfer) or the node has no endpoint (or closes
// it), ctx's error if ctx ends first, transport.ErrClosed if this endpoint or
// the network closes, or the error reading stream. The receiver's context is
// cancelled and its reads fail as soon as the stream is aborted. A stream
// needs only the from → to direction: a one-way cut of to → from does not
// stop it.
//
// SendSnapshot returns promptly on abort even if the handler is still
// running; the handler's goroutine is owned by the Network and counted as a
// call on the receiving endpoint, so Endpoint.Close and Network.Close wait
// for it.
func (e *Endpoint) SendSnapshot(ctx context.Context, to ids.NodeID, stream io.Reader) error {
	if ctx == nil {
		ctx = context.Background()
	}
	n := e.n
	k := linkKey{e.node, to}
	l := n.link(k)
	if l == nil {
		return transport.ErrClosed
	}
	fail := func(err error) error {
		l.stats.snapshotsFailed.Add(1)
		return err
	}

	n.mu.Lock()
	if n.closed || e.closed {
		n.mu.Unlock()
		return transport.ErrClosed
	}
	if stream == nil {
		n.mu.Unlock()
		return fail(errors.New("memnet: nil snapshot stream"))
	}
	if err := ctx.Err(); err != nil {
		n.mu.Unlock()
		return fail(err)
	}
	dest := n.endpoints[to]
	if n.cutLocked(k) || dest == nil {
		n.mu.Unlock()
		return fail(transport.ErrUnreachable)
	}
	pr, pw := io.Pipe()
	rctx, cancel := context.WithCancel(context.Background())
	s := &snapshot{
		key:     k,
		src:     e,
		dest:    dest,
		pw:      pw,
		cancel:  cancel,
		result:  make(chan error, 1),
		aborted: make(chan struct{}),
	}
	n.snaps[s] = struct{}{}
	dest.calls.Add(1)
	n.wg.Add(1)
	n.mu.Unlock()

	go s.receive(rctx, n, pr)
	stop := context.AfterFunc(ctx, func() { s.abort(ctx.Err()) })
	err := s.send(n, stream)
	stop()

	n.mu.Lock()
	delete(n.snaps, s)
	n.mu.Unlock()
	if err != nil {
		return fail(err)
	}
	l.stats.snapshotsOK.Add(1)
	return nil
}

// receive runs the destination's handler. Owned by the Network (n.wg) and
// counted in dest.calls.
func (s *snapshot) receive(ctx context.Context, n *Network, pr *io.PipeReader) {
	defer n.wg.Done()
	defer s.dest.calls.Done()
	defer s.cancel()
	err := s.dest.h.HandleSnapshot(ctx, s.key.from, pr)
	_ = pr.CloseWithError(errReceiverDone)
	s.result <- err
}

// send copies stream into the pipe in chunks, honouring the bandwidth limit,
// then waits for the receiver's verdict or an abort.
func (s *snapshot) send(n *Network, stream io.Reader) error {
	buf := make([]byte, snapshotChunk)
	var due time.Time
copying:
	for {
		select {
		case <-s.aborted:
			return s.cause
		default:
		}
		chunk := buf
		bps := n.bandwidth.Load()
		if bps > 0 {
			// About 50 chunks a second keeps throttling smooth at low rates.
			chunk = buf[:min(max(bps/50, 1024), snapshotChunk)]
		}
		nr, rerr := stream.Read(chunk)
		if nr > 0 {
			if err := s.throttle(&due, nr, bps); err != nil {
				return err
			}
			if _, werr := s.pw.Write(chunk[:nr]); werr != nil {
				// The receiver stopped reading: aborted, or its handler
				// returned. Either way the verdict is below.
				break copying
			}
		}
		switch {
		case rerr == io.EOF:
			_ = s.pw.Close()
			break copying
		case rerr != nil:
			s.abort(fmt.Errorf("memnet: reading snapshot stream: %w", rerr))
			return s.cause
		}
	}
	select {
	case err := <-s.result:
		if err == nil {
			return nil
		}
		select {
		case <-s.aborted:
			// The handler failed because the stream was aborted: report
			// why it was.
			return s.cause
		default:
		}
		return fmt.Errorf("memnet: snapshot %s→%s refused: %w", s.key.from, s.key.to, err)
	case <-s.aborted:
		return s.cause
	}
}

// throttle sleeps so that the stream does not exceed bps bytes per second.
// due is when the bytes sent so far are paid for; idle time earns no credit,
// so the rate holds even after a slow reader.
func (s *snapshot) throttle(due *time.Time, nr int, bps int64) error {
	if bps <= 0 {
		return nil
	}
	now := time.Now()
	if due.Before(now) {
		*due = now
	}
	*due = due.Add(time.Duration(int64(nr) * int64(time.Second) / bps))
	d := due.Sub(now)
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-s.aborted:
		return s.cause
	}
}
