package transport

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// TestCallWriteIsBounded: a peer that never reads (its flow-control window
// shut) cannot hold a caller past its write deadline; the stream is failed
// and later calls on it fail at once instead of queueing behind the write.
func TestCallWriteIsBounded(t *testing.T) {
	local, remote := net.Pipe() // a write blocks until the other end reads
	defer local.Close()
	defer remote.Close()
	c := NewRPCClient(local, 2, 0, func() { local.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Call(ctx, "m", []byte("request"))
	took := time.Since(start)
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("call to a peer that does not read: %v, want ErrUnreachable", err)
	}
	// The caller's deadline was 50ms; the write is given rpcWriteFloor.
	if took < rpcWriteFloor || took > rpcWriteFloor+2*time.Second {
		t.Fatalf("call returned after %v, want about %v", took, rpcWriteFloor)
	}
	if c.Err() == nil {
		t.Fatal("the client was not failed by a write that timed out half-way")
	}
	start = time.Now()
	if _, err := c.Call(context.Background(), "m", nil); !errors.Is(err, ErrUnreachable) || time.Since(start) > 100*time.Millisecond {
		t.Fatalf("call on a failed client: %v after %v", err, time.Since(start))
	}
}

func TestRPCWriteDeadline(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	near, c1 := context.WithDeadline(context.Background(), now.Add(time.Millisecond))
	defer c1()
	far, c2 := context.WithDeadline(context.Background(), now.Add(time.Minute))
	defer c2()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		want time.Time
	}{
		{"no deadline", context.Background(), now.Add(rpcWriteDefault)},
		{"near deadline gets the floor", near, now.Add(rpcWriteFloor)},
		{"far deadline", far, now.Add(time.Minute)},
	} {
		if got := rpcWriteDeadline(tc.ctx, now); !got.Equal(tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestServeResponseWriteIsBounded: a peer that sends a request and never
// reads its answer cannot hold the server: the response's write times out,
// the stream is aborted, and Serve returns with every handler done.
func TestServeResponseWriteIsBounded(t *testing.T) {
	local, remote := net.Pipe() // a write blocks until the other end reads
	defer remote.Close()
	aborted := make(chan struct{})
	srv := RPCServer{
		From:     1,
		Inflight: make(chan struct{}, 4),
		Lookup: func(string) RPCHandler {
			return func(context.Context, ids.NodeID, []byte) ([]byte, error) { return []byte("answer"), nil }
		},
		WriteTimeout: 100 * time.Millisecond,
		Abort: func() {
			close(aborted)
			local.Close()
		},
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), local, local) }()

	b, off := BeginFrame(nil)
	b = (&RPCRequest{ID: 1, Method: "m", Body: []byte("q")}).Encode(b)
	b, err := FinishFrame(b, off, FrameRPCRequest)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Write(b); err != nil {
		t.Fatal(err)
	}
	// remote never reads the answer.
	select {
	case <-aborted:
	case <-time.After(5 * time.Second):
		t.Fatal("the stream was not aborted after the answer's write timed out")
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after the stream was aborted")
	}
}
