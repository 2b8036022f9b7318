package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/nodedb/nodedb-cluster/internal/api"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/server"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testCluster is real nodes (QUIC between them) in this process, each with
// its client API on a loopback port (the harness of internal/api's tests).
type testCluster struct {
	t     *testing.T
	mu    sync.Mutex
	nodes []*server.Server // nil once stopped
	eps   []*api.Endpoint
	addrs []string // API host:port
}

func freeUDP(t *testing.T) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().String()
}

func freeTCP(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func testLog() *slog.Logger {
	if os.Getenv("NODEDB_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startCluster bootstraps node 1 (64 vShards, 4 groups, RF 3) and joins
// n-1 more, then serves each node's API on a free loopback port.
func startCluster(t *testing.T, n int, tick time.Duration) *testCluster {
	root := t.TempDir() // removed after c.stop: cleanups run last-in first-out
	c := &testCluster{t: t}
	t.Cleanup(c.stop)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range n {
		cfg := server.Config{
			Dir: filepath.Join(root, fmt.Sprintf("n%d", i+1)), Listen: freeUDP(t), TickInterval: tick,
			ControlInterval: 100 * time.Millisecond, MaxValueBytes: 64 << 10, Logger: testLog(),
		}
		if i == 0 {
			cfg.Bootstrap, cfg.Settings = true, server.Settings{VShards: 64, Groups: 4, RF: 3}
		} else {
			var tok string
			for {
				var err error
				if tok, _, err = c.nodes[0].CreateToken(ctx, time.Minute); err == nil {
					break
				}
				if ctx.Err() != nil {
					t.Fatal(err)
				}
				time.Sleep(50 * time.Millisecond)
			}
			cfg.Join, cfg.Token = c.nodes[0].Addr().String(), tok
		}
		cfg.API = freeTCP(t)
		s, err := server.Start(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, s)
		ep, err := api.Listen(api.Config{Addr: cfg.API, Metrics: s.Registry()}, s)
		if err != nil {
			t.Fatal(err)
		}
		c.eps = append(c.eps, ep)
		c.addrs = append(c.addrs, ep.Addr().String())
	}
	c.waitReady(ctx, n)
	return c
}

func (c *testCluster) waitReady(ctx context.Context, n int) {
	for {
		err := c.ready(n)
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			c.t.Fatalf("cluster not ready: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (c *testCluster) ready(n int) error {
	for _, s := range c.nodes {
		if err := s.Ready(); err != nil {
			return err
		}
	}
	st, err := c.nodes[0].ClusterStatus()
	if err != nil {
		return err
	}
	for _, g := range st.Groups {
		if len(g.Voters) != min(3, n) || len(g.Learners) > 0 {
			return fmt.Errorf("group %d voters %v learners %v", g.ID, g.Voters, g.Learners)
		}
	}
	return nil
}

// node returns node i (0-based), nil once stopped.
func (c *testCluster) node(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

// stopNode stops node i abruptly: the server first, then its API.
func (c *testCluster) stopNode(i int) {
	c.mu.Lock()
	s := c.nodes[i]
	c.nodes[i] = nil
	c.mu.Unlock()
	if s == nil {
		return
	}
	s.Stop()
	c.eps[i].Close()
}

func (c *testCluster) stop() {
	c.mu.Lock()
	nodes := c.nodes
	c.nodes = make([]*server.Server, len(nodes))
	c.mu.Unlock()
	for i, s := range nodes {
		if s != nil {
			c.eps[i].Close()
		}
	}
	for _, s := range nodes {
		if s != nil {
			s.Stop()
		}
	}
}

// leader returns the index of the node that leads group g, or -1.
func (c *testCluster) leader(g ids.GroupID) int {
	for i := range c.nodes {
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
	if err != nil || (r.Method != http.MethodPut && r.Method != http.MethodDelete) || mrand.IntN(100) >= t.percent {
		return resp, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	t.dropped.Add(1)
	return nil, errors.New("lossy transport: answer lost")
}
