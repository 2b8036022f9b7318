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
	linSeeds     = flag.Int("nodedb.lin-seeds", 3, "seeds of the linearizability nemesis test")
	linDuration  = flag.Duration("nodedb.lin-duration", 4*time.Second, "workload duration per seed")
	linQUICSeeds = flag.Int("nodedb.lin-quic-seeds", 2, "seeds of the linearizability nemesis test over QUIC")
)

// TestLinearizableUnderFaults runs concurrent clients doing puts, gets,
// compare-and-sets and deletes on a 3-node cluster with several groups while
// a nemesis isolates leaders, partitions nodes, restarts nodes from disk and
// makes links lossy, then checks the history with porcupine and checks that
// every group's replicas converge.
func TestLinearizableUnderFaults(t *testing.T) {
	seeds := *linSeeds
	if testing.Short() {
		seeds = 1
	}
	for s := range seeds {
		seed := int64(s + 1)
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			runLinearizability(t, Options{Nodes: 3, Groups: 4, Seed: seed}, *linDuration)
		})
	}
}

// TestLinearizableOverQUIC runs the same workload and nemesis (without
// memnet's lossy links) over real QUIC sockets with mutual TLS.
func TestLinearizableOverQUIC(t *testing.T) {
	seeds := *linQUICSeeds
	if testing.Short() {
		seeds = 1
	}
	for s := range seeds {
		seed := int64(s + 1)
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			runLinearizability(t, Options{Nodes: 3, Groups: 4, Seed: seed, QUIC: true}, *linDuration)
		})
	}
}

func runLinearizability(t *testing.T, opts Options, dur time.Duration) {
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
	t.Logf("seed %d: %d operations checked", seed, hist.Len())
}

func runClient(ctx context.Context, c *Cluster, hist *History, i int, seed int64, keys []string, stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(uint64(seed), uint64(i)))
	cl := c.NewClient(uint64(i + 1))
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
		switch rng.IntN(4) {
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
			if c.Options().QUIC {
				continue // QUIC itself retransmits; loss is memnet's business
			}
			c.Net.SetAllLinks(memnet.LinkFaults{
				DropRate: 0.05, DuplicateRate: 0.02, ReorderRate: 0.05,
				MinDelay: 0, MaxDelay: 3 * time.Millisecond,
			})
			sleep(time.Duration(300+rng.IntN(500)) * time.Millisecond)
			c.Net.ClearFaults()
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
