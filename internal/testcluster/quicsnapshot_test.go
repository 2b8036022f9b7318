package testcluster

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/cluster"
	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// snapshotMB is the state-machine data TestLargeSnapshotOverQUICKeepsLeaders
// puts in the group before a new replica must receive it by snapshot. The
// long tier runs 500:
//
//	go test ./internal/testcluster -run TestLargeSnapshotOverQUIC -args -nodedb.snapshot-mb=500
var snapshotMB = flag.Int("nodedb.snapshot-mb", 20, "MB of state in TestLargeSnapshotOverQUICKeepsLeaders")

// TestLargeSnapshotOverQUICKeepsLeaders fills a group with tens of megabytes
// (hundreds in the long tier), truncates its log, and adds a replica on a
// fourth node, which can only catch up by snapshot, streamed over real QUIC
// with TLS. While the snapshot streams, Raft traffic shares the connection
// with it: the group must keep its leader and term (no election, not even a
// pre-vote, on any node), writes to the group must keep completing promptly,
// and no snapshot send may fail. The new replica must end with the leader's
// state hash.
//
// The receiver stages the snapshot as a table file and ingests it
// (storage.SnapshotSST): an earlier version installed it as one in-memory
// Pebble batch, whose heap of about three times the snapshot stalled the
// process for seconds at 500 MB.
func TestLargeSnapshotOverQUICKeepsLeaders(t *testing.T) {
	const valueSize = 256 << 10
	mb := max(*snapshotMB, 1)
	values := mb << 20 / valueSize
	opts := Options{Nodes: 4, Groups: 1, RF: 3, QUIC: true, LogMaxEntries: 64, LogKeepEntries: 48}
	if mb > 100 {
		// Production Raft timing (heartbeats every 200ms, elections after
		// 1-2s of silence): filling and installing hundreds of megabytes
		// on four nodes of one small machine stalls it for longer than
		// the test default's 100-200ms election timeout, which would
		// measure the machine rather than the transfer.
		opts.TickInterval, opts.HeartbeatTicks = 100*time.Millisecond, 2
	}
	c := New(t, opts)
	ctx := testCtx(t, time.Duration(60+mb/2)*time.Second)
	g := ids.GroupID(1)
	if _, err := c.WaitLeader(ctx, g); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	fillGroup(ctx, t, c, values, valueSize)
	leader, lst := waitTruncated(ctx, t, c, g)
	t.Logf("filled %d MiB (%d values of %d KiB) in %v; leader %s, term %d, log [%d, %d]",
		values*valueSize>>20, values, valueSize>>10, time.Since(start).Round(time.Millisecond),
		leader.ID(), lst.Term, lst.FirstIndex, lst.LastIndex)

	// Watch every node's view of the group until the new replica has
	// caught up: one leader, one term, nobody campaigning.
	transfer := time.Now()
	mon := &leaderMonitor{c: c, g: g, leader: lst.Leader, term: lst.Term, start: transfer}
	monCtx, stopMon := context.WithCancel(ctx)
	monDone := make(chan struct{})
	go func() {
		defer close(monDone)
		mon.run(monCtx, 2*time.Millisecond)
	}()
	defer func() {
		stopMon()
		<-monDone
	}()

	// Probe: a small write every 50ms through the transfer, each bounded.
	// (Truncation does not wait for a replica that is receiving a
	// snapshot: a faster pace, or fewer kept entries, truncates past the
	// snapshot before the new replica catches up and costs a second one.)
	probeCtx, stopProbe := context.WithCancel(ctx)
	probe := &writeProbe{}
	probeDone := make(chan struct{})
	go func() {
		defer close(probeDone)
		probe.run(probeCtx, c, 50*time.Millisecond)
	}()
	stopProbeOnce := sync.OnceFunc(func() {
		stopProbe()
		<-probeDone
	})
	defer stopProbeOnce()

	sentBefore := leader.Stats().SnapshotsSent.Load()
	if err := c.Node(4).CreateReplica(g, 4); err != nil {
		t.Fatal(err)
	}
	if err := leader.ChangeReplicas(ctx, g, []cluster.ReplicaChange{{Op: cluster.AddLearner, Replica: 4, Node: 4}}); err != nil {
		t.Fatal(err)
	}
	n4 := c.Node(4)
	waitFor(ctx, t, "the new replica to install a snapshot", func() bool {
		return n4.Stats().SnapshotsApplied.Load() > 0
	})
	installed := time.Since(transfer)
	stopProbeOnce()

	// With writes stopped, the new replica must reach the leader's state.
	// Hashing hundreds of megabytes is slow: hash once the applied indexes
	// agree.
	var applied uint64
	waitFor(ctx, t, "the new replica's state to match the leader's", func() bool {
		s4, err4 := n4.Status(g)
		sl, errl := leader.Status(g)
		if err4 != nil || errl != nil || s4.Applied != sl.Applied || sl.Applied < sl.Commit {
			return false
		}
		ai4, h4, err := n4.StateHash(g)
		if err != nil {
			return false
		}
		ail, hl, err := leader.StateHash(g)
		if err != nil {
			return false
		}
		applied = ai4
		return ai4 == ail && h4 == hl
	})
	caughtUp := time.Since(transfer)
	stopMon()
	<-monDone

	sent := leader.Stats().SnapshotsSent.Load() - sentBefore
	t.Logf("snapshot: installed after %v, state equal at applied index %d after %v; leader sent %d snapshot(s) (%d failed), node 4 received %d, applied %d",
		installed.Round(time.Millisecond), applied, caughtUp.Round(time.Millisecond), sent,
		leader.Stats().SnapshotsFailed.Load(), n4.Stats().SnapshotsReceived.Load(), n4.Stats().SnapshotsApplied.Load())
	probe.mu.Lock()
	lats := slices.Clone(probe.lat)
	probeErr := probe.err
	probe.mu.Unlock()
	slices.Sort(lats)
	if len(lats) > 0 {
		t.Logf("probe writes during the transfer: %d, p50 %v, p99 %v, max %v", len(lats),
			lats[len(lats)/2].Round(time.Microsecond), lats[len(lats)*99/100].Round(time.Microsecond),
			lats[len(lats)-1].Round(time.Microsecond))
	}
	t.Logf("leader monitor: %d samples", mon.samples.Load())

	if sent == 0 {
		t.Error("the leader sent no snapshot")
	}
	if failed := leader.Stats().SnapshotsFailed.Load(); failed > 0 {
		t.Errorf("%d snapshot sends failed over a healthy network", failed)
	}
	if probeErr != nil {
		t.Errorf("probe write failed during the transfer: %v", probeErr)
	}
	if len(lats) == 0 {
		t.Error("no probe write completed during the transfer")
	} else if worst := lats[len(lats)-1]; worst > time.Second {
		t.Errorf("a write took %v during the transfer, want at most 1s", worst)
	}
	for _, v := range mon.violations() {
		t.Error(v)
	}
}

// TestSnapshotSenderStopsMidStream stops the leader while it streams a
// snapshot to a new replica over QUIC. The abandoned stream must release
// what it holds on the sender's engine (which then closes cleanly: an
// iterator left open makes Pebble panic on close), and the next leader must
// bring the new replica up with a snapshot of its own.
func TestSnapshotSenderStopsMidStream(t *testing.T) {
	c := New(t, Options{Nodes: 4, Groups: 1, RF: 3, QUIC: true, LogMaxEntries: 32, LogKeepEntries: 8})
	ctx := testCtx(t, 60*time.Second)
	g := ids.GroupID(1)
	if _, err := c.WaitLeader(ctx, g); err != nil {
		t.Fatal(err)
	}
	fillGroup(ctx, t, c, 64, 256<<10) // 16 MiB
	leader, _ := waitTruncated(ctx, t, c, g)
	n4 := c.Node(4)
	if err := n4.CreateReplica(g, 4); err != nil {
		t.Fatal(err)
	}
	if err := leader.ChangeReplicas(ctx, g, []cluster.ReplicaChange{{Op: cluster.AddLearner, Replica: 4, Node: 4}}); err != nil {
		t.Fatal(err)
	}
	// Mid-stream: the new replica is staging what it received so far.
	staging := filepath.Join(c.Dir(4), "snapshots", "g1-*.sst")
	for {
		if files, _ := filepath.Glob(staging); len(files) > 0 {
			if fi, err := os.Stat(files[0]); err == nil && fi.Size() > 0 {
				break
			}
		}
		if n4.Stats().SnapshotsReceived.Load() > 0 || ctx.Err() != nil {
			t.Fatal("the snapshot was received before the test could stop its sender")
		}
		time.Sleep(time.Millisecond)
	}
	// A founding follower may have needed a snapshot of its own while the
	// group filled (on a slow machine, or under the race detector): count
	// from here.
	sent0, failed0 := leader.Stats().SnapshotsSent.Load(), leader.Stats().SnapshotsFailed.Load()
	if err := c.StopNode(leader.ID()); err != nil {
		t.Fatalf("stop the sender mid-stream: %v", err)
	}
	if sent, failed := leader.Stats().SnapshotsSent.Load()-sent0, leader.Stats().SnapshotsFailed.Load()-failed0; sent != 0 || failed < 1 {
		t.Fatalf("stopping the sender mid-stream counted %d snapshots sent and %d failed, want 0 and at least 1", sent, failed)
	}
	if _, err := c.WaitConverged(ctx, g); err != nil {
		t.Fatal(err)
	}
	if n4.Stats().SnapshotsApplied.Load() == 0 {
		t.Fatal("the new replica caught up without a snapshot")
	}
}

// waitTruncated makes sure g's leader has truncated its log, writing small
// entries until it has, so that a new replica can only catch up by snapshot,
// and waits until the founding replicas hold the same state. It returns the
// leader and its status.
func waitTruncated(ctx context.Context, t *testing.T, c *Cluster, g ids.GroupID) (*cluster.Node, cluster.GroupStatus) {
	t.Helper()
	cl := c.NewClient(99)
	for i := 0; ; i++ {
		leader, err := c.WaitLeader(ctx, g)
		if err != nil {
			t.Fatal(err)
		}
		if st, err := leader.Status(g); err == nil && st.FirstIndex > 1 {
			break
		}
		if _, err := cl.Put(ctx, []byte(fmt.Sprintf("pad/%d", i)), []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.WaitConverged(ctx, g, 4); err != nil {
		t.Fatal(err)
	}
	leader, err := c.WaitLeader(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := mustStatus(t, leader, g)
	return leader, st
}

// fillGroup writes values incompressible values of size bytes to the
// cluster's single group, a few writers at a time.
func fillGroup(ctx context.Context, t *testing.T, c *Cluster, values, size int) {
	t.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := c.NewClient(uint64(w + 1))
			cl.AttemptTimeout = 10 * time.Second
			rng := rand.New(rand.NewChaCha8([32]byte{byte(w)}))
			v := make([]byte, size)
			for {
				i := next.Add(1) - 1
				if i >= int64(values) {
					return
				}
				for j := 0; j+8 <= len(v); j += 8 {
					binary.LittleEndian.PutUint64(v[j:], rng.Uint64())
				}
				if _, err := cl.Put(ctx, []byte(fmt.Sprintf("big/%06d", i)), v, nil); err != nil {
					errc <- fmt.Errorf("fill put %d: %w", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// leaderMonitor samples every node's status of one group and records any
// sign of an election: another term, another leader, a campaigning replica.
type leaderMonitor struct {
	c       *Cluster
	g       ids.GroupID
	leader  ids.ReplicaID
	term    uint64
	start   time.Time
	samples atomic.Int64

	mu   sync.Mutex
	seen []string
	when []time.Duration
}

func (m *leaderMonitor) run(ctx context.Context, every time.Duration) {
	tk := time.NewTicker(every)
	defer tk.Stop()
	for {
		for _, n := range m.c.Live() {
			st, err := n.Status(m.g)
			if err != nil {
				continue // no replica here yet
			}
			m.samples.Add(1)
			switch {
			case st.State == "candidate" || st.State == "pre-candidate":
				m.record("%s is %s at term %d", n.ID(), st.State, st.Term)
			case st.Term == 0 && st.Leader == 0:
				// A new replica that has not heard from the leader yet.
			case st.Term != m.term:
				m.record("%s at term %d, want %d", n.ID(), st.Term, m.term)
			case st.Leader != m.leader:
				m.record("%s sees leader %d, want %d", n.ID(), st.Leader, m.leader)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
	}
}

func (m *leaderMonitor) record(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.seen) < 20 && !slices.Contains(m.seen, s) {
		m.seen = append(m.seen, s)
		m.when = append(m.when, time.Since(m.start))
	}
}

// violations lists what was seen, each with when it was first seen.
func (m *leaderMonitor) violations() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, len(m.seen))
	for i, s := range m.seen {
		out[i] = fmt.Sprintf("%v after the replica was added: %s", m.when[i].Round(time.Millisecond), s)
	}
	return out
}

// writeProbe writes a small value at a fixed pace and records each write's
// latency; the first failure ends it.
type writeProbe struct {
	mu  sync.Mutex
	lat []time.Duration
	err error
}

func (p *writeProbe) run(ctx context.Context, c *Cluster, every time.Duration) {
	cl := c.NewClient(100)
	cl.AttemptTimeout = 2 * time.Second
	tk := time.NewTicker(every)
	defer tk.Stop()
	for i := 0; ; i++ {
		t0 := time.Now()
		// The probe's own context bounds it; a write cut short only by the
		// end of the probe is not a failure.
		_, err := cl.Put(ctx, []byte(fmt.Sprintf("probe/%d", i%16)), []byte("heartbeat"), nil)
		d := time.Since(t0)
		if ctx.Err() != nil {
			return
		}
		p.mu.Lock()
		if err != nil {
			p.err = fmt.Errorf("write %d after %v: %w", i, d, err)
			p.mu.Unlock()
			return
		}
		p.lat = append(p.lat, d)
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
	}
}
