package memnet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// zeroReader yields n zero bytes, or forever if n is negative.
type zeroReader struct{ n int64 }

func (z *zeroReader) Read(p []byte) (int, error) {
	if z.n == 0 {
		return 0, io.EOF
	}
	if z.n > 0 && int64(len(p)) > z.n {
		p = p[:z.n]
	}
	clear(p)
	if z.n > 0 {
		z.n -= int64(len(p))
	}
	return len(p), nil
}

// snapshotRecv is a snapshot handler that counts what it reads, signals when
// it has started, and records the error and context state it ended with.
type snapshotRecv struct {
	read    atomic.Int64
	started chan struct{}
	ended   chan error // buffered; receives the handler's read error
	ctxDone atomic.Bool
}

func newSnapshotRecv() *snapshotRecv {
	return &snapshotRecv{started: make(chan struct{}, 1), ended: make(chan error, 1)}
}

func (s *snapshotRecv) handle(ctx context.Context, _ ids.NodeID, r io.Reader) error {
	buf := make([]byte, 4096)
	for {
		nr, err := r.Read(buf)
		if s.read.Add(int64(nr)) > 0 {
			select {
			case s.started <- struct{}{}:
			default:
			}
		}
		if err != nil {
			s.ctxDone.Store(ctx.Err() != nil)
			if err == io.EOF {
				s.ended <- nil
				return nil
			}
			s.ended <- err
			return err
		}
	}
}

func TestSnapshotSuccess(t *testing.T) {
	n := New(1)
	defer n.Close()
	a := n.Endpoint(1, nil)
	data := make([]byte, 5<<20+123)
	rand.NewChaCha8([32]byte{1}).Read(data)
	var got [sha256.Size]byte
	var from ids.NodeID
	n.Endpoint(2, &recorder{snap: func(_ context.Context, f ids.NodeID, r io.Reader) error {
		b, err := io.ReadAll(r)
		got, from = sha256.Sum256(b), f
		return err
	}})
	if err := a.SendSnapshot(t.Context(), 2, bytes.NewReader(data)); err != nil {
		t.Fatalf("SendSnapshot: %v", err)
	}
	if got != sha256.Sum256(data) || from != 1 {
		t.Errorf("receiver got a different stream (from %s)", from)
	}
	if s := n.LinkStats(1, 2); s.SnapshotsOK != 1 || s.SnapshotsFailed != 0 {
		t.Errorf("stats = %+v", s)
	}
}

func TestSnapshotHandlerErrorReachesSender(t *testing.T) {
	errBoom := errors.New("boom")
	n := New(1)
	defer n.Close()
	a := n.Endpoint(1, nil)
	var mode atomic.Int32
	n.Endpoint(2, &recorder{snap: func(_ context.Context, _ ids.NodeID, r io.Reader) error {
		switch mode.Load() {
		case 0: // read some, then refuse
			if _, err := io.ReadFull(r, make([]byte, 10)); err != nil {
				return err
			}
			return errBoom
		case 1: // refuse without reading
			return errBoom
		default: // read everything, then refuse (checksum mismatch)
			_, _ = io.Copy(io.Discard, r)
			return errBoom
		}
	}})
	for m := range int32(3) {
		mode.Store(m)
		err := a.SendSnapshot(t.Context(), 2, &zeroReader{n: 10 << 20})
		if !errors.Is(err, errBoom) {
			t.Errorf("mode %d: SendSnapshot = %v, want errBoom", m, err)
		}
	}
	if s := n.Stats(); s.SnapshotsFailed != 3 {
		t.Errorf("SnapshotsFailed = %d", s.SnapshotsFailed)
	}
}

func TestSnapshotUnreachable(t *testing.T) {
	n := New(1)
	defer n.Close()
	a := n.Endpoint(1, nil)
	n.Endpoint(2, &recorder{})
	if err := a.SendSnapshot(t.Context(), 3, &zeroReader{n: 10}); !errors.Is(err, transport.ErrUnreachable) {
		t.Errorf("to unknown node: %v", err)
	}
	n.CutLink(1, 2)
	if err := a.SendSnapshot(t.Context(), 2, &zeroReader{n: 10}); !errors.Is(err, transport.ErrUnreachable) {
		t.Errorf("over a cut link: %v", err)
	}
	n.Heal()
	n.CutLink(2, 1) // the reverse direction does not matter
	if err := a.SendSnapshot(t.Context(), 2, &zeroReader{n: 10}); err != nil {
		t.Errorf("with only the reverse link cut: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := a.SendSnapshot(ctx, 2, &zeroReader{n: 10}); !errors.Is(err, context.Canceled) {
		t.Errorf("with a cancelled context: %v", err)
	}
	if err := a.SendSnapshot(t.Context(), 2, nil); err == nil {
		t.Error("nil stream accepted")
	}
	// A node registered without a handler refuses snapshots.
	n.Endpoint(4, nil)
	if err := a.SendSnapshot(t.Context(), 4, &zeroReader{n: 10}); err == nil {
		t.Error("handlerless node accepted a snapshot")
	}
	if s := n.Stats(); s.SnapshotsOK != 1 || s.SnapshotsFailed != 5 {
		t.Errorf("stats = %+v", s)
	}
}

// interrupt starts an endless snapshot from 1 to 2, waits until the
// receiver has data, runs disrupt, and returns the sender's error, the
// receiver's error and whether the receiver's context was cancelled. It
// fails the test if the sender does not return within a second.
func interrupt(ctx context.Context, t *testing.T, n *Network, disrupt func()) (sendErr, recvErr error, ctxDone bool) {
	t.Helper()
	a := n.Endpoint(1, nil)
	rv := newSnapshotRecv()
	n.Endpoint(2, &recorder{snap: rv.handle})
	res := make(chan error, 1)
	go func() { res <- a.SendSnapshot(ctx, 2, &zeroReader{n: -1}) }()
	<-rv.started
	disrupt()
	select {
	case sendErr = <-res:
	case <-time.After(time.Second):
		t.Fatal("sender did not fail promptly")
	}
	select {
	case recvErr = <-rv.ended:
	case <-time.After(time.Second):
		t.Fatal("receiver did not fail promptly")
	}
	return sendErr, recvErr, rv.ctxDone.Load()
}

func TestSnapshotCutMidStream(t *testing.T) {
	for name, disrupt := range map[string]func(n *Network){
		"CutLink":   func(n *Network) { n.CutLink(1, 2) },
		"Isolate":   func(n *Network) { n.Isolate(2) },
		"Partition": func(n *Network) { n.Partition([]ids.NodeID{2}, []ids.NodeID{1}) },
	} {
		t.Run(name, func(t *testing.T) {
			n := New(1)
			defer n.Close()
			n.SetSnapshotBandwidth(1 << 20)
			sendErr, recvErr, ctxDone := interrupt(t.Context(), t, n, func() { disrupt(n) })
			if !errors.Is(sendErr, transport.ErrUnreachable) {
				t.Errorf("sender: %v, want ErrUnreachable", sendErr)
			}
			if recvErr == nil || !ctxDone {
				t.Errorf("receiver: err %v, ctx cancelled %v", recvErr, ctxDone)
			}
		})
	}
}

func TestSnapshotContextCancel(t *testing.T) {
	n := New(1)
	defer n.Close()
	// No bandwidth limit: the sender is blocked in the pipe, not in a
	// throttling sleep, when the context ends.
	ctx, cancel := context.WithCancel(t.Context())
	sendErr, recvErr, ctxDone := interrupt(ctx, t, n, cancel)
	if !errors.Is(sendErr, context.Canceled) {
		t.Errorf("sender: %v, want context.Canceled", sendErr)
	}
	if recvErr == nil || !ctxDone {
		t.Errorf("receiver: err %v, ctx cancelled %v", recvErr, ctxDone)
	}
}

func TestSnapshotReceiverCloses(t *testing.T) {
	n := New(1)
	defer n.Close()
	n.SetSnapshotBandwidth(1 << 20)
	sendErr, recvErr, _ := interrupt(t.Context(), t, n, func() {
		// Closing the receiving endpoint aborts the stream into it and
		// waits for its handler.
		n.mu.RLock()
		e := n.endpoints[2]
		n.mu.RUnlock()
		_ = e.Close()
	})
	if !errors.Is(sendErr, transport.ErrUnreachable) || recvErr == nil {
		t.Errorf("sender %v, receiver %v", sendErr, recvErr)
	}
}

func TestSnapshotNetworkClose(t *testing.T) {
	n := New(1)
	sendErr, recvErr, _ := interrupt(t.Context(), t, n, n.Close)
	if !errors.Is(sendErr, transport.ErrClosed) || recvErr == nil {
		t.Errorf("sender %v, receiver %v", sendErr, recvErr)
	}
}

type failingReader struct{ n int }

var errDisk = errors.New("disk on fire")

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errDisk
	}
	k := min(len(p), f.n)
	f.n -= k
	return k, nil
}

func TestSnapshotSourceReadError(t *testing.T) {
	n := New(1)
	defer n.Close()
	a := n.Endpoint(1, nil)
	rv := newSnapshotRecv()
	n.Endpoint(2, &recorder{snap: rv.handle})
	err := a.SendSnapshot(t.Context(), 2, &failingReader{n: 100 << 10})
	if !errors.Is(err, errDisk) {
		t.Errorf("sender: %v, want errDisk", err)
	}
	if rerr := <-rv.ended; !errors.Is(rerr, errDisk) {
		t.Errorf("receiver: %v, want errDisk (a truncated stream must not look complete)", rerr)
	}
}

// TestSnapshotBandwidthAndHeartbeats checks that a rate-limited snapshot
// takes the time its size implies and that raft traffic keeps flowing on the
// same link meanwhile.
func TestSnapshotBandwidthAndHeartbeats(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := New(1)
		defer n.Close()
		a := n.Endpoint(1, nil)
		r := &recorder{}
		n.Endpoint(2, r)
		n.SetLink(1, 2, LinkFaults{MinDelay: time.Millisecond, MaxDelay: time.Millisecond})
		n.SetSnapshotBandwidth(100 << 10)

		start := time.Now()
		done := make(chan error, 1)
		go func() { done <- a.SendSnapshot(t.Context(), 2, &zeroReader{n: 200 << 10}) }()
		var beats int
	loop:
		for seq := uint64(0); ; seq++ {
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("SendSnapshot: %v", err)
				}
				break loop
			case <-time.After(10 * time.Millisecond):
				send(t, a, 2, hb(seq, 1))
				beats++
			}
		}
		el := time.Since(start)
		if el < 1900*time.Millisecond || el > 2100*time.Millisecond {
			t.Errorf("200 KiB at 100 KiB/s took %v, want about 2s", el)
		}
		synctest.Wait()
		if got := r.count(); got < beats-1 || got < 150 {
			t.Errorf("%d of %d heartbeats delivered during the snapshot", got, beats)
		}
	})
}
