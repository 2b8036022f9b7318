package testcluster

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/nodedb/nodedb-cluster/cluster"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/kv"
	"github.com/nodedb/nodedb-cluster/internal/transport/memnet"
)

var (
	linSeeds       = flag.Int("nodedb.lin-seeds", 3, "seeds of the linearizability nemesis test")
	linDuration    = flag.Duration("nodedb.lin-duration", 4*time.Second, "workload duration per seed")
	linQUICSeeds   = flag.Int("nodedb.lin-quic-seeds", 2, "seeds of the linearizability nemesis test over QUIC")
	linExpirySeeds = flag.Int("nodedb.lin-expiry-seeds", 1, "seeds of the linearizability nemesis test with a 3 s client expiry")
	linTCPSeeds    = flag.Int("nodedb.lin-tcp-seeds", 1, "seeds of the linearizability nemesis test over TCP")
	// linSeedBase shifts every run's seeds, so that a campaign of extra
	// runs explores nemesis schedules the default run never takes.
	linSeedBase = flag.Int64("nodedb.lin-seed-base", 0, "added to every seed of the linearizability nemesis tests")
)

// TestLinearizableUnderFaults runs concurrent clients doing puts, gets,
// compare-and-sets and deletes on a 3-node cluster with several groups while
// a nemesis isolates leaders, partitions nodes, restarts nodes from disk,
// hands leaderships over and makes links lossy, then checks the history with porcupine and checks that
// every group's replicas converge.
func TestLinearizableUnderFaults(t *testing.T) {
	runSeeds(t, *linSeeds, Options{Nodes: 3, Groups: 4})
}

// TestLinearizableWithReadLeases runs the workload and nemesis with leader
// leases serving linearizable reads: an isolated leader's lease must run out
// before another leader can be elected, a restarted node must not vote a
// new leader in while an old lease may still run, and a leader that hands
// its leadership over must stop serving from its lease first.
func TestLinearizableWithReadLeases(t *testing.T) {
	runSeeds(t, *linSeeds, Options{Nodes: 3, Groups: 4, ReadLease: true})
}

// TestLinearizableWithClientExpiry runs the workload and nemesis while
// leaders sweep idle clients' exactly-once records every 375 ms (a 3 s
// expiry, longer than any operation's 2 s of retries): a sweep must never
// drop the record a retry still needs, whatever the faults, and every
// replica must drop the same records (the groups converge).
func TestLinearizableWithClientExpiry(t *testing.T) {
	runSeeds(t, *linExpirySeeds, Options{Nodes: 3, Groups: 4, ClientIdleExpiry: 3 * time.Second},
		func(ctx context.Context, t *testing.T, c *Cluster) {
			// Once the clients stop, every record idles out: each node must
			// drop records, and the groups must still converge.
			for _, n := range c.Live() {
				for n.Stats().ClientRecordsExpired.Load() == 0 {
					if ctx.Err() != nil {
						t.Fatalf("%s dropped no client record", n.ID())
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
			for _, g := range c.Groups() {
				if _, err := c.WaitConverged(ctx, g.ID); err != nil {
					t.Error(err)
				}
			}
		})
}

// TestReadLeaseSkipsQuorumRounds: with leases on, a leader serves most
// linearizable reads without a ReadIndex round.
func TestReadLeaseSkipsQuorumRounds(t *testing.T) {
	c := New(t, Options{Nodes: 3, Groups: 1, ReadLease: true})
	ctx := testCtx(t, 30*time.Second)
	g := ids.GroupID(1)
	leader, vs, q := readSetup(ctx, t, c, "v")
	rounds0, lease0 := leader.Stats().ReadIndexBatches.Load(), leader.Stats().LeaseReads.Load()
	const reads = 300
	for range reads {
		res, err := leader.Read(ctx, g, vs, q)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := kv.DecodeGetResponse(res); string(got.Value) != "v" {
			t.Fatalf("read %q", got.Value)
		}
	}
	rounds, lease := leader.Stats().ReadIndexBatches.Load()-rounds0, leader.Stats().LeaseReads.Load()-lease0
	t.Logf("%d reads: %d from the lease, %d quorum rounds", reads, lease, rounds)
	if lease < reads/2 || rounds > reads/4 {
		t.Fatalf("%d reads: %d from the lease, %d quorum rounds", reads, lease, rounds)
	}
}

// TestConcurrentReadsShareRounds: while a ReadIndex round is in flight, new
// reads wait for the next round instead of each starting its own, so a
// steady read load from many clients costs a handful of rounds per round
// trip, not one round per read. Every read still returns the value written
// before it started.
func TestConcurrentReadsShareRounds(t *testing.T) {
	c := New(t, Options{Nodes: 3, Groups: 1})
	ctx := testCtx(t, 60*time.Second)
	g := ids.GroupID(1)
	leader, vs, q := readSetup(ctx, t, c, "v1")
	// A 2 ms hop: one round takes about 4 ms.
	c.Net.SetAllLinks(memnet.LinkFaults{MinDelay: 2 * time.Millisecond, MaxDelay: 2 * time.Millisecond})
	rounds0 := leader.Stats().ReadIndexBatches.Load()
	const readers, each = 32, 20
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	for i := range readers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 1))
			for range each {
				// Readers out of step with each other and with the rounds.
				time.Sleep(time.Duration(rng.IntN(1000)) * time.Microsecond)
				res, err := leader.Read(ctx, g, vs, q)
				if err != nil {
					errs <- err
					return
				}
				if got, _ := kv.DecodeGetResponse(res); string(got.Value) != "v1" {
					errs <- fmt.Errorf("read %q, want v1", got.Value)
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
	el := time.Since(start)
	rounds := leader.Stats().ReadIndexBatches.Load() - rounds0
	// At most one round in flight: rounds are bounded by the elapsed time
	// over the round trip (4 ms), whatever the number of reads.
	limit := uint64(el/(4*time.Millisecond)) + 2
	t.Logf("%d reads in %v: %d ReadIndex rounds (at most %d allowed)", readers*each, el, rounds, limit)
	if rounds > limit {
		t.Fatalf("%d reads in %v took %d ReadIndex rounds, want at most %d (one round in flight at a time)", readers*each, el, rounds, limit)
	}
}

// TestReadsSurviveLeaderChange: a replica that loses or changes its leader
// drops the ReadIndex round in flight (etcd raft forgets pending requests
// when it steps down); the reads waiting on it, and those held behind it,
// are issued again at once rather than after the round's two-election-timeout
// expiry. Readers on the old leader keep getting answers within an election
// timeout across a leadership transfer.
func TestReadsSurviveLeaderChange(t *testing.T) {
	c := New(t, Options{Nodes: 3, Groups: 1, ElectionTicks: 50}) // 500 ms elections, 1 s round expiry
	ctx := testCtx(t, 60*time.Second)
	g := ids.GroupID(1)
	old, vs, q := readSetup(ctx, t, c, "v")
	st, err := old.Status(g)
	if err != nil {
		t.Fatal(err)
	}
	var to cluster.Replica
	for _, r := range st.Config.Replicas {
		if r.Node != old.ID() {
			to = r
			break
		}
	}
	// Slow links keep a round in flight at almost any moment.
	c.Net.SetAllLinks(memnet.LinkFaults{MinDelay: 3 * time.Millisecond, MaxDelay: 3 * time.Millisecond})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var slowest time.Duration
	for range 8 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				res, err := old.Read(ctx, g, vs, q)
				if err != nil {
					var nl *cluster.NotLeaderError
					if !errors.As(err, &nl) {
						t.Errorf("read: %v", err)
						return
					}
					continue
				}
				if got, _ := kv.DecodeGetResponse(res); string(got.Value) != "v" {
					t.Errorf("read %q, want v", got.Value)
					return
				}
				mu.Lock()
				slowest = max(slowest, time.Since(start))
				mu.Unlock()
			}
		})
	}
	time.Sleep(100 * time.Millisecond)
	if err := old.TransferLeadership(ctx, g, to.Replica); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("slowest read across the transfer: %v", slowest)
	if slowest >= 500*time.Millisecond {
		t.Fatalf("a read took %v across a leadership transfer; want it re-issued, well under the 500 ms election timeout", slowest)
	}
}

// readSetup writes "k" = value in group 1 of c and returns the group's
// leader and the vShard and encoded query of a get of "k".
func readSetup(ctx context.Context, t *testing.T, c *Cluster, value string) (*cluster.Node, uint32, []byte) {
	t.Helper()
	if _, err := c.NewClient(1).Put(ctx, []byte("k"), []byte(value), nil); err != nil {
		t.Fatal(err)
	}
	leader, err := c.WaitLeader(ctx, ids.GroupID(1))
	if err != nil {
		t.Fatal(err)
	}
	q, _ := kv.EncodeGet([]byte("k"), kv.DefaultLimits())
	vs, _ := c.Route([]byte("k"))
	return leader, vs, q
}

// TestLinearizableOverQUIC runs the same workload and nemesis (without
// memnet's lossy links) over real QUIC sockets with mutual TLS.
func TestLinearizableOverQUIC(t *testing.T) {
	runSeeds(t, *linQUICSeeds, Options{Nodes: 3, Groups: 4, QUIC: true})
}

// TestLinearizableOverTCP is TestLinearizableOverQUIC over TCP with mutual
// TLS (tcpnet), the transport of `start --transport tcp`.
func TestLinearizableOverTCP(t *testing.T) {
	runSeeds(t, *linTCPSeeds, Options{Nodes: 3, Groups: 4, TCP: true})
}

// runSeeds runs the linearizability check for seeds 1..n (1 with -short)
// with opts, then after (if any) on the healed cluster.
func runSeeds(t *testing.T, n int, opts Options, after ...func(context.Context, *testing.T, *Cluster)) {
	if testing.Short() {
		n = 1
	}
	for s := range n {
		o := opts
		o.Seed = *linSeedBase + int64(s+1)
		t.Run(fmt.Sprintf("seed=%d", o.Seed), func(t *testing.T) {
			runLinearizability(t, o, *linDuration, after...)
		})
	}
}

func runLinearizability(t *testing.T, opts Options, dur time.Duration, after ...func(context.Context, *testing.T, *Cluster)) {
	seed := opts.Seed
	c := New(t, opts)
	ctx, cancel := context.WithTimeout(context.Background(), dur+60*time.Second)
	defer cancel()
	if err := c.WaitAllLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	hist := NewHistory()
	keys := []string{"a", "b", "c", "d", "e", "f", "{t}x", "{t}y"}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	const clients = 6
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runClient(ctx, c, hist, i, seed, keys, stop)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		runNemesis(ctx, t, c, seed, stop)
	}()
	time.Sleep(dur)
	close(stop)
	wg.Wait()
	c.Heal()
	c.Net.ClearFaults()
	for _, id := range c.NodeIDs() {
		if c.Node(id) == nil {
			if err := c.StartNode(id); err != nil {
				t.Fatal(err)
			}
		}
	}
	if hist.Len() < 50 {
		t.Fatalf("only %d operations completed; the cluster made too little progress", hist.Len())
	}
	hist.Check(t, 2*time.Minute)
	for _, g := range c.Groups() {
		if _, err := c.WaitConverged(ctx, g.ID); err != nil {
			t.Error(err)
		}
	}
	for _, f := range after {
		f(ctx, t, c)
	}
	t.Logf("seed %d: %d operations checked", seed, hist.Len())
}

func runClient(ctx context.Context, c *Cluster, hist *History, i int, seed int64, keys []string, stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(uint64(seed), uint64(i)))
	cl := c.NewClient(uint64(i + 1))
	// Some applied writes are sent again as if their answer was lost: a
	// write applied twice shows in the history as a version too many.
	cl.LoseAnswers = 0.1
	for n := 0; ; n++ {
		select {
		case <-stop:
			return
		default:
		}
		key := keys[rng.IntN(len(keys))]
		in := KVInput{Key: key, Value: fmt.Sprintf("c%d-%d", i, n)}
		opCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		call := hist.Now()
		var out KVOutput
		var err error
		switch r := rng.IntN(10); {
		case r < 4:
			in.Kind = OpGet
			var g kv.GetResponse
			g, err = cl.Get(opCtx, []byte(key))
			out = KVOutput{Found: g.Found, Value: string(g.Value), Version: g.Version}
		case r < 6:
			in.Kind = OpPut
			var res kv.OpResult
			res, err = cl.Put(opCtx, []byte(key), []byte(in.Value), nil)
			out = KVOutput{OK: true, Version: res.Version}
		case r < 9:
			in.Kind = OpCAS
			in.IfVersion = uint64(rng.IntN(4))
			iv := in.IfVersion
			var res kv.OpResult
			res, err = cl.Put(opCtx, []byte(key), []byte(in.Value), &iv)
			out = KVOutput{OK: true, Version: res.Version}
			var kerr *kv.Error
			if errors.As(err, &kerr) && kerr.Code == kv.CodeConflict {
				out = KVOutput{OK: false, Version: kerr.CurrentVersion}
				err = nil
			}
		default:
			in.Kind = OpDelete
			var res kv.OpResult
			res, err = cl.Delete(opCtx, []byte(key), nil)
			out = KVOutput{OK: res.Existed()}
		}
		ret := hist.Now()
		cancel()
		switch {
		case err == nil:
			hist.Add(i, in, call, out, ret)
		case in.Kind == OpGet:
			// A failed read has no effect: leave it out.
		case errors.Is(err, cluster.ErrOutcomeUnknown):
			hist.Add(i, in, call, KVOutput{Unknown: true}, ret)
		default:
			// A definite failure: the write was not applied.
		}
	}
}

// runNemesis injects one fault at a time, at most one node down at once so
// that every group keeps a quorum most of the time.
func runNemesis(ctx context.Context, t *testing.T, c *Cluster, seed int64, stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(uint64(seed), 0xfa))
	sleep := func(d time.Duration) bool {
		select {
		case <-stop:
			return false
		case <-ctx.Done():
			return false
		case <-time.After(d):
			return true
		}
	}
	nodes := c.NodeIDs()
	for {
		if !sleep(time.Duration(100+rng.IntN(200)) * time.Millisecond) {
			return
		}
		switch rng.IntN(5) {
		case 0: // isolate the leader of a random group
			g := c.Groups()[rng.IntN(len(c.Groups()))].ID
			if l := c.Leader(g); l != nil {
				c.Isolate(l.ID())
				sleep(time.Duration(200+rng.IntN(400)) * time.Millisecond)
				c.Heal()
			}
		case 1: // cut one node pair
			a := nodes[rng.IntN(len(nodes))]
			b := nodes[rng.IntN(len(nodes))]
			if a != b {
				c.Partition([]ids.NodeID{a}, []ids.NodeID{b})
				sleep(time.Duration(200+rng.IntN(400)) * time.Millisecond)
				c.Heal()
			}
		case 2: // restart a node from its directory
			n := nodes[rng.IntN(len(nodes))]
			if err := c.StopNode(n); err != nil {
				t.Errorf("stop %s: %v", n, err)
				return
			}
			sleep(time.Duration(100+rng.IntN(300)) * time.Millisecond)
			if err := c.StartNode(n); err != nil {
				t.Errorf("restart %s: %v", n, err)
				return
			}
		case 3: // a lossy, slow, duplicating, reordering network for a while
			if c.Options().QUIC || c.Options().TCP {
				continue // real sockets retransmit; loss is memnet's business
			}
			c.Net.SetAllLinks(memnet.LinkFaults{
				DropRate: 0.05, DuplicateRate: 0.02, ReorderRate: 0.05,
				MinDelay: 0, MaxDelay: 3 * time.Millisecond,
			})
			sleep(time.Duration(300+rng.IntN(500)) * time.Millisecond)
			c.Net.ClearFaults()
		case 4: // hand a random group's leadership to a random follower
			g := c.Groups()[rng.IntN(len(c.Groups()))].ID
			l := c.Leader(g)
			if l == nil {
				continue
			}
			st, err := l.Status(g)
			if err != nil {
				continue
			}
			var to []cluster.ReplicaID
			for _, r := range st.Config.Replicas {
				if r.Node != l.ID() {
					to = append(to, r.Replica)
				}
			}
			if len(to) > 0 {
				tctx, cancel := context.WithTimeout(ctx, time.Second)
				_ = l.TransferLeadership(tctx, g, to[rng.IntN(len(to))]) // may fail under faults
				cancel()
			}
		}
	}
}

// TestKVModelRejectsStaleRead makes sure the checker can fail: a read that
// misses an acknowledged write must be refused.
func TestKVModelRejectsStaleRead(t *testing.T) {
	ops := []porcupine.Operation{
		{ClientId: 0, Input: KVInput{Kind: OpPut, Key: "k", Value: "1"}, Call: 0, Output: KVOutput{OK: true, Version: 1}, Return: 10},
		{ClientId: 1, Input: KVInput{Kind: OpGet, Key: "k"}, Call: 20, Output: KVOutput{Found: false}, Return: 30},
	}
	if porcupine.CheckOperations(KVModel, ops) {
		t.Fatal("a read that missed an acknowledged write was accepted")
	}
	ops[1].Output = KVOutput{Found: true, Value: "1", Version: 1}
	if !porcupine.CheckOperations(KVModel, ops) {
		t.Fatal("a correct history was refused")
	}
	// A lost update: two puts both claiming version 1.
	ops = []porcupine.Operation{
		{ClientId: 0, Input: KVInput{Kind: OpPut, Key: "k", Value: "1"}, Call: 0, Output: KVOutput{OK: true, Version: 1}, Return: 10},
		{ClientId: 1, Input: KVInput{Kind: OpPut, Key: "k", Value: "2"}, Call: 20, Output: KVOutput{OK: true, Version: 1}, Return: 30},
	}
	if porcupine.CheckOperations(KVModel, ops) {
		t.Fatal("two writes with the same version were accepted")
	}
}

// TestIsolatedLeaseHolderServesNoStaleRead isolates a leader that holds a
// read lease and reads from it in a loop while the other two elect a new
// leader and acknowledge a write: no read that starts after that write was
// acknowledged may return the old value. A lease longer than the time
// followers wait before electing a new leader fails this.
func TestIsolatedLeaseHolderServesNoStaleRead(t *testing.T) {
	for attempt := range 4 {
		c := New(t, Options{Nodes: 3, Groups: 1, ReadLease: true, Seed: int64(attempt + 1)})
		ctx := testCtx(t, 30*time.Second)
		g := ids.GroupID(1)
		key := []byte("k")
		if _, err := c.NewClient(1).Put(ctx, key, []byte("old"), nil); err != nil {
			t.Fatal(err)
		}
		old, err := c.WaitLeader(ctx, g)
		if err != nil {
			t.Fatal(err)
		}
		q, _ := kv.EncodeGet(key, kv.DefaultLimits())
		vs, _ := c.Route(key)
		if _, err := old.Read(ctx, g, vs, q); err != nil { // holds a lease now
			t.Fatal(err)
		}
		type read struct {
			start time.Time
			value string
		}
		var (
			mu    sync.Mutex
			reads []read
			stop  = make(chan struct{})
			wg    sync.WaitGroup
		)
		c.Isolate(old.ID())
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				rctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
				res, err := old.Read(rctx, g, vs, q)
				cancel()
				if err == nil {
					got, _ := kv.DecodeGetResponse(res)
					mu.Lock()
					reads = append(reads, read{start, string(got.Value)})
					mu.Unlock()
				}
			}
		})
		// The other two elect a leader and acknowledge a new value.
		var acked time.Time
		for acked.IsZero() {
			for _, n := range c.Live() {
				if n.ID() == old.ID() || !n.IsLeader(g) {
					continue
				}
				cmd, _ := kv.EncodePut(key, []byte("new"), nil, kv.DefaultLimits())
				pctx, cancel := context.WithTimeout(ctx, time.Second)
				if _, err := n.Propose(pctx, g, cluster.Proposal{VShard: vs, Payload: cmd}); err == nil {
					acked = time.Now()
				}
				cancel()
			}
			if ctx.Err() != nil {
				t.Fatal("no new leader acknowledged the write")
			}
			time.Sleep(time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond) // reads on the old leader go on
		close(stop)
		wg.Wait()
		c.Heal()
		stale, served := 0, 0
		for _, r := range reads {
			served++
			if r.start.After(acked) && r.value == "old" {
				stale++
			}
		}
		t.Logf("attempt %d: %d reads served by the isolated leader, %d stale", attempt, served, stale)
		if stale > 0 {
			t.Fatalf("the isolated leader served %d reads of the old value after the new value was acknowledged", stale)
		}
		c.Close()
	}
}
