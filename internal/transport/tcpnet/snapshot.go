package tcpnet

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// A snapshot travels on a connection of its own: the raw snapshot bytes after
// the hello, ended by the sender's TLS close_notify (CloseWrite), then one
// FrameResult from the receiver. The receiver may answer early, refusing the
// snapshot part way; the sender reads the verdict while it writes, so it
// stops as soon as it is refused.

type verdict struct {
	res transport.Refusal
	err error
}

// SendSnapshot streams a snapshot to node to and returns once the receiver
// has accepted it or the transfer failed.
func (e *Endpoint) SendSnapshot(ctx context.Context, to ids.NodeID, stream io.Reader) error {
	if e.ctx.Err() != nil {
		return transport.ErrClosed
	}
	if !e.allowed(e.node, to) {
		return transport.ErrUnreachable
	}
	p := e.peer(to)
	if p == nil {
		return transport.ErrUnreachable
	}
	c, err := p.dial(transport.StreamSnapshot)
	if err != nil {
		return err
	}
	defer e.untrack(c.raw)
	stop := context.AfterFunc(ctx, func() { c.raw.Close() })
	defer stop()

	verdicts := make(chan verdict, 1)
	go func() { // waited for below, before returning
		var v verdict
		t, payload, err := transport.NewFrameReader(c.r, 8192).Next()
		switch {
		case err != nil:
			v.err = err
		case t != transport.FrameResult:
			v.err = fmt.Errorf("unexpected %s frame", t)
		default:
			v.res, v.err = transport.DecodeRefusal(payload)
		}
		if v.err == nil && v.res.Reason != "" {
			// Refused: stop the writer, the rest is of no use.
			c.raw.SetWriteDeadline(time.Now())
		}
		verdicts <- v
	}()

	cw := &recordingWriter{w: c.tls}
	w := bufio.NewWriterSize(cw, 256<<10)
	_, err = io.Copy(w, stream)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		if err = c.tls.CloseWrite(); err != nil {
			cw.err = err
		}
	}
	switch {
	case err == nil:
		// Wait for the verdict as long as ctx allows: the receiver verifies
		// and installs the snapshot before it answers.
	case cw.err == nil:
		c.raw.Close() // the source failed: abort the transfer
	default:
		// The connection failed, or the receiver refused part way: its
		// verdict, if it sent one, says why.
		c.raw.SetReadDeadline(time.Now().Add(e.cfg.DialTimeout))
	}
	v := <-verdicts
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case v.err == nil && v.res.Reason != "":
		return fmt.Errorf("snapshot to node %s: %w", to, &v.res)
	case err != nil:
		return fmt.Errorf("stream snapshot to node %s: %w", to, err)
	case v.err != nil:
		return fmt.Errorf("snapshot to node %s: no result: %w", to, v.err)
	}
	e.stats.SnapshotsSent.Add(1)
	return nil
}

// recordingWriter remembers the first write error, to tell a failed
// connection from a failed source.
type recordingWriter struct {
	w   io.Writer
	err error
}

func (r *recordingWriter) Write(b []byte) (int, error) {
	n, err := r.w.Write(b)
	if err != nil && r.err == nil {
		r.err = err
	}
	return n, err
}

// receiveSnapshot hands a snapshot connection to the handler and sends back
// its verdict.
func (e *Endpoint) receiveSnapshot(c *conn, from ids.NodeID) {
	if !e.allowed(from, e.node) {
		return // the caller closes the connection: the sender sees it fail
	}
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	err := e.h.HandleSnapshot(ctx, from, c.r)
	res := transport.Refusal{}
	if err != nil {
		res = transport.Refusal{Reason: "rejected", Message: err.Error()}
	} else {
		e.stats.SnapshotsReceived.Add(1)
	}
	c.raw.SetDeadline(time.Now().Add(e.cfg.DialTimeout))
	if transport.WriteFrame(c.tls, transport.FrameResult, res.Encode(nil)) != nil {
		return
	}
	// Closing with unread input would reset the connection, which can
	// destroy the verdict before the sender reads it: read until the sender,
	// having the verdict, closes (or ends its data, when it was accepted).
	io.Copy(io.Discard, c.r)
}
