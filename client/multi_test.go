package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/multiwire"
)

// multiCounter is a transport that counts POST /v1/multi exchanges and the
// requests they carry, and can play a node that does not know the route.
type multiCounter struct {
	base      *http.Transport
	oldNode   bool // answer 404 to /v1/multi, as a node from before it would
	exchanges atomic.Int64
	carried   atomic.Int64
	largest   atomic.Int64
	singles   atomic.Int64 // KV requests sent alone
	refused   atomic.Int64
}

func (m *multiCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodPost && r.URL.Path == "/v1/multi" {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return nil, err
		}
		if m.oldNode {
			m.refused.Add(1)
			return &http.Response{StatusCode: http.StatusNotFound, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("404 page not found\n")), Request: r}, nil
		}
		reqs, err := multiwire.DecodeRequests(body, multiwire.DefaultLimits())
		if err != nil {
			return nil, fmt.Errorf("client sent a malformed exchange: %w", err)
		}
		m.exchanges.Add(1)
		m.carried.Add(int64(len(reqs)))
		for {
			l := m.largest.Load()
			if int64(len(reqs)) <= l || m.largest.CompareAndSwap(l, int64(len(reqs))) {
				break
			}
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
	} else if strings.HasPrefix(r.URL.Path, "/v1/kv/") {
		m.singles.Add(1)
	}
	return m.base.RoundTrip(r)
}

// TestMultiCoalesces: concurrent callers share exchanges, every request is
// carried exactly once, and each caller gets its own answer.
func TestMultiCoalesces(t *testing.T) {
	c := startCluster(t, 3, 20*time.Millisecond)
	mc := &multiCounter{base: &http.Transport{MaxIdleConnsPerHost: 16}}
	t.Cleanup(mc.base.CloseIdleConnections)
	cl := c.newClient(t, Config{HTTPClient: &http.Client{Transport: mc}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const callers, each = 64, 10
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for w := range callers {
		wg.Go(func() {
			for i := range each {
				k := []byte(fmt.Sprintf("mc/%d/%d", w, i))
				r, err := cl.Put(ctx, k, []byte(fmt.Sprint(w*1000+i)))
				if err == nil && r.Version != 1 {
					err = fmt.Errorf("put %s: version %d", k, r.Version)
				}
				if err == nil {
					var g GetResult
					g, err = cl.Get(ctx, k)
					if err == nil && string(g.Value) != fmt.Sprint(w*1000+i) {
						err = fmt.Errorf("get %s: %q", k, g.Value)
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	ops := int64(2 * callers * each)
	t.Logf("%d requests in %d exchanges (largest %d), %d alone", mc.carried.Load(), mc.exchanges.Load(), mc.largest.Load(), mc.singles.Load())
	// A request that finds its node's pipe idle goes alone; with 64
	// callers most share exchanges.
	if mc.singles.Load() >= mc.carried.Load() {
		t.Errorf("%d KV requests were sent alone, %d carried: the callers did not share exchanges", mc.singles.Load(), mc.carried.Load())
	}
	// Retries (a leader hint, say) are sent again: at least one sending per
	// operation.
	if mc.carried.Load()+mc.singles.Load() < ops {
		t.Errorf("%d requests carried and %d sent alone for %d operations", mc.carried.Load(), mc.singles.Load(), ops)
	}
	if mc.largest.Load() < 2 || mc.exchanges.Load() >= mc.carried.Load() {
		t.Errorf("no exchange carried more than one request (%d exchanges for %d requests)", mc.exchanges.Load(), mc.carried.Load())
	}
}

// TestMultiFallsBackOnAnOldNode: a node that answers 404 to /v1/multi gets
// single requests from then on, and the caller never sees the 404.
func TestMultiFallsBackOnAnOldNode(t *testing.T) {
	c := startCluster(t, 3, 20*time.Millisecond)
	mc := &multiCounter{base: &http.Transport{MaxIdleConnsPerHost: 16}, oldNode: true}
	t.Cleanup(mc.base.CloseIdleConnections)
	cl := c.newClient(t, Config{HTTPClient: &http.Client{Transport: mc}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Concurrent callers, so that requests queue behind a lone one and go
	// to /v1/multi.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Go(func() {
			for i := range 15 {
				k := []byte(fmt.Sprintf("old/%d/%d", w, i))
				if _, err := cl.Put(ctx, k, []byte("v")); err != nil {
					errs <- err
					return
				}
				if g, err := cl.Get(ctx, k); err != nil || string(g.Value) != "v" {
					errs <- fmt.Errorf("get %s: %q %v", k, g.Value, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Each node refuses at most the exchanges in flight to it before its
	// first refusal came back.
	if r := mc.refused.Load(); r == 0 || r > int64(maxSending*len(c.addrs)) {
		t.Errorf("%d exchanges refused by %d nodes: want between 1 and %d per node", r, len(c.addrs), maxSending)
	}
	if mc.singles.Load() < 240 {
		t.Errorf("%d requests sent alone, want 240", mc.singles.Load())
	}
}

// TestCarriedRequestEndsAtItsAttemptDeadline: a request queued for, or
// carried by, a /v1/multi exchange ends at its attempt's deadline even when
// its caller's context allows far more (the node never answers here), and
// one whose deadline passed before its exchange started is not sent.
func TestCarriedRequestEndsAtItsAttemptDeadline(t *testing.T) {
	var exchanges atomic.Int64
	hang := make(chan struct{})
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		exchanges.Add(1)
		<-hang
	}))
	defer ts.Close()
	defer close(hang) // before Close, which waits for the handlers
	c := &Client{cfg: Config{RequestTimeout: 5 * time.Second, MultiMaxRequests: 64}, hc: ts.Client(), scheme: "http"}
	defer c.pipesWG.Wait()
	p := &pipe{c: c, addr: strings.TrimPrefix(ts.URL, "http://")}
	p.sending = maxSending // every sending slot taken: requests queue
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	alone := func() (*response, error) { t.Fatal("sent alone"); return nil, nil }

	start := time.Now()
	_, err := p.do(ctx, start.Add(150*time.Millisecond), http.MethodGet, "/v1/kv/a", http.Header{}, nil, alone)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("queued request past its deadline: %v", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond || d > 2*time.Second {
		t.Fatalf("queued request ended after %v, want about 150ms", d)
	}
	// Its deadline has passed: when a slot frees, the queued request is
	// dropped rather than sent.
	p.mu.Lock()
	p.sending--
	p.startLocked()
	p.mu.Unlock()
	time.Sleep(100 * time.Millisecond)
	if n := exchanges.Load(); n != 0 {
		t.Fatalf("%d exchanges carried a request whose deadline had passed", n)
	}
	// A carried request whose exchange never answers ends at its deadline.
	p.mu.Lock()
	p.sending = 1 // busy, with a slot free: the next request queues and goes at once
	p.mu.Unlock()
	start = time.Now()
	_, err = p.do(ctx, start.Add(200*time.Millisecond), http.MethodGet, "/v1/kv/b", http.Header{}, nil, alone)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("carried request past its deadline: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second || exchanges.Load() != 1 {
		t.Fatalf("carried request ended after %v with %d exchanges", d, exchanges.Load())
	}
}
