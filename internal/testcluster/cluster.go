// Package testcluster runs several nodes in one process, each node on its own
// Pebble directory, with the built-in key-value state machine, over memnet
// (the fault-injecting in-memory network) or over real QUIC sockets on
// 127.0.0.1 with mutual TLS. Nodes can be stopped, restarted from their
// directory (as a process restart would) and wiped; links can be cut.
//
// Group placement and routing are static here: group g's founding replicas
// are on RF consecutive nodes, and vShards are spread over groups in
// contiguous ranges.
package testcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/cluster"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/kv"
	"github.com/nodedb/nodedb-cluster/internal/placement"
	"github.com/nodedb/nodedb-cluster/internal/transport"
	"github.com/nodedb/nodedb-cluster/internal/transport/memnet"
	"github.com/nodedb/nodedb-cluster/vshard"
)

// Options configures a test cluster. Zero values select the defaults.
type Options struct {
	Nodes   int // default 3
	Groups  int // data groups, default 4
	RF      int // replicas per group, default min(3, Nodes)
	VShards int // default 64
	Seed    int64
	// TickInterval defaults to 10ms, with ElectionTicks 10: elections after
	// 100-200ms of silence, fast enough for tests, slow enough for 2 cores.
	TickInterval  time.Duration
	ElectionTicks int
	// HeartbeatTicks defaults to 1 here (the cluster default is 2).
	HeartbeatTicks int
	// CommitNoticeDelay: see cluster.Config (default there).
	CommitNoticeDelay time.Duration
	// ReadLease turns on leader leases for linearizable reads.
	ReadLease bool
	// NoQuiesce keeps idle groups heartbeating (cluster.Config).
	NoQuiesce bool
	// LogMaxEntries and LogKeepEntries tune log truncation (defaults of the
	// cluster package when zero).
	LogMaxEntries, LogKeepEntries uint64
	// LogTruncateEntries tunes the leader's truncation of caught-up logs.
	LogTruncateEntries uint64
	// ClientIdleExpiry and Now: see cluster.Config (defaults 1 hour and
	// time.Now).
	ClientIdleExpiry time.Duration
	Now              func() time.Time
	// Workers is each node's Raft worker pool size (default GOMAXPROCS).
	Workers int
	// CacheBytes and MemTableBytes size each node's Pebble; defaults 8 MiB
	// and 4 MiB, small for tests. Benchmarks use the production defaults.
	CacheBytes    int64
	MemTableBytes uint64
	// Dir is the parent of the node directories; default a test temp dir.
	Dir string
	// Logger defaults to discarding unless NODEDB_TEST_LOG is set
	// (to debug, info, warn or error).
	Logger *slog.Logger
	// QUIC runs the nodes over real QUIC sockets on 127.0.0.1 with mutual
	// TLS (a test CA issues each node's certificate) instead of memnet. Cuts
	// (Isolate, Partition) then drop traffic at the endpoints; memnet's link
	// faults (loss, delay, duplication) are not available.
	QUIC bool
	// TCP runs the nodes over real TCP sockets with mutual TLS (tcpnet,
	// the transport of `start --transport tcp`) instead, with cuts as for
	// QUIC.
	TCP bool
}

func (o *Options) setDefaults(t testing.TB) {
	if o.Nodes <= 0 {
		o.Nodes = 3
	}
	if o.Groups <= 0 {
		o.Groups = 4
	}
	if o.RF <= 0 {
		o.RF = min(3, o.Nodes)
	}
	if o.VShards <= 0 {
		o.VShards = 64
	}
	if o.TickInterval <= 0 {
		o.TickInterval = 10 * time.Millisecond
	}
	if o.ElectionTicks <= 0 {
		o.ElectionTicks = 10
	}
	if o.HeartbeatTicks <= 0 {
		o.HeartbeatTicks = 1
	}
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	if o.CacheBytes == 0 {
		o.CacheBytes = 8 << 20
	}
	if o.MemTableBytes == 0 {
		o.MemTableBytes = 4 << 20
	}
	if o.Logger == nil {
		o.Logger = testLogger()
	}
}

func testLogger() *slog.Logger {
	var lvl slog.Level
	switch os.Getenv("NODEDB_TEST_LOG") {
	case "debug":
		lvl = slog.LevelDebug
	case "info":
		lvl = slog.LevelInfo
	case "warn":
		lvl = slog.LevelWarn
	case "error":
		lvl = slog.LevelError
	default:
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
}

// Group is a data group and its founding replicas.
type Group struct {
	ID       ids.GroupID
	Founders []cluster.Replica
}

// Cluster is a running test cluster.
type Cluster struct {
	t    testing.TB
	opts Options
	Net  *memnet.Network
	SM   *kv.StateMachine

	mu     sync.Mutex
	nodes  map[ids.NodeID]*cluster.Node // nil while stopped
	groups []Group
	closed bool

	quic *quicNet // nil over memnet
}

// New starts a cluster and bootstraps its groups. It is closed by t.Cleanup.
func New(t testing.TB, opts Options) *Cluster {
	t.Helper()
	opts.setDefaults(t)
	sm, err := kv.New(opts.VShards)
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{
		t:     t,
		opts:  opts,
		Net:   memnet.New(opts.Seed),
		SM:    sm,
		nodes: map[ids.NodeID]*cluster.Node{},
	}
	t.Cleanup(c.Close)
	if opts.QUIC || opts.TCP {
		c.quic = newQUICNet(t, opts.Nodes, opts.TCP)
	}
	layout, err := placement.Static(opts.Groups, opts.Nodes, opts.RF)
	if err != nil {
		t.Fatal(err)
	}
	for g, founders := range layout {
		c.groups = append(c.groups, Group{ID: ids.GroupID(g + 1), Founders: founders})
	}
	for i := 1; i <= opts.Nodes; i++ {
		id := ids.NodeID(i)
		if err := c.StartNode(id); err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
		for _, g := range c.groups {
			for _, f := range g.Founders {
				if f.Node == id {
					if err := c.nodes[id].BootstrapGroup(g.ID, f.Replica, g.Founders); err != nil {
						t.Fatalf("bootstrap %s on %s: %v", g.ID, id, err)
					}
				}
			}
		}
	}
	return c
}

// Options returns the cluster's effective options.
func (c *Cluster) Options() Options { return c.opts }

// Groups returns the data groups.
func (c *Cluster) Groups() []Group { return slices.Clone(c.groups) }

// NodeIDs lists every node, running or not.
func (c *Cluster) NodeIDs() []ids.NodeID {
	out := make([]ids.NodeID, 0, c.opts.Nodes)
	for i := 1; i <= c.opts.Nodes; i++ {
		out = append(out, ids.NodeID(i))
	}
	return out
}

// Dir returns node id's data dir.
func (c *Cluster) Dir(id ids.NodeID) string {
	return filepath.Join(c.opts.Dir, fmt.Sprintf("node%d", id))
}

// Node returns node id, or nil while it is stopped.
func (c *Cluster) Node(id ids.NodeID) *cluster.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[id]
}

// Live returns the running nodes.
func (c *Cluster) Live() []*cluster.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*cluster.Node
	for i := 1; i <= c.opts.Nodes; i++ {
		if n := c.nodes[ids.NodeID(i)]; n != nil {
			out = append(out, n)
		}
	}
	return out
}

// StartNode starts node id from its directory.
func (c *Cluster) StartNode(id ids.NodeID) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("testcluster: closed")
	}
	if c.nodes[id] != nil {
		return fmt.Errorf("testcluster: %s already running", id)
	}
	n, err := cluster.Start(cluster.Config{
		NodeID:             id,
		Dir:                c.Dir(id),
		StateMachine:       c.SM,
		Connect:            c.connector(id),
		TickInterval:       c.opts.TickInterval,
		ElectionTicks:      c.opts.ElectionTicks,
		HeartbeatTicks:     c.opts.HeartbeatTicks,
		CommitNoticeDelay:  c.opts.CommitNoticeDelay,
		ReadLease:          c.opts.ReadLease,
		NoQuiesce:          c.opts.NoQuiesce,
		Workers:            c.opts.Workers,
		LogMaxEntries:      c.opts.LogMaxEntries,
		LogKeepEntries:     c.opts.LogKeepEntries,
		LogTruncateEntries: c.opts.LogTruncateEntries,
		ClientIdleExpiry:   c.opts.ClientIdleExpiry,
		Now:                c.opts.Now,
		CacheBytes:         c.opts.CacheBytes,
		MemTableBytes:      c.opts.MemTableBytes,
		Logger:             c.opts.Logger.With("node", uint64(id)),
	})
	if err != nil {
		return err
	}
	c.nodes[id] = n
	return nil
}

func (c *Cluster) connector(id ids.NodeID) func(transport.Handler) (transport.Transport, error) {
	if c.quic != nil {
		return func(h transport.Handler) (transport.Transport, error) { return c.quic.listen(id, h, c.opts.Logger) }
	}
	return func(h transport.Handler) (transport.Transport, error) { return c.Net.Endpoint(id, h), nil }
}

// Isolate cuts node id off from every other node, both directions.
func (c *Cluster) Isolate(id ids.NodeID) {
	if c.quic != nil {
		c.quic.cut(func(a, b ids.NodeID) bool { return a == id || b == id })
		return
	}
	c.Net.Isolate(id)
}

// Partition cuts every link between a node of a and a node of b.
func (c *Cluster) Partition(a, b []ids.NodeID) {
	if c.quic != nil {
		c.quic.cut(func(x, y ids.NodeID) bool {
			return slices.Contains(a, x) && slices.Contains(b, y) || slices.Contains(b, x) && slices.Contains(a, y)
		})
		return
	}
	c.Net.Partition(a, b)
}

// Heal restores every cut link.
func (c *Cluster) Heal() {
	if c.quic != nil {
		c.quic.cut(nil)
		return
	}
	c.Net.Heal()
}

// StopNode stops node id, like a process exit; its directory stays.
func (c *Cluster) StopNode(id ids.NodeID) error {
	c.mu.Lock()
	n := c.nodes[id]
	c.nodes[id] = nil
	c.mu.Unlock()
	if n == nil {
		return nil
	}
	return n.Stop()
}

// RestartNode stops and restarts node id from its directory.
func (c *Cluster) RestartNode(id ids.NodeID) error {
	if err := c.StopNode(id); err != nil {
		return err
	}
	return c.StartNode(id)
}

// WipeNode stops node id and deletes its directory.
func (c *Cluster) WipeNode(id ids.NodeID) error {
	if err := c.StopNode(id); err != nil {
		return err
	}
	return os.RemoveAll(c.Dir(id))
}

// Close stops every node and the network.
func (c *Cluster) Close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	nodes := c.nodes
	c.nodes = map[ids.NodeID]*cluster.Node{}
	c.mu.Unlock()
	for id, n := range nodes {
		if n != nil {
			if err := n.Stop(); err != nil {
				c.t.Errorf("stop %s: %v", id, err)
			}
		}
	}
	c.Net.Close()
}

// Route returns the vShard and group of key.
func (c *Cluster) Route(key []byte) (uint32, ids.GroupID) {
	vs := vshard.ForKey(key, c.opts.VShards)
	return vs, c.GroupOfVShard(vs)
}

// GroupOfVShard returns the group owning vs: contiguous ranges of vShards
// per group.
func (c *Cluster) GroupOfVShard(vs uint32) ids.GroupID {
	return placement.VShardGroup(vs, c.opts.VShards, c.opts.Groups)
}

// Leader returns the running node that leads g, or nil.
func (c *Cluster) Leader(g ids.GroupID) *cluster.Node {
	for _, n := range c.Live() {
		if n.IsLeader(g) {
			return n
		}
	}
	return nil
}

// WaitLeader waits until some running node leads g.
func (c *Cluster) WaitLeader(ctx context.Context, g ids.GroupID) (*cluster.Node, error) {
	for {
		if n := c.Leader(g); n != nil {
			return n, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no leader for %s: %w", g, ctx.Err())
		case <-time.After(c.opts.TickInterval):
		}
	}
}

// WaitAllLeaders waits until every group has a leader.
func (c *Cluster) WaitAllLeaders(ctx context.Context) error {
	for _, g := range c.groups {
		if _, err := c.WaitLeader(ctx, g.ID); err != nil {
			return err
		}
	}
	return nil
}

// WaitConverged waits until every running replica of g has applied the same
// index as the leader's commit index and holds the same state, and returns
// that index. Replicas listed in skip are ignored.
func (c *Cluster) WaitConverged(ctx context.Context, g ids.GroupID, skip ...ids.NodeID) (uint64, error) {
	var last string
	for {
		idx, err := c.converged(g, skip)
		if err == nil {
			return idx, nil
		}
		last = err.Error()
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%s did not converge: %s: %w", g, last, ctx.Err())
		case <-time.After(c.opts.TickInterval):
		}
	}
}

func (c *Cluster) converged(g ids.GroupID, skip []ids.NodeID) (uint64, error) {
	leader := c.Leader(g)
	if leader == nil {
		return 0, errors.New("no leader")
	}
	lst, err := leader.Status(g)
	if err != nil {
		return 0, err
	}
	var (
		index uint64
		hash  [32]byte
		n     int
	)
	for _, d := range lst.Config.Replicas {
		if slices.Contains(skip, d.Node) {
			continue
		}
		node := c.Node(d.Node)
		if node == nil {
			continue
		}
		ai, h, err := node.StateHash(g)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", d.Node, err)
		}
		if ai < lst.Commit {
			return 0, fmt.Errorf("%s applied %d < commit %d", d.Node, ai, lst.Commit)
		}
		if n > 0 && (ai != index || h != hash) {
			return 0, fmt.Errorf("%s at %d differs from another replica at %d", d.Node, ai, index)
		}
		index, hash = ai, h
		n++
	}
	if n == 0 {
		return 0, errors.New("no running replica")
	}
	return index, nil
}
