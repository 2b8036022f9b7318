package testcluster

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/cluster"
	"github.com/nodedb/nodedb-cluster/internal/ids"
)

type nodeCounters struct {
	walSyncs, cycles, synced, readies uint64
}

func countersOf(n *cluster.Node) nodeCounters {
	s := n.Stats()
	return nodeCounters{
		walSyncs: n.WALSyncs(),
		cycles:   s.Cycles.Load(),
		synced:   s.SyncedCommits.Load(),
		readies:  s.ReadiesProcessed.Load(),
	}
}

// TestGroupCommitOneFsyncPerCycle drives writes into 1 and 64 groups at once
// and counts real WAL fsyncs (through a counting filesystem under Pebble): a
// node never syncs more than once per scheduler cycle, however many groups
// the cycle carried, and with 64 busy groups one fsync covers many groups.
func TestGroupCommitOneFsyncPerCycle(t *testing.T) {
	for _, groups := range []int{1, 64} {
		t.Run(fmt.Sprintf("groups=%d", groups), func(t *testing.T) {
			c := New(t, Options{Nodes: 3, Groups: groups, VShards: 1024})
			ctx := testCtx(t, 60*time.Second)
			if err := c.WaitAllLeaders(ctx); err != nil {
				t.Fatal(err)
			}
			before := map[ids.NodeID]nodeCounters{}
			for _, n := range c.Live() {
				before[n.ID()] = countersOf(n)
			}
			var wg sync.WaitGroup
			var writes atomic.Int64
			deadline := time.Now().Add(1500 * time.Millisecond)
			for w := range 64 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					cl := c.NewClient(uint64(w + 1))
					for i := 0; time.Now().Before(deadline); i++ {
						k := []byte(fmt.Sprintf("w%d-%d", w, i))
						if _, err := cl.Put(ctx, k, make([]byte, 256), nil); err != nil {
							t.Error(err)
							return
						}
						writes.Add(1)
					}
				}()
			}
			wg.Wait()
			for _, n := range c.Live() {
				a, b := countersOf(n), before[n.ID()]
				syncs, cycles, synced, readies := a.walSyncs-b.walSyncs, a.cycles-b.cycles, a.synced-b.synced, a.readies-b.readies
				t.Logf("%s: %d writes, %d cycles, %d synced commits, %d WAL fsyncs, %d readies (%.1f per synced commit)",
					n.ID(), writes.Load(), cycles, synced, syncs, readies, float64(readies)/float64(max(synced, 1)))
				if synced > cycles {
					t.Errorf("%s: %d synced commits in %d cycles", n.ID(), synced, cycles)
				}
				if syncs > cycles {
					t.Errorf("%s: %d WAL fsyncs in %d cycles: more than one per cycle", n.ID(), syncs, cycles)
				}
				if groups > 1 && readies < 2*synced {
					t.Errorf("%s: %d readies over %d synced commits: groups are not sharing fsyncs", n.ID(), readies, synced)
				}
			}
		})
	}
}

var _ = context.Background
