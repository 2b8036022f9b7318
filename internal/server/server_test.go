package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/nodedb/nodedb-cluster/internal/failpoint"
	"github.com/nodedb/nodedb-cluster/internal/freeport"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/kv"
	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/testwatch"
)

func TestMain(m *testing.M) { testwatch.Main(m) }

// testCluster is a cluster of in-process nodes over real QUIC on 127.0.0.1.
type testCluster struct {
	t     *testing.T
	root  string
	nodes []*Server // index i is the i-th node started (nil when stopped)
	dirs  []string
	// tune, if set, adjusts every node's config before it starts.
	tune func(*Config)
}

// config is baseConfig tuned for this cluster.
func (c *testCluster) config(dir string) Config {
	cfg := baseConfig(c.t, dir)
	if c.tune != nil {
		c.tune(&cfg)
	}
	return cfg
}

// freeAddr is a 127.0.0.1 address that was free a moment ago for a node
// on transport (UDP for QUIC, the default; TCP for TransportTCP).
func freeAddr(t *testing.T, transport string) string {
	t.Helper()
	free := freeport.UDP
	if transport == TransportTCP {
		free = freeport.TCP
	}
	addr, err := free()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("NODEDB_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// baseConfig is a node config with fast clocks for tests.
func baseConfig(t *testing.T, dir string) Config {
	return Config{
		Dir:             dir,
		TickInterval:    20 * time.Millisecond,
		ControlInterval: 100 * time.Millisecond,
		JoinTimeout:     30 * time.Second,
		Logger:          testLogger(t).With("dir", filepath.Base(dir)),
	}
}

func newTestCluster(t *testing.T, settings Settings) *testCluster {
	return newTunedCluster(t, settings, nil)
}

// newTunedCluster is newTestCluster with every node's config adjusted by
// tune (nil: none).
func newTunedCluster(t *testing.T, settings Settings, tune func(*Config)) *testCluster {
	c := &testCluster{t: t, root: t.TempDir(), tune: tune}
	t.Cleanup(c.stopAll)
	cfg := c.config(c.dir(0))
	cfg.Listen, cfg.Bootstrap, cfg.Settings = freeAddr(t, cfg.Transport), true, settings
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Created() || s.ID() != 1 {
		t.Fatalf("bootstrap: created=%v id=%d", s.Created(), s.ID())
	}
	c.nodes, c.dirs = append(c.nodes, s), append(c.dirs, cfg.Dir)
	return c
}

func (c *testCluster) dir(i int) string { return filepath.Join(c.root, fmt.Sprintf("n%d", i)) }

// token creates a join token through node i.
func (c *testCluster) token(i int, ttl time.Duration) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		tok, _, err := c.nodes[i].CreateToken(ctx, ttl)
		if err == nil {
			return tok
		}
		if ctx.Err() != nil {
			c.t.Fatalf("create token: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// joinConfig is the config of a new node joining through node via.
func (c *testCluster) joinConfig(dir string, via int, tok string) Config {
	cfg := c.config(dir)
	cfg.Listen, cfg.Join, cfg.Token = freeAddr(c.t, cfg.Transport), c.nodes[via].Addr().String(), tok
	return cfg
}

// join starts a new node that joins through node 0.
func (c *testCluster) join() *Server {
	c.t.Helper()
	dir := c.dir(len(c.dirs))
	s, err := Start(context.Background(), c.joinConfig(dir, 0, c.token(0, time.Minute)))
	if err != nil {
		c.t.Fatalf("join: %v", err)
	}
	c.nodes, c.dirs = append(c.nodes, s), append(c.dirs, dir)
	return s
}

func (c *testCluster) stopAll() {
	for i, s := range c.nodes {
		if s != nil {
			s.Stop()
			c.nodes[i] = nil
		}
	}
}

// restart starts node i again from its dir.
func (c *testCluster) restart(i int) {
	c.t.Helper()
	s, err := Start(context.Background(), c.config(c.dirs[i]))
	if err != nil {
		c.t.Fatalf("restart node %d: %v", i, err)
	}
	c.nodes[i] = s
}

// waitPlaced waits until every node is active, every data group has voters
// voters (the metadata group min(5, nodes)), no learner is left, the Raft
// configuration of every group on its leader matches, and every node has
// applied the same metadata. It returns the status of node 0.
func (c *testCluster) waitPlaced(nodes, voters int) ClusterStatus {
	c.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		st, err := c.placed(nodes, voters)
		if err == nil {
			return st
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatalf("cluster not placed: %v", last)
	return ClusterStatus{}
}

func (c *testCluster) placed(nodes, voters int) (ClusterStatus, error) {
	var first ClusterStatus
	for i, s := range c.nodes {
		if s == nil {
			continue
		}
		st, err := s.ClusterStatus()
		if err != nil {
			return st, fmt.Errorf("node %d: %w", s.ID(), err)
		}
		if i == 0 {
			first = st
			continue
		}
		if st.AppliedEntries != first.AppliedEntries {
			return st, fmt.Errorf("node %d applied %d metadata entries, node %d %d", s.ID(), st.AppliedEntries, first.Node, first.AppliedEntries)
		}
	}
	st := first
	active := 0
	for _, n := range st.Nodes {
		if n.State == "active" {
			active++
		}
	}
	if active != nodes || len(st.Nodes) != nodes {
		return st, fmt.Errorf("%d nodes, %d active, want %d", len(st.Nodes), active, nodes)
	}
	for _, g := range st.Groups {
		want := voters
		if g.ID == 0 {
			want = min(5, nodes)
		}
		if len(g.Voters) != want || len(g.Learners) > 0 {
			return st, fmt.Errorf("group %d: voters %v learners %v, want %d voters", g.ID, g.Voters, g.Learners, want)
		}
		if err := c.raftMatches(g); err != nil {
			return st, err
		}
	}
	return st, nil
}

// raftMatches checks that group g's Raft configuration on its leader has
// the voters the metadata lists, and that the leader knows them all.
func (c *testCluster) raftMatches(g GroupInfo) error {
	for _, s := range c.nodes {
		if s == nil || !s.Node().IsLeader(ids.GroupID(g.ID)) {
			continue
		}
		gs, err := s.Node().Status(ids.GroupID(g.ID))
		if err != nil {
			return err
		}
		var voters []uint64
		for _, r := range gs.Config.Replicas {
			if slices.Contains(gs.Config.ConfState.Voters, uint64(r.Replica)) {
				voters = append(voters, uint64(r.Node))
			}
		}
		slices.Sort(voters)
		if !slices.Equal(voters, g.Voters) || len(gs.Config.ConfState.Learners) > 0 {
			return fmt.Errorf("group %d: Raft voters on nodes %v (learners %v), metadata says %v", g.ID, voters, gs.Config.ConfState.Learners, g.Voters)
		}
		return nil
	}
	return fmt.Errorf("group %d has no leader", g.ID)
}

// TestBootstrapThenJoinTwoOverQUIC is the first scenario: bootstrap
// a node, join two more with tokens over real QUIC; all three agree on
// topology and routing, every group has 3 voters (Raft agrees), every vShard
// is assigned exactly once, and data written through one node reads back
// through the others.
func TestBootstrapThenJoinTwoOverQUIC(t *testing.T) {
	c := newTestCluster(t, Settings{VShards: 64, Groups: 4, RF: 3})
	if n := c.join(); n.ID() != 2 {
		t.Fatalf("first joiner got node ID %d", n.ID())
	}
	if n := c.join(); n.ID() != 3 {
		t.Fatalf("second joiner got node ID %d", n.ID())
	}
	st := c.waitPlaced(3, 3)
	if len(st.Groups) != 5 {
		t.Fatalf("%d groups, want the metadata group and 4 data groups", len(st.Groups))
	}
	if len(st.VShards) != 64 {
		t.Fatalf("%d vShards routed, want 64", len(st.VShards))
	}
	perGroup := map[uint64]int{}
	for i, v := range st.VShards {
		if v.ID != uint32(i) || v.Group < 1 || v.Group > 4 || v.Epoch == 0 {
			t.Fatalf("vShard %d: %+v", i, v)
		}
		perGroup[v.Group]++
	}
	for _, g := range st.Groups {
		if g.ID != 0 && (perGroup[g.ID] != 16 || g.VShards != 16) {
			t.Fatalf("group %d owns %d vShards (reported %d), want 16", g.ID, perGroup[g.ID], g.VShards)
		}
	}
	// Leaderships spread out: node 1 founded and led every group.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		count := map[ids.NodeID]int{}
		for g := ids.GroupID(1); g <= 4; g++ {
			for _, s := range c.nodes {
				if s.Node().IsLeader(g) {
					count[s.ID()]++
				}
			}
		}
		if count[1] <= 2 && count[2] >= 1 && count[3] >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("leaders per node %v: not spread", count)
		}
	}
	// Every node holds exactly the replicas the metadata places on it.
	for _, s := range c.nodes {
		held := s.Node().Groups()
		slices.Sort(held)
		if len(held) != 5 {
			t.Fatalf("node %d holds groups %v, want all 5 (3 nodes, RF 3)", s.ID(), held)
		}
	}
	// Data goes through any node.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := range 20 {
		key := []byte(fmt.Sprintf("key-%d", i))
		cmd, err := kv.EncodePut(key, []byte(fmt.Sprint(i)), nil, kv.DefaultLimits())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.nodes[i%3].Propose(ctx, key, cmd); err != nil {
			t.Fatalf("put %s through node %d: %v", key, i%3+1, err)
		}
	}
	for i := range 20 {
		key := []byte(fmt.Sprintf("key-%d", i))
		q, _ := kv.EncodeGet(key, kv.DefaultLimits())
		out, err := c.nodes[(i+1)%3].Read(ctx, key, q)
		if err != nil {
			t.Fatal(err)
		}
		got, err := kv.DecodeGetResponse(out)
		if err != nil || string(got.Value) != fmt.Sprint(i) {
			t.Fatalf("get %s: %+v %v", key, got, err)
		}
	}
}

// TestFiveNodesNoNodeInEveryGroup: with RF 3 and more groups than nodes, no
// node holds a replica of every group, replicas are spread evenly, and the
// metadata group has 5 voters.
func TestFiveNodesNoNodeInEveryGroup(t *testing.T) {
	c := newTestCluster(t, Settings{VShards: 64, Groups: 8, RF: 3})
	for range 4 {
		c.join()
	}
	// Placement first repairs (every group reaches 3 voters), then moves
	// voters off node 1, which founded every group; wait for the end.
	var last error
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if last = c.balanced(c.waitPlaced(5, 3)); last == nil {
			return
		}
	}
	t.Fatal(last)
}

func (c *testCluster) balanced(st ClusterStatus) error {
	count := map[uint64]int{}
	for _, g := range st.Groups {
		if g.ID == 0 {
			continue
		}
		for _, v := range g.Voters {
			count[v]++
		}
	}
	for _, s := range c.nodes {
		n := uint64(s.ID())
		if count[n] == 8 {
			return fmt.Errorf("node %d is a voter of every data group: %v", n, count)
		}
		if count[n] < 4 || count[n] > 5 {
			return fmt.Errorf("replicas per node %v: want 24 replicas spread 4-5 per node", count)
		}
		held := 0
		for _, g := range s.Node().Groups() {
			if g != MetaGroup {
				held++
			}
		}
		if held != count[n] {
			return fmt.Errorf("node %d holds %d data replicas, the metadata places %d", n, held, count[n])
		}
	}
	return nil
}

// TestJoinRefusals: a wrong CA hash, a forged secret, an unknown token, a
// consumed token and an expired token are refused with a clear error, and
// the metadata state does not change.
func TestJoinRefusals(t *testing.T) {
	c := newTestCluster(t, Settings{VShards: 16, Groups: 2, RF: 3})
	good := c.token(0, time.Minute)
	joined, err := Start(context.Background(), c.joinConfig(c.dir(1), 0, good))
	if err != nil {
		t.Fatal(err)
	}
	c.nodes, c.dirs = append(c.nodes, joined), append(c.dirs, c.dir(1))
	if joined.ID() != 2 {
		t.Fatalf("joined as %d", joined.ID())
	}
	c.waitPlaced(2, 2)
	consumed := c.token(0, time.Minute)
	third, err := Start(context.Background(), c.joinConfig(c.dir(2), 0, consumed))
	if err != nil {
		t.Fatalf("join with a fresh token: %v", err)
	}
	c.nodes, c.dirs = append(c.nodes, third), append(c.dirs, c.dir(2))
	short := c.token(0, time.Second)
	c.waitPlaced(3, 3)
	time.Sleep(1500 * time.Millisecond) // the short token expires

	parts := strings.Split(good, ".")
	otherCA := parts[0] + "." + parts[1] + "." + strings.Repeat("ab", 32)
	forged := parts[0] + "." + strings.Repeat("x", len(parts[1])) + "." + parts[2]
	unknown := "zzzzzz." + parts[1] + "." + parts[2]
	before := c.metaBytes(0)
	for name, tc := range map[string]struct {
		token string
		check func(error) bool
	}{
		"wrong CA hash": {otherCA, func(err error) bool { return strings.Contains(err.Error(), "not the cluster") }},
		"forged secret": {forged, isJoinCode("bad_secret")},
		"unknown token": {unknown, isJoinCode("unknown_token")},
		"consumed":      {consumed, isJoinCode("token_consumed")},
		"expired":       {short, isJoinCode("token_expired")},
		"used by good":  {good, isJoinCode("token_consumed")},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := c.joinConfig(filepath.Join(c.root, "refused-"+strings.ReplaceAll(name, " ", "-")), 0, tc.token)
			cfg.JoinTimeout = 5 * time.Second
			s, err := Start(context.Background(), cfg)
			if err == nil {
				s.Stop()
				t.Fatal("join accepted")
			}
			if !tc.check(err) {
				t.Fatalf("join refused with %v", err)
			}
			if IsNode(cfg.Dir) {
				t.Fatal("a refused join left a node behind")
			}
		})
	}
	if after := c.metaBytes(0); after != before {
		t.Fatal("refused joins changed the metadata state")
	}
}

func isJoinCode(code string) func(error) bool {
	return func(err error) bool {
		var je *JoinError
		return errors.As(err, &je) && je.Code == code
	}
}

// metaBytes returns node i's metadata state without leader hints (which
// move on their own), for comparisons.
func (c *testCluster) metaBytes(i int) string {
	c.t.Helper()
	st := c.nodes[i].view.get()
	if st == nil {
		c.t.Fatal("no metadata")
	}
	cp := proto.Clone(st).(*metaState)
	for _, g := range cp.Groups {
		g.LeaderHint = 0
	}
	cp.AppliedEntries = 0
	b, err := meta.EncodeState(cp)
	if err != nil {
		c.t.Fatal(err)
	}
	return string(b)
}

// TestJoinRetriedAfterLeaderFailsMidJoin: the metadata leader fails after
// it committed the joiner's BeginJoin and before it answered (the process
// test crashes it for real); the joiner retries with the same key and is
// admitted once.
func TestJoinRetriedAfterLeaderFailsMidJoin(t *testing.T) {
	c := newTestCluster(t, Settings{VShards: 16, Groups: 2, RF: 3})
	disable, err := failpoint.Enable("join.after-propose", "1*error")
	if err != nil {
		t.Fatal(err)
	}
	defer disable()
	s := c.join()
	if s.ID() != 2 {
		t.Fatalf("joined as node %d, want 2", s.ID())
	}
	st := c.waitPlaced(2, 2)
	if len(st.Nodes) != 2 {
		t.Fatalf("nodes %+v", st.Nodes)
	}
	for _, tk := range st.Tokens {
		if tk.State != "consumed" || tk.Node != 2 {
			t.Fatalf("token %+v", tk)
		}
	}
}

// TestConcurrentJoinsGetDistinctIDs: two joiners racing with two tokens get
// two distinct node IDs.
func TestConcurrentJoinsGetDistinctIDs(t *testing.T) {
	c := newTestCluster(t, Settings{VShards: 16, Groups: 2, RF: 3})
	cfgs := []Config{c.joinConfig(c.dir(1), 0, c.token(0, time.Minute)), c.joinConfig(c.dir(2), 0, c.token(0, time.Minute))}
	servers := make([]*Server, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range cfgs {
		wg.Go(func() { servers[i], errs[i] = Start(context.Background(), cfgs[i]) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("joiner %d: %v", i, err)
		}
		c.nodes, c.dirs = append(c.nodes, servers[i]), append(c.dirs, cfgs[i].Dir)
	}
	got := []ids.NodeID{servers[0].ID(), servers[1].ID()}
	slices.Sort(got)
	if !slices.Equal(got, []ids.NodeID{2, 3}) {
		t.Fatalf("node IDs %v, want 2 and 3", got)
	}
	c.waitPlaced(3, 3)
}

// TestWipedNodeComesBackAsANewNode: a node whose data dir was wiped cannot
// come back as its old ID: it joins again and gets a new one.
func TestWipedNodeComesBackAsANewNode(t *testing.T) {
	c := newTestCluster(t, Settings{VShards: 16, Groups: 2, RF: 3})
	c.join()
	old := c.join()
	c.waitPlaced(3, 3)
	oldID := old.ID()
	old.Stop()
	c.nodes[2] = nil
	if err := os.RemoveAll(c.dirs[2]); err != nil {
		t.Fatal(err)
	}
	// Without a token, a wiped dir does not start at all.
	if s, err := Start(context.Background(), baseConfig(t, c.dirs[2])); err == nil || !errors.Is(err, ErrNoNode) {
		if s != nil {
			s.Stop()
		}
		t.Fatalf("wiped dir started without joining: %v", err)
	}
	s, err := Start(context.Background(), c.joinConfig(c.dirs[2], 0, c.token(0, time.Minute)))
	if err != nil {
		t.Fatal(err)
	}
	c.nodes[2] = s
	if s.ID() == oldID || s.ID() != 4 {
		t.Fatalf("wiped node rejoined as %d (old ID %d), want a new ID 4", s.ID(), oldID)
	}
	st, err := c.nodes[0].ClusterStatus()
	if err != nil {
		t.Fatal(err)
	}
	var seen []uint64
	for _, n := range st.Nodes {
		seen = append(seen, n.ID)
	}
	if !slices.Equal(seen, []uint64{1, 2, 3, 4}) {
		t.Fatalf("nodes %v, want the old ID kept and a new one added", seen)
	}
}

// TestFullRestartKeepsMetadata: stopping every node and starting them again
// from their dirs gives the same metadata state, tokens and routing.
func TestFullRestartKeepsMetadata(t *testing.T) {
	c := newTestCluster(t, Settings{VShards: 64, Groups: 4, RF: 3})
	c.join()
	c.join()
	c.waitPlaced(3, 3)
	spare := c.token(0, time.Hour) // a registered token must survive too
	before := c.metaBytes(0)
	c.stopAll()
	for i := range c.nodes {
		c.restart(i)
	}
	c.waitPlaced(3, 3)
	for i := range c.nodes {
		if got := c.metaBytes(i); got != before {
			t.Fatalf("node %d: metadata state differs after a full restart", i+1)
		}
	}
	// The token registered before the restart still admits a node.
	s, err := Start(context.Background(), c.joinConfig(c.dir(3), 1, spare))
	if err != nil {
		t.Fatalf("join with a token from before the restart: %v", err)
	}
	c.nodes, c.dirs = append(c.nodes, s), append(c.dirs, c.dir(3))
	if s.ID() != 4 {
		t.Fatalf("joined as %d", s.ID())
	}
}

// TestStartRefusesWithoutBootstrapOrJoin: a node never creates a cluster on
// its own.
func TestStartRefusesWithoutBootstrapOrJoin(t *testing.T) {
	cfg := baseConfig(t, t.TempDir())
	cfg.Listen = freeAddr(t, "")
	if s, err := Start(context.Background(), cfg); !errors.Is(err, ErrNoNode) {
		if s != nil {
			s.Stop()
		}
		t.Fatalf("Start on an empty dir without --bootstrap or --join: %v", err)
	}
	cfg.Bootstrap, cfg.Join = true, "127.0.0.1:1"
	if s, err := Start(context.Background(), cfg); err == nil {
		s.Stop()
		t.Fatal("--bootstrap with --join accepted")
	}
}

// TestBootstrapTwiceRestarts: --bootstrap on a dir that holds a cluster
// restarts it and never creates a second cluster.
func TestBootstrapTwiceRestarts(t *testing.T) {
	c := newTestCluster(t, Settings{VShards: 16, Groups: 2, RF: 1})
	id := c.nodes[0].ClusterID()
	c.stopAll()
	cfg := baseConfig(t, c.dirs[0])
	cfg.Bootstrap = true
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.nodes[0] = s
	if s.Created() || s.ClusterID() != id {
		t.Fatalf("second --bootstrap: created=%v cluster %s, want a restart of %s", s.Created(), s.ClusterID(), id)
	}
}

// TestJoinThroughAFollowerIsRedirected: a joiner that asks a node which is
// not the metadata leader is redirected to the leader and admitted.
func TestJoinThroughAFollowerIsRedirected(t *testing.T) {
	c := newTestCluster(t, Settings{VShards: 16, Groups: 2, RF: 3})
	c.join()
	c.join()
	c.waitPlaced(3, 3)
	follower := -1
	for i, s := range c.nodes {
		if !s.Node().IsLeader(MetaGroup) {
			follower = i
			break
		}
	}
	if follower < 0 {
		t.Fatal("no metadata follower")
	}
	before := c.nodes[follower].ep.JoinStats().Requests.Load()
	s, err := Start(context.Background(), c.joinConfig(c.dir(3), follower, c.token(0, time.Minute)))
	if err != nil {
		t.Fatalf("join through the follower: %v", err)
	}
	c.nodes, c.dirs = append(c.nodes, s), append(c.dirs, c.dir(3))
	if s.ID() != 4 {
		t.Fatalf("joined as %d", s.ID())
	}
	if got := c.nodes[follower].ep.JoinStats().Requests.Load() - before; got < 1 {
		t.Fatalf("the follower served %d join requests: the joiner never asked it", got)
	}
	c.waitPlaced(4, 3)
}

// TestRevokedTokenIsRefused: a revoked token admits nobody.
func TestRevokedTokenIsRefused(t *testing.T) {
	c := newTestCluster(t, Settings{VShards: 16, Groups: 2, RF: 1})
	tok := c.token(0, time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.nodes[0].RevokeToken(ctx, strings.Split(tok, ".")[0]); err != nil {
		t.Fatal(err)
	}
	cfg := c.joinConfig(c.dir(1), 0, tok)
	if s, err := Start(context.Background(), cfg); !isJoinCode("token_revoked")(err) {
		if s != nil {
			s.Stop()
		}
		t.Fatalf("join with a revoked token: %v", err)
	}
}

// TestRestartIgnoresJoinFlagsAndAnnouncesNewAddress: a node that already
// belongs to a cluster ignores --join/--token, keeps its ID, and records a
// new listen address in the metadata so the others reach it.
func TestRestartIgnoresJoinFlagsAndAnnouncesNewAddress(t *testing.T) {
	c := newTestCluster(t, Settings{VShards: 16, Groups: 2, RF: 3})
	c.join()
	c.join()
	c.waitPlaced(3, 3)
	c.nodes[2].Stop()
	cfg := c.joinConfig(c.dirs[2], 0, c.token(0, time.Minute)) // a fresh address, and join flags
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.nodes[2] = s
	if s.ID() != 3 || s.Created() {
		t.Fatalf("restarted as node %d (created %v), want node 3", s.ID(), s.Created())
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := c.nodes[0].ClusterStatus()
		if err == nil && len(st.Nodes) == 3 && st.Nodes[2].PeerAddr == cfg.Listen {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the new address %s never reached the metadata: %+v", cfg.Listen, st.Nodes)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.waitPlaced(3, 3)
}

// TestJoinerGetsTheMetadataBySnapshot: with the metadata log truncated, a
// joining node receives the metadata state in a Raft snapshot, loads it,
// and takes part in placement like any other.
func TestJoinerGetsTheMetadataBySnapshot(t *testing.T) {
	c := &testCluster{t: t, root: t.TempDir()}
	t.Cleanup(c.stopAll)
	cfg := baseConfig(t, c.dir(0))
	cfg.Listen, cfg.Bootstrap, cfg.Settings = freeAddr(t, ""), true, Settings{VShards: 16, Groups: 2, RF: 3}
	cfg.LogMaxEntries, cfg.LogKeepEntries = 16, 4
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.nodes, c.dirs = append(c.nodes, s), append(c.dirs, cfg.Dir)
	for range 40 { // metadata entries, so that the log is truncated
		c.token(0, time.Minute)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		gs, err := s.Node().Status(MetaGroup)
		if err == nil && gs.FirstIndex > 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metadata log never truncated: %+v %v", gs, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	j := c.join()
	st := c.waitPlaced(2, 2)
	if len(st.Tokens) != 41 {
		t.Fatalf("%d tokens in the joiner's view, want 41", len(st.Tokens))
	}
	if n := j.Node().Stats().SnapshotsApplied.Load(); n == 0 {
		t.Fatal("the joiner installed no snapshot")
	}
	if got, want := c.metaBytes(1), c.metaBytes(0); got != want {
		t.Fatal("the joiner's metadata differs from the leader's")
	}
}

// TestMisroutedRequestIsMoved: a request for a vShard sent to a group that
// does not own it is refused with the owner, locally and over QUIC, and
// nothing is written.
func TestMisroutedRequestIsMoved(t *testing.T) {
	c := newTestCluster(t, Settings{VShards: 16, Groups: 2, RF: 3})
	c.join()
	c.waitPlaced(2, 2)
	key := []byte("misrouted")
	vs, owner := c.nodes[0].Route(key)
	wrong := ids.GroupID(3 - owner)
	cmd, err := kv.EncodePut(key, []byte("x"), nil, kv.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, s := range c.nodes {
		_, err := s.do(ctx, true, &request{group: wrong, vshard: vs, body: cmd})
		var me *MovedError
		if !errors.As(err, &me) || me.Group != owner || me.VShard != vs || me.Epoch != 1 {
			t.Fatalf("through node %d: %v, want moved to group %d", s.ID(), err, owner)
		}
	}
	q, _ := kv.EncodeGet(key, kv.DefaultLimits())
	out, err := c.nodes[1].Read(ctx, key, q)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := kv.DecodeGetResponse(out); err != nil || got.Found {
		t.Fatalf("a misrouted write was stored: %+v %v", got, err)
	}
}

// TestClusterOverTCP runs a cluster on the TCP transport (TCP with mutual
// TLS 1.3, for networks that block UDP): bootstrap, two joins over TCP,
// placement, data through every node, a restart; a node keeps its
// transport, and a joiner on the other transport is told to check it.
func TestClusterOverTCP(t *testing.T) {
	if _, err := Start(context.Background(), Config{Dir: t.TempDir(), Transport: "udp", Bootstrap: true, Listen: "127.0.0.1:0"}); err == nil || !strings.Contains(err.Error(), `transport "udp"`) {
		t.Fatalf("an unknown transport: %v", err)
	}
	c := newTunedCluster(t, Settings{VShards: 64, Groups: 4, RF: 3}, func(c *Config) { c.Transport = TransportTCP })
	c.join()
	c.join()
	st := c.waitPlaced(3, 3)
	if st.Transport != TransportTCP {
		t.Fatalf("status says the peers talk over %q", st.Transport)
	}
	for _, n := range st.Nodes {
		if n.Liveness != "alive" {
			t.Fatalf("node %d liveness %q over TCP", n.ID, n.Liveness)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	put := func(i int, key, value string) {
		t.Helper()
		cmd, err := kv.EncodePut([]byte(key), []byte(value), nil, kv.DefaultLimits())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.nodes[i].Propose(ctx, []byte(key), cmd); err != nil {
			t.Fatalf("put %s through node %d: %v", key, i+1, err)
		}
	}
	get := func(i int, key string) string {
		t.Helper()
		q, _ := kv.EncodeGet([]byte(key), kv.DefaultLimits())
		out, err := c.nodes[i].Read(ctx, []byte(key), q)
		if err != nil {
			t.Fatalf("get %s through node %d: %v", key, i+1, err)
		}
		got, err := kv.DecodeGetResponse(out)
		if err != nil {
			t.Fatal(err)
		}
		return string(got.Value)
	}
	for i := range 12 {
		put(i%3, fmt.Sprintf("key-%d", i), fmt.Sprint(i))
	}
	for i := range 12 {
		if v := get((i+1)%3, fmt.Sprintf("key-%d", i)); v != fmt.Sprint(i) {
			t.Fatalf("key-%d read %q", i, v)
		}
	}

	// A restart keeps the transport without being told; naming the other
	// one is refused and leaves the dir as it was.
	c.nodes[2].Stop()
	c.nodes[2] = nil
	qc := c.config(c.dirs[2])
	qc.Transport = TransportQUIC
	if _, err := Start(context.Background(), qc); err == nil || !strings.Contains(err.Error(), "cannot switch to quic") {
		t.Fatalf("restart over QUIC: %v", err)
	}
	rc := c.config(c.dirs[2])
	rc.Transport = ""
	var err error
	if c.nodes[2], err = Start(context.Background(), rc); err != nil {
		t.Fatalf("restart: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(c.dirs[2], storedFile)); err != nil || !strings.Contains(string(b), `"transport": "tcp"`) {
		t.Fatalf("cluster.json: %s %v", b, err)
	}
	put(2, "after-restart", "yes")
	if v := get(0, "after-restart"); v != "yes" {
		t.Fatalf("after restart read %q", v)
	}
	c.waitPlaced(3, 3)

	// A joiner on QUIC does not reach a TCP cluster; its error says why.
	jc := c.joinConfig(c.dir(9), 0, c.token(0, time.Minute))
	jc.Transport, jc.JoinTimeout = TransportQUIC, 2*time.Second
	var logs syncBuffer
	jc.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	if _, err := Start(context.Background(), jc); err == nil || !strings.Contains(err.Error(), "does the cluster use the same --transport") {
		t.Fatalf("QUIC joiner of a TCP cluster: %v", err)
	}
	if n := strings.Count(logs.String(), "is the cluster on the same --transport?"); n != 1 {
		t.Fatalf("the joiner warned %d times about the transport, want once early:\n%s", n, logs.String())
	}
}

// syncBuffer is a bytes.Buffer safe for a logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
