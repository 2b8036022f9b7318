package transport

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

func TestSendQueueRunWritesWhatIsQueued(t *testing.T) {
	q := NewSendQueue(10)
	if !q.Push([]byte("abc")) || !q.Push([]byte("defg")) {
		t.Fatal("frames within the bound refused")
	}
	if q.Push([]byte("hijk")) {
		t.Fatal("a frame beyond the bound was queued")
	}
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var wrote []string
	var frames []int
	fail := errors.New("peer gone")
	done := make(chan struct{})
	go func() {
		defer close(done)
		q.Run(ctx, func(b []byte) error {
			mu.Lock()
			defer mu.Unlock()
			wrote = append(wrote, string(b))
			if len(wrote) == 2 {
				return fail
			}
			return nil
		}, func(n int, err error) {
			mu.Lock()
			defer mu.Unlock()
			frames = append(frames, n)
			if (len(frames) == 2) != (err == fail) {
				t.Errorf("write %d reported error %v", len(frames), err)
			}
		})
	}()
	waitLen := func(n int) {
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			l := len(frames)
			mu.Unlock()
			if l >= n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("only %d writes", l)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitLen(1)
	q.Push([]byte("x"))
	waitLen(2)
	cancel()
	<-done
	if len(wrote) != 2 || wrote[0] != "abcdefg" || wrote[1] != "x" || frames[0] != 2 || frames[1] != 1 {
		t.Fatalf("wrote %q in %v frames", wrote, frames)
	}
}

func TestRPCHandlers(t *testing.T) {
	var r RPCHandlers
	if r.Lookup("x") != nil {
		t.Fatal("empty registry found a handler")
	}
	r.Handle("x", func(context.Context, ids.NodeID, []byte) ([]byte, error) { return []byte("ok"), nil })
	h := r.Lookup("x")
	if h == nil || r.Lookup("y") != nil {
		t.Fatal("lookup")
	}
	if out, _ := h(context.Background(), 1, nil); string(out) != "ok" {
		t.Fatal("wrong handler")
	}
}
