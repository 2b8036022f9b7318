package testcluster

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/kv"
)

// BenchmarkProposals measures replicated writes on a 3-node in-process
// cluster (memnet, no faults, fsync on, every node on its own Pebble dir):
// 256-byte puts through the group leader with exactly-once client IDs, for
// 1, 8 and 64 groups and 1, 16 and 256 concurrent proposers. Proposers are
// spread evenly over the groups. It reports proposals/s and p50/p99 latency.
func BenchmarkProposals(b *testing.B) {
	for _, groups := range []int{1, 8, 64} {
		for _, proposers := range []int{1, 16, 256} {
			b.Run(fmt.Sprintf("groups=%d/proposers=%d", groups, proposers), func(b *testing.B) {
				benchProposals(b, netMem, groups, proposers)
			})
		}
	}
}

// BenchmarkProposalsQUIC is BenchmarkProposals over real QUIC sockets on
// 127.0.0.1 with mutual TLS instead of memnet, for 1 and 64 groups: the
// transport's cost per proposal, beside BenchmarkProposals' figures.
func BenchmarkProposalsQUIC(b *testing.B) {
	for _, groups := range []int{1, 64} {
		for _, proposers := range []int{1, 16, 256} {
			b.Run(fmt.Sprintf("groups=%d/proposers=%d", groups, proposers), func(b *testing.B) {
				benchProposals(b, netQUIC, groups, proposers)
			})
		}
	}
}

// BenchmarkProposalsTCP is BenchmarkProposalsQUIC over tcpnet (TCP with
// mutual TLS 1.3), the transport of `start --transport tcp`.
func BenchmarkProposalsTCP(b *testing.B) {
	for _, groups := range []int{1, 64} {
		for _, proposers := range []int{1, 16, 256} {
			b.Run(fmt.Sprintf("groups=%d/proposers=%d", groups, proposers), func(b *testing.B) {
				benchProposals(b, netTCP, groups, proposers)
			})
		}
	}
}

// The networks benchProposals runs on.
const (
	netMem = iota
	netQUIC
	netTCP
)

func benchProposals(b *testing.B, network, groups, proposers int) {
	c := New(b, Options{Nodes: 3, Groups: groups, VShards: 1024, TickInterval: 100 * time.Millisecond, HeartbeatTicks: 2,
		CacheBytes: 64 << 20, MemTableBytes: benchMemTable(b), Workers: benchWorkers(b), Dir: benchDir(b), QUIC: network == netQUIC, TCP: network == netTCP})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := c.WaitAllLeaders(ctx); err != nil {
		b.Fatal(err)
	}
	// One key per proposer, routed to the proposer's group.
	keys := make([][]byte, proposers)
	for p := range proposers {
		want := ids.GroupID(p%groups + 1)
		for i := 0; ; i++ {
			k := []byte(fmt.Sprintf("p%d-%d", p, i))
			if _, g := c.Route(k); g == want {
				keys[p] = k
				break
			}
		}
	}
	value := make([]byte, 256)
	clients := make([]*Client, proposers)
	cmds := make([][]byte, proposers)
	for p := range proposers {
		clients[p] = c.NewClient(uint64(p + 1))
		clients[p].AttemptTimeout = 10 * time.Second
		cmd, err := kv.EncodePut(keys[p], value, nil, kv.DefaultLimits())
		if err != nil {
			b.Fatal(err)
		}
		cmds[p] = cmd
	}
	var syncsBefore, msgsBefore, readiesBefore, passesBefore, appendsBefore, walBefore uint64
	for _, n := range c.Live() {
		syncsBefore += n.WALSyncs()
		walBefore += n.WALBytes()
		msgsBefore += n.Stats().MessagesSent.Load()
		readiesBefore += n.Stats().ReadiesProcessed.Load()
		passesBefore += n.Stats().Cycles.Load()
		appendsBefore += n.Stats().AppendBatches.Load()
	}
	cpuBefore := processCPU()
	mallocsBefore := processMallocs()
	lat, elapsed := runClosedLoop(b, proposers, func(p int) error {
		_, err := clients[p].Write(ctx, keys[p], cmds[p])
		return err
	})
	if ops := reportLatencies(b, lat, elapsed, "proposals/s"); ops > 0 {
		count := float64(ops)
		var syncs, msgs, readies, passes, appends, wal uint64
		for _, n := range c.Live() {
			syncs += n.WALSyncs()
			wal += n.WALBytes()
			msgs += n.Stats().MessagesSent.Load()
			readies += n.Stats().ReadiesProcessed.Load()
			passes += n.Stats().Cycles.Load()
			appends += n.Stats().AppendBatches.Load()
		}
		// Raft messages and Ready structs of all three nodes per proposal:
		// the per-group work that batching amortizes.
		b.ReportMetric(float64(msgs-msgsBefore)/count, "msgs/proposal")
		b.ReportMetric(float64(readies-readiesBefore)/count, "readies/proposal")
		// Worker passes and appender batches of all three nodes per
		// proposal: the per-node rounds, each with its own Pebble commit.
		b.ReportMetric(float64(passes-passesBefore)/count, "passes/proposal")
		b.ReportMetric(float64(appends-appendsBefore)/count, "appends/proposal")
		// CPU of the whole process (three nodes and the clients) per
		// proposal: steadier than throughput on a noisy disk.
		b.ReportMetric(float64((processCPU()-cpuBefore).Microseconds())/count, "cpu-µs/proposal")
		// Heap allocations of the whole process per proposal: steadier
		// still, and what buffer reuse on the hot path is measured by.
		b.ReportMetric(float64(processMallocs()-mallocsBefore)/count, "mallocs/proposal")
		// Bytes all three nodes wrote to their WALs per proposal: the
		// proposal's own bytes plus what each Raft round adds.
		b.ReportMetric(float64(wal-walBefore)/count, "wal-bytes/proposal")
		// Fsyncs of all three nodes per proposal: group commit at work.
		b.ReportMetric(float64(syncs-syncsBefore)/count, "fsyncs/proposal")
	}
}

// processCPU returns the user and system CPU time the process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// processMallocs returns the number of heap objects the process has
// allocated so far.
func processMallocs() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.Mallocs
}

// benchWorkers is each node's Raft worker count: 1 (three nodes share this
// machine's cores), or NODEDB_BENCH_WORKERS.
func benchWorkers(b *testing.B) int { return benchEnvInt(b, "NODEDB_BENCH_WORKERS", 1) }

// benchMemTable is each node's memtable size: the production default of
// 32 MiB, or NODEDB_BENCH_MEMTABLE_MIB.
func benchMemTable(b *testing.B) uint64 {
	return uint64(benchEnvInt(b, "NODEDB_BENCH_MEMTABLE_MIB", 32)) << 20
}

// benchEnvInt is the positive integer in the environment variable name, or
// def when it is unset.
func benchEnvInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// benchDir is where benchmark nodes keep their data: a test temp dir, or
// NODEDB_BENCH_DIR (for instance a tmpfs, to take the disk out of a CPU
// comparison).
func benchDir(b *testing.B) string {
	if d := os.Getenv("NODEDB_BENCH_DIR"); d != "" {
		dir, err := os.MkdirTemp(d, "bench")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(dir) })
		return dir
	}
	return b.TempDir()
}

// BenchmarkReads measures linearizable reads at the leaders of a 3-node
// in-process cluster (memnet, fsync on), 256 concurrent readers spread
// over 1 or 16 groups, each reading its own 256-byte key: with ReadIndex
// rounds (the default) and with leader leases. It reports reads/s, p50/p99,
// the process's CPU per read, Raft messages per read and ReadIndex rounds
// per read (the batching of reads into rounds).
func BenchmarkReads(b *testing.B) {
	for _, groups := range []int{1, 16} {
		for _, lease := range []bool{false, true} {
			b.Run(fmt.Sprintf("groups=%d/readers=256/lease=%t", groups, lease), func(b *testing.B) {
				benchReads(b, groups, 256, lease)
			})
		}
	}
}

func benchReads(b *testing.B, groups, readers int, lease bool) {
	c := New(b, Options{Nodes: 3, Groups: groups, VShards: 1024, TickInterval: 100 * time.Millisecond, HeartbeatTicks: 2,
		CacheBytes: 64 << 20, MemTableBytes: benchMemTable(b), Workers: benchWorkers(b), Dir: benchDir(b), ReadLease: lease})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := c.WaitAllLeaders(ctx); err != nil {
		b.Fatal(err)
	}
	keys := make([][]byte, readers)
	queries := make([][]byte, readers)
	value := make([]byte, 256)
	w := c.NewClient(1)
	for r := range readers {
		want := ids.GroupID(r%groups + 1)
		for i := 0; ; i++ {
			k := []byte(fmt.Sprintf("r%d-%d", r, i))
			if _, g := c.Route(k); g == want {
				keys[r] = k
				break
			}
		}
		if _, err := w.Put(ctx, keys[r], value, nil); err != nil {
			b.Fatal(err)
		}
		q, err := kv.EncodeGet(keys[r], kv.DefaultLimits())
		if err != nil {
			b.Fatal(err)
		}
		queries[r] = q
	}
	stat := func() (msgs, rounds uint64) {
		for _, n := range c.Live() {
			msgs += n.Stats().MessagesSent.Load()
			rounds += n.Stats().ReadIndexBatches.Load()
		}
		return msgs, rounds
	}
	msgsBefore, roundsBefore := stat()
	cpuBefore := processCPU()
	lat, elapsed := runClosedLoop(b, readers, func(r int) error {
		vs, g := c.Route(keys[r])
		n := c.Leader(g)
		if n == nil {
			return fmt.Errorf("group %d has no leader", g)
		}
		res, err := n.Read(ctx, g, vs, queries[r])
		if err != nil {
			return err
		}
		got, err := kv.DecodeGetResponse(res)
		if err == nil && (!got.Found || len(got.Value) != len(value)) {
			err = fmt.Errorf("read %s: %+v", keys[r], got)
		}
		return err
	})
	n := reportLatencies(b, lat, elapsed, "reads/s")
	if n == 0 {
		return
	}
	msgs, rounds := stat()
	b.ReportMetric(float64((processCPU()-cpuBefore).Microseconds())/float64(n), "cpu-µs/read")
	b.ReportMetric(float64(msgs-msgsBefore)/float64(n), "msgs/read")
	b.ReportMetric(float64(rounds-roundsBefore)/float64(n), "rounds/read")
}

// runClosedLoop runs b.N operations over workers goroutines, each running
// op(w) back to back, and returns every worker's latencies and the time
// taken. A failed operation fails the benchmark and stops its worker.
func runClosedLoop(b *testing.B, workers int, op func(w int) error) ([][]time.Duration, time.Duration) {
	lat := make([][]time.Duration, workers)
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for w := range workers {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				t0 := time.Now()
				if err := op(w); err != nil {
					b.Error(err)
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	return lat, elapsed
}

// reportLatencies reports the rate (as rateUnit), p50 and p99 of the
// operations whose latencies the workers recorded, and returns how many
// there were.
func reportLatencies(b *testing.B, lat [][]time.Duration, elapsed time.Duration, rateUnit string) int {
	all := slices.Concat(lat...)
	slices.Sort(all)
	if len(all) == 0 {
		return 0
	}
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), rateUnit)
	b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
	return len(all)
}
