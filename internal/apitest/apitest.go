// Package apitest starts real clusters for tests of the client API and its
// clients: nodes in this process, QUIC with mutual TLS between them on
// 127.0.0.1, each with its API on a loopback port. Node 1 bootstraps
// (64 vShards, 4 groups, RF 3) and the others join with tokens.
package apitest

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/api"
	"github.com/nodedb/nodedb-cluster/internal/freeport"
	"github.com/nodedb/nodedb-cluster/internal/server"
)

// Cluster is a running test cluster; it stops when the test ends.
type Cluster struct {
	t     testing.TB
	mu    sync.Mutex
	nodes []*server.Server // nil once stopped
	eps   []*api.Endpoint
	// Addrs are the nodes' API addresses (host:port), node 1 first.
	Addrs []string
}

// FreeUDP returns a free UDP address on 127.0.0.1.
func FreeUDP(t testing.TB) string {
	addr, err := freeport.UDP()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// FreeTCP returns a free TCP address on 127.0.0.1.
func FreeTCP(t testing.TB) string {
	addr, err := freeport.TCP()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// Log discards logs unless NODEDB_TEST_LOG is set.
func Log() *slog.Logger {
	if os.Getenv("NODEDB_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// Start starts n nodes with the given Raft tick and waits until every node
// is ready and every group has min(3, n) voters.
func Start(t testing.TB, n int, tick time.Duration) *Cluster {
	t.Helper()
	root := t.TempDir() // removed after Stop: cleanups run last-in first-out
	c := &Cluster{t: t}
	t.Cleanup(c.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range n {
		cfg := server.Config{
			Dir: filepath.Join(root, fmt.Sprintf("n%d", i+1)), Listen: FreeUDP(t), API: FreeTCP(t), TickInterval: tick,
			ControlInterval: 100 * time.Millisecond, MaxValueBytes: 64 << 10, Logger: Log(),
		}
		if i == 0 {
			cfg.Bootstrap, cfg.Settings = true, server.Settings{VShards: 64, Groups: 4, RF: 3}
		} else {
			cfg.Join, cfg.Token = c.nodes[0].Addr().String(), c.token(ctx)
		}
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
		c.Addrs = append(c.Addrs, ep.Addr().String())
	}
	for {
		err := c.ready(n)
		if err == nil {
			return c
		}
		select {
		case <-ctx.Done():
			t.Fatalf("cluster not ready: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (c *Cluster) token(ctx context.Context) string {
	for {
		tok, _, err := c.nodes[0].CreateToken(ctx, time.Minute)
		if err == nil {
			return tok
		}
		if ctx.Err() != nil {
			c.t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *Cluster) ready(n int) error {
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

// Node returns node i (0-based), nil once stopped.
func (c *Cluster) Node(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

// Len is the number of nodes started.
func (c *Cluster) Len() int { return len(c.Addrs) }

// StopNode stops node i abruptly: the server first, then its API.
func (c *Cluster) StopNode(i int) {
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

// Stop stops every node still running.
func (c *Cluster) Stop() {
	for i := range c.nodes {
		c.StopNode(i)
	}
}

// WaitConverged waits until every node answers the same applied index and
// state hash for group g through its admin socket, and fails the test if
// that does not happen before ctx ends. Equal hashes at equal indexes are
// what "the replicas converged" means: the same commands applied to the
// same state.
func WaitConverged(ctx context.Context, t testing.TB, admins []*server.AdminClient, g uint64) {
	t.Helper()
	var last []server.HashAnswer
	for {
		last = last[:0]
		for _, a := range admins {
			h, err := a.Hash(ctx, g)
			if err != nil {
				break // a node still starting, or one without the replica yet
			}
			last = append(last, h)
		}
		if len(last) == len(admins) && last[0].Applied > 0 {
			same := true
			for _, h := range last[1:] {
				same = same && h == last[0]
			}
			if same {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("group %d did not converge: %+v", g, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
