package testcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/cluster"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/kv"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestFullClusterRestartKeepsAcknowledgedWrites stops every node and reopens
// them from their directories: every acknowledged write must still be there.
func TestFullClusterRestartKeepsAcknowledgedWrites(t *testing.T) {
	c := New(t, Options{Nodes: 3, Groups: 4})
	ctx := testCtx(t, 60*time.Second)
	if err := c.WaitAllLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	cl := c.NewClient(1)
	acked := map[string]uint64{}
	for i := range 200 {
		k := fmt.Sprintf("k%03d", i%120)
		r, err := cl.Put(ctx, []byte(k), []byte(fmt.Sprintf("v%d", i)), nil)
		if err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
		acked[k] = r.Version
	}
	for _, id := range c.NodeIDs() {
		if err := c.StopNode(id); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range c.NodeIDs() {
		if err := c.StartNode(id); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.WaitAllLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	cl2 := c.NewClient(2)
	for k, ver := range acked {
		got, err := cl2.Get(ctx, []byte(k))
		if err != nil {
			t.Fatalf("get %s: %v", k, err)
		}
		if !got.Found || got.Version != ver {
			t.Fatalf("after restart %s = %+v, want version %d", k, got, ver)
		}
	}
	for _, g := range c.Groups() {
		if _, err := c.WaitConverged(ctx, g.ID); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLaggingFollowerCatchesUpBySnapshot keeps a follower down while the
// leader truncates its log past everything the follower has; the follower
// must come back through a snapshot carrying the real state and end with the
// same state hash as the others.
func TestLaggingFollowerCatchesUpBySnapshot(t *testing.T) {
	c := New(t, Options{Nodes: 3, Groups: 2, LogMaxEntries: 40, LogKeepEntries: 10})
	ctx := testCtx(t, 60*time.Second)
	if err := c.WaitAllLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	g := ids.GroupID(1)
	leader, err := c.WaitLeader(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	down, downLast := stopFollower(t, c, leader, g)
	cl := c.NewClient(1)
	written := 0
	for i := 0; written < 300; i++ {
		k := []byte(fmt.Sprintf("key-%d", i))
		if _, kg := c.Route(k); kg != g {
			continue
		}
		if _, err := cl.Put(ctx, k, bytes.Repeat([]byte{'x'}, 100), nil); err != nil {
			t.Fatal(err)
		}
		written++
	}
	leader = c.Leader(g)
	st, _ := mustStatus(t, leader, g)
	if st.FirstIndex <= downLast+1 {
		t.Fatalf("log not truncated past the follower: first index %d, follower had %d", st.FirstIndex, downLast)
	}
	if err := c.StartNode(down); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitConverged(ctx, g); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "the follower to install a snapshot", func() bool {
		return c.Node(down).Stats().SnapshotsApplied.Load() > 0
	})
	// The caught-up replica serves the data itself.
	q, _ := kv.EncodeScan(nil, nil, 0, kv.DefaultLimits())
	total := 0
	for vs := range uint32(c.Options().VShards) {
		if c.GroupOfVShard(vs) != g {
			continue
		}
		res, err := c.Node(down).ReadLocal(g, vs, q)
		if err != nil {
			t.Fatal(err)
		}
		sr, err := kv.DecodeScanResponse(res)
		if err != nil {
			t.Fatal(err)
		}
		total += len(sr.Entries)
	}
	if total != written {
		t.Fatalf("caught-up replica holds %d keys, want %d", total, written)
	}
}

// TestSnapshotInstallRefreshesCachedReads: a follower that served reads of a
// key, then missed its overwrite and caught up by snapshot, serves the new
// value afterwards, stale and linearizable reads alike (the values it had
// cached for clients predate the snapshot).
func TestSnapshotInstallRefreshesCachedReads(t *testing.T) {
	c := New(t, Options{Nodes: 3, Groups: 1, LogMaxEntries: 40, LogKeepEntries: 10})
	ctx := testCtx(t, 60*time.Second)
	g := ids.GroupID(1)
	leader, st := leaderStatus(ctx, t, c, g)
	follower := c.Node(followerOf(t, st, leader.ID()).Node)
	key := []byte("cached")
	vs, _ := c.Route(key)
	q, _ := kv.EncodeGet(key, kv.DefaultLimits())
	read := func(what string, lin bool) kv.GetResponse {
		t.Helper()
		var res []byte
		var err error
		if lin {
			res, err = follower.Read(ctx, g, vs, q)
		} else {
			res, err = follower.ReadLocal(g, vs, q)
		}
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		got, err := kv.DecodeGetResponse(res)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return got
	}
	cl := c.NewClient(1)
	if _, err := cl.Put(ctx, key, []byte("old"), nil); err != nil {
		t.Fatal(err)
	}
	hits := follower.Stats().ReadCacheHits.Load()
	for range 3 {
		if got := read("read before the partition", true); string(got.Value) != "old" {
			t.Fatalf("read before the partition: %+v", got)
		}
	}
	if follower.Stats().ReadCacheHits.Load() < hits+2 {
		t.Fatalf("repeated reads of one key: %d read cache hits, want at least 2", follower.Stats().ReadCacheHits.Load()-hits)
	}
	lastBefore := follower.Stats().SnapshotsApplied.Load()
	c.Isolate(follower.ID())
	if _, err := cl.Put(ctx, key, []byte("new"), nil); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200; i++ {
		if _, err := cl.Put(ctx, []byte(fmt.Sprintf("filler-%d", i)), []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	if got := read("stale read while isolated", false); string(got.Value) != "old" {
		t.Fatalf("stale read while isolated: %+v (the follower cannot have seen the overwrite)", got)
	}
	c.Heal()
	waitFor(ctx, t, "the follower to install a snapshot", func() bool {
		return follower.Stats().SnapshotsApplied.Load() > lastBefore
	})
	if _, err := c.WaitConverged(ctx, g); err != nil {
		t.Fatal(err)
	}
	if got := read("stale read after the snapshot", false); string(got.Value) != "new" {
		t.Fatalf("stale read after the snapshot: %+v, want the overwrite", got)
	}
	if got := read("linearizable read after the snapshot", true); string(got.Value) != "new" {
		t.Fatalf("linearizable read after the snapshot: %+v, want the overwrite", got)
	}
}

// TestCaughtUpLogsStayShort: with every follower up and replicating, the
// leader truncates every replica's log to what all of them hold long before
// the length rule would, and no follower needs a snapshot for it; with a
// follower down, the leader keeps the log for it, and the follower catches
// up from the log when it returns, not from a snapshot.
func TestCaughtUpLogsStayShort(t *testing.T) {
	c := New(t, Options{Nodes: 3, Groups: 1, LogMaxEntries: 100000, LogTruncateEntries: 50})
	ctx := testCtx(t, 60*time.Second)
	g := ids.GroupID(1)
	if _, err := c.WaitLeader(ctx, g); err != nil {
		t.Fatal(err)
	}
	cl := c.NewClient(1)
	put := func(n int, prefix string) {
		t.Helper()
		for i := range n {
			if _, err := cl.Put(ctx, []byte(fmt.Sprintf("%s-%d", prefix, i%20)), bytes.Repeat([]byte{'x'}, 100), nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	put(400, "a")
	for _, id := range c.NodeIDs() {
		waitFor(ctx, t, fmt.Sprintf("node %d's log to be truncated", id), func() bool {
			st, err := c.Node(id).Status(g)
			return err == nil && st.LastIndex-st.FirstIndex+1 < 200
		})
	}
	if _, err := c.WaitConverged(ctx, g); err != nil {
		t.Fatal(err)
	}
	for _, id := range c.NodeIDs() {
		if n := c.Node(id).Stats().SnapshotsApplied.Load(); n != 0 {
			t.Fatalf("node %d installed %d snapshots; caught-up truncation must not need any", id, n)
		}
	}

	// A follower goes down: the log is kept for it.
	down, downLast := stopFollower(t, c, c.Leader(g), g)
	put(400, "b")
	st, _ := mustStatus(t, c.Leader(g), g)
	if st.FirstIndex > downLast+1 {
		t.Fatalf("log truncated past a follower that was down: first index %d, follower had up to %d", st.FirstIndex, downLast)
	}
	if err := c.StartNode(down); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitConverged(ctx, g); err != nil {
		t.Fatal(err)
	}
	if n := c.Node(down).Stats().SnapshotsApplied.Load(); n != 0 {
		t.Fatalf("the returning follower installed %d snapshots, want it to catch up from the log", n)
	}
	// Healthy again: the logs shrink again.
	put(200, "c")
	for _, id := range c.NodeIDs() {
		waitFor(ctx, t, fmt.Sprintf("node %d's log to be truncated again", id), func() bool {
			st, err := c.Node(id).Status(g)
			return err == nil && st.LastIndex-st.FirstIndex+1 < 200
		})
	}
}

// stopFollower stops a node other than leader's and returns it with the
// last log index of its replica of g before it stopped.
func stopFollower(t *testing.T, c *Cluster, leader *cluster.Node, g ids.GroupID) (ids.NodeID, uint64) {
	t.Helper()
	var down ids.NodeID
	for _, id := range c.NodeIDs() {
		if id != leader.ID() {
			down = id
			break
		}
	}
	_, last := mustStatus(t, c.Node(down), g)
	if err := c.StopNode(down); err != nil {
		t.Fatal(err)
	}
	return down, last
}

func mustStatus(t *testing.T, n *cluster.Node, g ids.GroupID) (cluster.GroupStatus, uint64) {
	t.Helper()
	st, err := n.Status(g)
	if err != nil {
		t.Fatal(err)
	}
	return st, st.LastIndex
}

// TestExactlyOnceAfterLostResponse makes a write's outcome unknown to its
// client (acknowledgements are dropped until the client gives up), lets it
// commit, then retries it with the same client sequence: it must be applied
// once and the retry must get the first application's result.
func TestExactlyOnceAfterLostResponse(t *testing.T) {
	c := New(t, Options{Nodes: 3, Groups: 1})
	ctx := testCtx(t, 60*time.Second)
	key := []byte("counter")
	vs, g := c.Route(key)
	leader, err := c.WaitLeader(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	put := func(seq uint64, value string) cluster.Proposal {
		cmd, err := kv.EncodePut(key, []byte(value), nil, kv.DefaultLimits())
		if err != nil {
			t.Fatal(err)
		}
		return cluster.Proposal{VShard: vs, Client: 77, Seq: seq, AckedBelow: 1, Payload: cmd}
	}
	if _, err := leader.Propose(ctx, g, put(1, "first")); err != nil {
		t.Fatal(err)
	}
	// Followers' acknowledgements never reach the leader: nothing commits.
	var mu sync.Mutex
	blocked := true
	c.Net.SetHook(func(from, to ids.NodeID, m *transport.Message) bool {
		mu.Lock()
		defer mu.Unlock()
		return blocked && to == leader.ID() && m.Msg.Type == raftpb.MsgAppResp
	})
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = leader.Propose(short, g, put(2, "second"))
	cancel()
	if !errors.Is(err, cluster.ErrOutcomeUnknown) {
		t.Fatalf("propose with blocked acks: %v, want ErrOutcomeUnknown", err)
	}
	// The same write again, before the first attempt committed: both
	// attempts sit in the log.
	short, cancel = context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = leader.Propose(short, g, put(2, "second"))
	cancel()
	if !errors.Is(err, cluster.ErrOutcomeUnknown) {
		t.Fatalf("second attempt: %v, want ErrOutcomeUnknown", err)
	}
	mu.Lock()
	blocked = false
	mu.Unlock()
	res, err := leader.Propose(ctx, g, put(2, "second"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := kv.DecodeResult(res)
	if err != nil {
		t.Fatal(err)
	}
	if r.Ops[0].Version != 2 {
		t.Fatalf("retried write reports version %d, want 2 (applied once after version 1)", r.Ops[0].Version)
	}
	got, err := c.NewClient(1).Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 2 || string(got.Value) != "second" {
		t.Fatalf("key after retries: %+v, want version 2", got)
	}
	// Once the client acknowledges sequence 2, its record may be dropped,
	// and a late duplicate of it is refused rather than applied again.
	p := put(3, "third")
	p.AckedBelow = 3
	if _, err := leader.Propose(ctx, g, p); err != nil {
		t.Fatal(err)
	}
	if _, err := leader.Propose(ctx, g, put(2, "second")); !errors.Is(err, cluster.ErrStaleSequence) {
		t.Fatalf("late duplicate below the watermark: %v, want ErrStaleSequence", err)
	}
	if _, err := c.WaitConverged(ctx, g); err != nil {
		t.Fatal(err)
	}
}

// TestReplicaMoveWithJointConsensus adds a learner on a new node, waits for
// it to catch up, promotes it while removing an old voter in one joint
// configuration change, and checks that the new replica's state is identical
// and the removed replica's ID can never come back.
func TestReplicaMoveWithJointConsensus(t *testing.T) {
	c := New(t, Options{Nodes: 4, Groups: 1, RF: 3})
	ctx := testCtx(t, 60*time.Second)
	g := ids.GroupID(1)
	if _, err := c.WaitLeader(ctx, g); err != nil {
		t.Fatal(err)
	}
	cl := c.NewClient(1)
	for i := range 100 {
		if _, err := cl.Put(ctx, []byte(fmt.Sprintf("k%d", i)), []byte("v"), nil); err != nil {
			t.Fatal(err)
		}
	}
	n4 := c.Node(4)
	if err := n4.CreateReplica(g, 4); err != nil {
		t.Fatal(err)
	}
	leader := c.Leader(g)
	if err := leader.ChangeReplicas(ctx, g, []cluster.ReplicaChange{{Op: cluster.AddLearner, Replica: 4, Node: 4}}); err != nil {
		t.Fatal(err)
	}
	// Catch-up is measured from the leader's progress, not assumed.
	for {
		st, err := c.Leader(g).Status(g)
		if err == nil {
			if pr, ok := st.Progress[4]; ok && pr.Learner && pr.Match >= st.Commit {
				break
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("learner did not catch up: %+v", st.Progress)
		case <-time.After(10 * time.Millisecond):
		}
	}
	// Node 3 leaves. It must not lead while it is removed.
	leader = c.Leader(g)
	if leader.ID() == 3 {
		if err := leader.TransferLeadership(ctx, g, 1); err != nil {
			t.Fatal(err)
		}
		leader, _ = c.WaitLeader(ctx, g)
	}
	err := leader.ChangeReplicas(ctx, g, []cluster.ReplicaChange{
		{Op: cluster.AddVoter, Replica: 4, Node: 4},
		{Op: cluster.RemoveReplica, Replica: 3},
	})
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.Leader(g).Status(g)
	if err != nil {
		t.Fatal(err)
	}
	cs := st.Config.ConfState
	if fmt.Sprint(cs.Voters) != "[1 2 4]" || len(cs.Learners) != 0 || len(cs.VotersOutgoing) != 0 {
		t.Fatalf("configuration after the move: %+v", cs)
	}
	if err := c.Node(3).DestroyReplica(g); err != nil && !errors.Is(err, cluster.ErrGroupNotFound) {
		t.Fatal(err)
	}
	for i := range 50 {
		if _, err := cl.Put(ctx, []byte(fmt.Sprintf("after%d", i)), []byte("w"), nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.WaitConverged(ctx, g); err != nil {
		t.Fatal(err)
	}
	_, h4, _ := c.Node(4).StateHash(g)
	_, hl, _ := c.Leader(g).StateHash(g)
	if h4 != hl {
		t.Fatal("new replica's state differs from the leader's")
	}
	// Replica IDs are never reused: not on node 3, not in the group.
	if err := c.Node(3).CreateReplica(g, 3); !errors.Is(err, cluster.ErrReplicaTombstoned) {
		t.Fatalf("recreating removed replica 3: %v, want ErrReplicaTombstoned", err)
	}
	err = c.Leader(g).ChangeReplicas(ctx, g, []cluster.ReplicaChange{{Op: cluster.AddLearner, Replica: 3, Node: 3}})
	if !errors.Is(err, cluster.ErrConfChangeRejected) {
		t.Fatalf("re-adding replica ID 3: %v, want ErrConfChangeRejected", err)
	}
}

// TestBadInputIsRefusedAndStoresNothing checks the typed errors for oversized
// keys, values and proposals, and that malformed command bytes that reach the
// log are refused by every replica without writing anything.
func TestBadInputIsRefusedAndStoresNothing(t *testing.T) {
	c := New(t, Options{Nodes: 3, Groups: 1})
	ctx := testCtx(t, 30*time.Second)
	lim := kv.DefaultLimits()
	if _, err := kv.EncodePut(bytes.Repeat([]byte{'k'}, lim.MaxKeySize+1), []byte("v"), nil, lim); !kv.IsCode(err, kv.CodeTooLarge) {
		t.Fatalf("oversized key: %v, want too_large", err)
	}
	if _, err := kv.EncodePut([]byte("k"), make([]byte, lim.MaxValueSize+1), nil, lim); !kv.IsCode(err, kv.CodeTooLarge) {
		t.Fatalf("oversized value: %v, want too_large", err)
	}
	if _, err := kv.EncodePut(nil, []byte("v"), nil, lim); !kv.IsCode(err, kv.CodeInvalidArgument) {
		t.Fatalf("empty key: %v, want invalid_argument", err)
	}
	g := ids.GroupID(1)
	leader, err := c.WaitLeader(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leader.Propose(ctx, g, cluster.Proposal{Payload: make([]byte, 9<<20)}); !errors.Is(err, cluster.ErrTooLarge) {
		t.Fatalf("oversized proposal: %v, want ErrTooLarge", err)
	}
	_, before, err := leader.StateHash(g)
	if err != nil {
		t.Fatal(err)
	}
	for _, garbage := range [][]byte{{0xff}, {1, 2, 3}, bytes.Repeat([]byte{0x01}, 64), {}} {
		res, err := leader.Propose(ctx, g, cluster.Proposal{VShard: 3, Payload: garbage})
		if err != nil {
			t.Fatalf("propose garbage %x: %v", garbage, err)
		}
		if _, err := kv.DecodeResult(res); !kv.IsCode(err, kv.CodeInvalidArgument) {
			t.Fatalf("garbage %x: result %v, want invalid_argument", garbage, err)
		}
	}
	if _, err := c.WaitConverged(ctx, g); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Live() {
		_, after, err := n.StateHash(g)
		if err != nil {
			t.Fatal(err)
		}
		if after != before {
			t.Fatalf("%s: malformed commands changed the stored state", n.ID())
		}
	}
}

// TestSnapshotRefreshesExactlyOnceRecords cuts a follower off (it keeps
// running, with whatever it cached about a client) while the client writes
// on and the leader truncates its log; the follower catches up by snapshot,
// becomes leader, and a retry of the client's last write must be answered
// from the snapshot's exactly-once record, not applied again.
func TestSnapshotRefreshesExactlyOnceRecords(t *testing.T) {
	c := New(t, Options{Nodes: 3, Groups: 1, LogMaxEntries: 40, LogKeepEntries: 10})
	ctx := testCtx(t, 60*time.Second)
	g := ids.GroupID(1)
	leader, err := c.WaitLeader(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	cl := c.NewClient(7)
	for i := range 5 {
		if _, err := cl.Put(ctx, []byte("{t}early"), []byte(fmt.Sprint(i)), nil); err != nil {
			t.Fatal(err)
		}
	}
	var follower *cluster.Node
	for _, n := range c.Live() {
		if n.ID() != leader.ID() {
			follower = n
			break
		}
	}
	if _, err := c.WaitConverged(ctx, g); err != nil {
		t.Fatal(err)
	}
	c.Net.Isolate(follower.ID())
	last := []byte("{t}last")
	for i := range 300 {
		k := []byte(fmt.Sprintf("{t}k%d", i))
		if i == 299 {
			k = last
		}
		if _, err := cl.Put(ctx, k, []byte("v"), nil); err != nil {
			t.Fatal(err)
		}
	}
	lst, _ := mustStatus(t, c.Leader(g), g)
	fst, _ := mustStatus(t, follower, g)
	if lst.FirstIndex <= fst.LastIndex+1 {
		t.Fatalf("log not truncated past the follower: first index %d, follower has %d", lst.FirstIndex, fst.LastIndex)
	}
	c.Net.Heal()
	if _, err := c.WaitConverged(ctx, g); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "the follower to install a snapshot", func() bool {
		return follower.Stats().SnapshotsApplied.Load() > 0
	})
	st, err := follower.Status(g)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Leader(g).TransferLeadership(ctx, g, st.Replica); err != nil {
		t.Fatal(err)
	}
	// Client 7 wrote 5 + 300 commands: the last had sequence 305.
	vs, _ := c.Route(last)
	cmd, _ := kv.EncodePut(last, []byte("again"), nil, kv.DefaultLimits())
	out, err := follower.Propose(ctx, g, cluster.Proposal{VShard: vs, Client: 7, Seq: 305, AckedBelow: 305, Payload: cmd})
	if err != nil {
		t.Fatal(err)
	}
	r, err := kv.DecodeResult(out)
	if err != nil || r.Ops[0].Version != 1 {
		t.Fatalf("retry after the snapshot: %+v %v, want the recorded result (version 1)", r, err)
	}
	got, err := c.NewClient(8).Get(ctx, last)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 1 || string(got.Value) != "v" {
		t.Fatalf("the retried write was applied again: %+v", got)
	}
}

// TestIdleClientRecordsExpireOnEveryReplica: the sweep of idle clients'
// exactly-once records is decided by the leader and applied from the log, so
// every replica drops the same records and the replicas' states stay
// identical; the active client's record survives on all of them.
func TestIdleClientRecordsExpireOnEveryReplica(t *testing.T) {
	t.Run("memnet", func(t *testing.T) { testIdleClientRecordsExpire(t, false) })
	t.Run("quic", func(t *testing.T) { testIdleClientRecordsExpire(t, true) })
}

func testIdleClientRecordsExpire(t *testing.T, quic bool) {
	var now atomic.Int64
	now.Store(time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC).UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	c := New(t, Options{Nodes: 3, Groups: 1, ClientIdleExpiry: time.Hour, Now: clock, QUIC: quic})
	ctx := testCtx(t, 60*time.Second)
	if err := c.WaitAllLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	const idle = 20
	for i := range idle {
		cl := c.NewClient(uint64(100 + i))
		if _, err := cl.Put(ctx, []byte(fmt.Sprintf("idle-%d", i)), []byte("v"), nil); err != nil {
			t.Fatal(err)
		}
	}
	now.Add(int64(50 * time.Minute))
	active := c.NewClient(999)
	if _, err := active.Put(ctx, []byte("active"), []byte("v1"), nil); err != nil {
		t.Fatal(err)
	}
	now.Add(int64(20 * time.Minute))
	for _, n := range c.Live() {
		for deadline := time.Now().Add(30 * time.Second); n.Stats().ClientRecordsExpired.Load() < idle; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s dropped %d records, want %d", n.ID(), n.Stats().ClientRecordsExpired.Load(), idle)
			}
		}
	}
	// The active client's next write still goes through exactly-once, and
	// every replica holds the same state.
	if _, err := active.Put(ctx, []byte("active"), []byte("v2"), nil); err != nil {
		t.Fatal(err)
	}
	for _, g := range c.Groups() {
		if _, err := c.WaitConverged(ctx, g.ID); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range c.Live() {
		if got := n.Stats().ClientRecordsExpired.Load(); got != idle {
			t.Fatalf("%s dropped %d records, want exactly the %d idle clients'", n.ID(), got, idle)
		}
	}
}
