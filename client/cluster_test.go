package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/apitest"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/server"
	"github.com/nodedb/nodedb-cluster/internal/testwatch"
)

func TestMain(m *testing.M) { testwatch.Main(m) }

// testCluster is real nodes (QUIC between them) in this process, each with
// its client API on a loopback port (internal/apitest).
type testCluster struct {
	*apitest.Cluster
	t     *testing.T
	addrs []string // API host:port, node 1 first
}

func testLog() *slog.Logger { return apitest.Log() }

// startCluster bootstraps node 1 (64 vShards, 4 groups, RF 3) and joins
// n-1 more, then serves each node's API on a free loopback port.
func startCluster(t *testing.T, n int, tick time.Duration) *testCluster {
	c := apitest.Start(t, n, tick)
	return &testCluster{Cluster: c, t: t, addrs: c.Addrs}
}

func (c *testCluster) node(i int) *server.Server { return c.Node(i) }

func (c *testCluster) stopNode(i int) { c.StopNode(i) }

// leader returns the index of the node that leads group g, or -1.
func (c *testCluster) leader(g ids.GroupID) int {
	for i := range c.addrs {
		if s := c.node(i); s != nil && s.Node().IsLeader(g) {
			return i
		}
	}
	return -1
}

// transfer moves group g's leadership to node index to, and waits until
// that node leads.
func (c *testCluster) transfer(ctx context.Context, g ids.GroupID, to int) error {
	from := c.leader(g)
	if from < 0 {
		return fmt.Errorf("group %d has no leader", g)
	}
	if from == to {
		return nil
	}
	ls := c.node(from)
	ts := c.node(to)
	if ls == nil || ts == nil {
		return fmt.Errorf("node stopped")
	}
	st, err := ts.Node().Status(g)
	if err != nil {
		return err
	}
	if err := ls.Node().TransferLeadership(ctx, g, st.Replica); err != nil {
		return err
	}
	for !ts.Node().IsLeader(g) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %d did not take group %d's leadership: %w", to+1, g, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// countingTransport counts requests and not_leader answers per host.
type countingTransport struct {
	base http.RoundTripper

	mu         sync.Mutex
	requests   map[string]int
	notLeaders map[string]int
	loads      int // GET /v1/cluster
}

func newCountingTransport() *countingTransport {
	return &countingTransport{
		base:       &http.Transport{MaxIdleConnsPerHost: 64},
		requests:   map[string]int{},
		notLeaders: map[string]int{},
	}
}

func (t *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(r)
	t.mu.Lock()
	defer t.mu.Unlock()
	if r.URL.Path == "/v1/cluster" {
		t.loads++
	} else {
		t.requests[r.URL.Host]++
		if err == nil && resp.StatusCode == http.StatusMisdirectedRequest {
			t.notLeaders[r.URL.Host]++
		}
	}
	return resp, err
}

func (t *countingTransport) reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	clear(t.requests)
	clear(t.notLeaders)
	t.loads = 0
}

func (t *countingTransport) snapshot() (req, nl map[string]int, loads int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	req, nl = map[string]int{}, map[string]int{}
	for k, v := range t.requests {
		req[k] = v
	}
	for k, v := range t.notLeaders {
		nl[k] = v
	}
	return req, nl, t.loads
}

func (t *countingTransport) close() { t.base.(*http.Transport).CloseIdleConnections() }

// newClient connects to the cluster; it is closed when the test ends.
func (c *testCluster) newClient(t *testing.T, cfg Config) *Client {
	t.Helper()
	if cfg.Endpoints == nil {
		cfg.Endpoints = c.addrs
	}
	if cfg.Logger == nil {
		cfg.Logger = testLog()
		if os.Getenv("NODEDB_CLIENT_LOG") != "" {
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// lossyTransport loses the answer of some writes after the cluster
// handled them, as a network failure would: the client must retry with the
// same exactly-once identity and get the first result.
type lossyTransport struct {
	base    *http.Transport
	percent int
	dropped atomic.Int64
}

func (t *lossyTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(r)
	carriesWrites := r.Method == http.MethodPut || r.Method == http.MethodDelete ||
		r.Method == http.MethodPost && r.URL.Path == "/v1/multi" // an exchange of many requests
	if err != nil || !carriesWrites || mrand.IntN(100) >= t.percent {
		return resp, err
	}
	// Every answer is read (so every write was applied), then lost.
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	t.dropped.Add(1)
	return nil, errors.New("lossy transport: answer lost")
}
