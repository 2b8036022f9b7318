// Command compare runs the same closed-loop workloads against a 3-node
// nodedb-cluster (through its Go client) and a 3-member etcd v3.7.3 (through
// go.etcd.io/etcd/client/v3), both as separate processes on 127.0.0.1 with
// fsync on, and prints one table with ops/s, latency quantiles, errors, the
// servers' CPU time and ours/etcd ratios.
//
//	./build-etcd.sh            # once: bin/etcd and bin/nodedb-cluster
//	go run .                   # every workload, 3 s warm-up + 10 s each
//	go run . --quick           # 1 s + 3 s, a smoke test
//	go run . --workloads put256,get256 --json
//	go run . --manygroups      # our library API against dragonboat, in-process
//
// See docs/comparison.md at the repository root.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/netloss"
)

// system is one cluster under test.
type system interface {
	name() string
	servers() []*proc
	// timings reads the servers' WAL fsync histogram (and ours, its
	// proposal histogram), summed over the servers, so far.
	timings(ctx context.Context) (serverHistograms, error)
	put(ctx context.Context, w int, key, value []byte) error
	get(ctx context.Context, w int, key []byte) error
	close()
}

// workload is one load shape, run the same way against each system.
type workload struct {
	Name      string
	Clients   int
	ReadRatio float64 // share of linearizable gets; the rest are puts
}

var allWorkloads = []workload{
	{"put1", 1, 0},
	{"put16", 16, 0},
	{"put256", 256, 0},
	{"get256", 256, 1},
	{"mixed256", 256, 0.9},
}

// row is one workload on one system.
type row struct {
	Workload   string  `json:"workload"`
	System     string  `json:"system"`
	Clients    int     `json:"clients"`
	ReadRatio  float64 `json:"read_ratio"`
	Ops        int     `json:"ops"`
	Errors     int     `json:"errors"`
	Seconds    float64 `json:"seconds"`
	OpsPerSec  float64 `json:"ops_per_sec"`
	P50ms      float64 `json:"p50_ms"`
	P99ms      float64 `json:"p99_ms"`
	P999ms     float64 `json:"p999_ms"`
	MaxMs      float64 `json:"max_ms"`
	ServerCPU  float64 `json:"server_cpu_s"`
	ServerSys  float64 `json:"server_sys_cpu_s"` // the kernel's part of ServerCPU
	CPUusPerOp float64 `json:"server_cpu_us_per_op"`
	BenchCPU   float64 `json:"bench_cpu_s"`
	// FsyncsPerOp is the servers' WAL fsyncs (all of them together) per
	// operation in the measured window; -1 if a scrape failed.
	FsyncsPerOp float64 `json:"wal_fsyncs_per_op"`
	// FsyncMeanMs is the mean WAL fsync in the measured window (from each
	// system's own histogram: etcd_disk_wal_fsync_duration_seconds, ours
	// nodedb_storage_wal_sync_duration_seconds); ProposalP50ms is ours
	// only: a write's median from proposal to applied on its leader, the
	// part of P50ms spent inside Raft.
	FsyncMeanMs   float64 `json:"wal_fsync_mean_ms"`
	ProposalP50ms float64 `json:"proposal_p50_ms,omitempty"`
	FirstError    string  `json:"first_error,omitempty"`
	// NewTerms counts Raft term changes (elections) over all groups during
	// the measured window (--manygroups only; summed over rounds).
	NewTerms int `json:"new_terms,omitempty"`
	// IdleCores is this process's CPU use (cores) with the groups up and no
	// load, measured before the run (--manygroups only).
	IdleCores float64 `json:"idle_cores,omitempty"`
	// OtherCores is the CPU that the rest of the machine used during the
	// measured window (cores; --manygroups only): interference.
	OtherCores float64 `json:"other_cores,omitempty"`
	// Round is the round of a single run; Rounds, OpsMin and OpsMax
	// describe a median row.
	Round  int     `json:"round,omitempty"`
	Rounds int     `json:"rounds,omitempty"`
	OpsMin float64 `json:"ops_per_sec_min,omitempty"`
	OpsMax float64 `json:"ops_per_sec_max,omitempty"`
}

// medians folds the rounds of each workload and system into one row: the
// median of every figure (each taken on its own), errors summed.
func medians(runs []row) []row {
	var out []row
	idx := map[[2]string]int{}
	groups := [][]row{}
	for _, r := range runs {
		k := [2]string{r.Workload, r.System}
		i, ok := idx[k]
		if !ok {
			i = len(groups)
			idx[k] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], r)
	}
	for _, g := range groups {
		med := func(f func(row) float64) float64 {
			v := make([]float64, len(g))
			for i, r := range g {
				v[i] = f(r)
			}
			slices.Sort(v)
			if len(v)%2 == 1 {
				return v[len(v)/2]
			}
			return (v[len(v)/2-1] + v[len(v)/2]) / 2
		}
		m := row{Workload: g[0].Workload, System: g[0].System, Clients: g[0].Clients, ReadRatio: g[0].ReadRatio, Rounds: len(g)}
		m.OpsPerSec = med(func(r row) float64 { return r.OpsPerSec })
		m.P50ms = med(func(r row) float64 { return r.P50ms })
		m.P99ms = med(func(r row) float64 { return r.P99ms })
		m.P999ms = med(func(r row) float64 { return r.P999ms })
		m.MaxMs = med(func(r row) float64 { return r.MaxMs })
		m.Seconds = med(func(r row) float64 { return r.Seconds })
		m.ServerCPU = med(func(r row) float64 { return r.ServerCPU })
		m.ServerSys = med(func(r row) float64 { return r.ServerSys })
		m.CPUusPerOp = med(func(r row) float64 { return r.CPUusPerOp })
		m.FsyncsPerOp = med(func(r row) float64 { return r.FsyncsPerOp })
		m.FsyncMeanMs = med(func(r row) float64 { return r.FsyncMeanMs })
		m.ProposalP50ms = med(func(r row) float64 { return r.ProposalP50ms })
		m.BenchCPU = med(func(r row) float64 { return r.BenchCPU })
		m.IdleCores = med(func(r row) float64 { return r.IdleCores })
		m.OtherCores = med(func(r row) float64 { return r.OtherCores })
		m.Ops = int(med(func(r row) float64 { return float64(r.Ops) }))
		m.OpsMin, m.OpsMax = g[0].OpsPerSec, g[0].OpsPerSec
		for _, r := range g {
			m.Errors += r.Errors
			m.NewTerms += r.NewTerms
			m.OpsMin, m.OpsMax = min(m.OpsMin, r.OpsPerSec), max(m.OpsMax, r.OpsPerSec)
			if m.FirstError == "" {
				m.FirstError = r.FirstError
			}
		}
		out = append(out, m)
	}
	wi := func(n string) int {
		return slices.IndexFunc(allWorkloads, func(w workload) bool { return w.Name == n })
	}
	slices.SortStableFunc(out, func(a, b row) int {
		if d := wi(a.Workload) - wi(b.Workload); d != 0 {
			return d
		}
		return strings.Compare(b.System, a.System) // nodedb, then etcd
	})
	return out
}

// ratio is ours/etcd for one workload.
type ratio struct {
	Workload   string  `json:"workload"`
	Throughput float64 `json:"ops_per_sec"`
	P50        float64 `json:"p50"`
	P99        float64 `json:"p99"`
	CPUPerOp   float64 `json:"cpu_per_op"`
}

// target is one of issue 6's targets, evaluated on this run.
type target struct {
	Target string `json:"target"`
	Value  string `json:"value"`
	Holds  bool   `json:"holds"`
}

type conditions struct {
	Date          string `json:"date"`
	CPUs          int    `json:"cpus"`
	LoadAvgBefore string `json:"loadavg_before"`
	GoVersion     string `json:"go_version"`
	EtcdVersion   string `json:"etcd_version"`
	RepoCommit    string `json:"repo_commit"`
	Fsync         string `json:"fsync"`
	OursPeerTLS   bool   `json:"ours_peer_tls"`
	OursClientTLS bool   `json:"ours_client_tls"`
	OursReadLease bool   `json:"ours_read_lease"`
	OursTransport string `json:"ours_transport,omitempty"`
	OursArgs      string `json:"ours_args,omitempty"` // --nodedb-args
	// PreconditionS is --precondition: seconds of puts from 256 clients
	// against each system before the measured runs.
	PreconditionS float64 `json:"precondition_s,omitempty"`
	// PeerLossPct is the share of packets between members (both systems)
	// dropped at random, in percent (--peer-loss); PeerPackets and
	// PeerDropped count them over the whole run.
	PeerLossPct   float64 `json:"peer_loss_pct,omitempty"`
	PeerPackets   uint64  `json:"peer_packets,omitempty"`
	PeerDropped   uint64  `json:"peer_dropped,omitempty"`
	EtcdPeerTLS   bool    `json:"etcd_peer_tls"`
	EtcdClientTLS bool    `json:"etcd_client_tls"`
	ValueSize     int     `json:"value_size"`
	Keys          int     `json:"keys"`
	WarmupS       float64 `json:"warmup_s"`
	Rounds        int     `json:"rounds"`
	DurationS     float64 `json:"duration_s"`
	EtcdConns     int     `json:"etcd_conns"`
	EtcdTarget    string  `json:"etcd_target"`
	OursLeaders   string  `json:"ours_leaders"`
	// IdleCPU is each system's server CPU use with no load (cores), measured
	// over IdleS seconds after the keys were written.
	IdleCPU map[string]float64 `json:"idle_server_cpu_cores"`
	IdleS   float64            `json:"idle_s"`
	Root    string             `json:"root"`
	// DiskSyncP50Ms and DiskSyncMeanMs are the data dir's file system
	// alone, before any server starts: 4 KiB appends to a new file, each
	// followed by fdatasync (diskSyncs).
	DiskSyncP50Ms  float64 `json:"disk_sync_p50_ms,omitempty"`
	DiskSyncMeanMs float64 `json:"disk_sync_mean_ms,omitempty"`
}

type report struct {
	Conditions conditions `json:"conditions"`
	// Results has one row per workload and system: with several rounds,
	// each figure is the median over the rounds (OpsMin and OpsMax give the
	// range of ops/s); Runs has every round's rows.
	Results []row    `json:"results"`
	Runs    []row    `json:"runs"`
	Ratios  []ratio  `json:"ratios"`
	Targets []target `json:"targets"`
}

type options struct {
	bin          string
	root         string
	workloads    string
	systems      string
	duration     time.Duration
	warmup       time.Duration
	pause        time.Duration
	quick        bool
	keep         bool
	asJSON       bool
	jsonFile     string
	keys         int
	valueSize    int
	peerTLS      bool
	clientTLS    bool
	readLease    bool
	nodedbArgs   string
	precondition time.Duration
	transport    string
	peerLoss     float64
	etcdConns    int
	etcdTarget   string
	opTimeout    time.Duration
	idle         time.Duration
	rounds       int
	manyGroups   bool
	mg           mgOptions
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "bin", "dir with the etcd and nodedb-cluster binaries (built by ./build-etcd.sh DIR when missing)")
	flag.StringVar(&o.root, "root", "", "dir for the data dirs and logs (default: a new temp dir)")
	flag.StringVar(&o.workloads, "workloads", "", "comma-separated subset of "+workloadNames()+" (default: all)")
	flag.StringVar(&o.systems, "systems", "nodedb,etcd", "systems to run: nodedb, etcd or both (with --manygroups: nodedb, dragonboat or both, default both)")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "measured time of each workload")
	flag.DurationVar(&o.warmup, "warmup", 3*time.Second, "warm-up before each measured window")
	flag.DurationVar(&o.pause, "pause", time.Second, "idle time between two runs")
	flag.BoolVar(&o.quick, "quick", false, "smoke test: 1 s warm-up, 3 s measured")
	flag.BoolVar(&o.keep, "keep", false, "keep the data dirs and logs")
	flag.BoolVar(&o.asJSON, "json", false, "print the report as JSON on stdout (progress goes to stderr)")
	flag.StringVar(&o.jsonFile, "json-file", "", "also write the report as JSON to this file")
	flag.IntVar(&o.keys, "keys", 10000, "keyspace (keys written before the workloads, so every get finds its key)")
	flag.IntVar(&o.valueSize, "value-size", 256, "value size in bytes")
	flag.BoolVar(&o.peerTLS, "etcd-peer-tls", true, "TLS between etcd members (ours always uses mutual TLS between nodes)")
	flag.StringVar(&o.transport, "nodedb-transport", "", "our nodes' peer transport: quic (their default) or tcp (TCP with the same mutual TLS)")
	flag.Float64Var(&o.peerLoss, "peer-loss", 0, "drop this percentage of the packets between members of both systems, at random (nftables; only inside a network namespace of its own, see docs/comparison.md)")
	flag.StringVar(&o.nodedbArgs, "nodedb-args", "", "more flags for every one of our nodes' start, space separated (e.g. \"--memtable-mib 8\")")
	flag.BoolVar(&o.readLease, "nodedb-read-lease", false, "start our nodes with --read-lease (linearizable reads from leader leases; etcd's default, ReadIndex, is unchanged)")
	flag.BoolVar(&o.clientTLS, "client-tls", false, "TLS between the clients and both systems (default: plain text on loopback for both)")
	flag.IntVar(&o.etcdConns, "etcd-conns", 1, "etcd clients (each one gRPC connection), shared round-robin by the workers (1, etcd's benchmark default, was fastest here)")
	flag.StringVar(&o.etcdTarget, "etcd-target", "leader", "endpoints of the etcd clients: leader (like ours, which sends to each key's leader) or all")
	flag.DurationVar(&o.opTimeout, "op-timeout", 10*time.Second, "bound of one operation")
	flag.IntVar(&o.rounds, "rounds", 1, "run the workloads this many times, interleaved, and report medians")
	flag.DurationVar(&o.precondition, "precondition", 0, "before the measured runs, write to each system from 256 clients for this long, so that both run in steady state (0: none)")
	flag.DurationVar(&o.idle, "idle", 3*time.Second, "measure the servers' CPU use with no load for this long first (0: skip)")
	flag.BoolVar(&o.manyGroups, "manygroups", false, "instead of the etcd comparison: many-group proposals on our library API (package cluster) against dragonboat v3.3.8, both in this process")
	flag.StringVar(&o.mg.shapes, "shapes", "48x256,48x48,1x256", "with --manygroups: comma-separated GROUPSxPROPOSERS to run")
	flag.DurationVar(&o.mg.tick, "raft-tick", 100*time.Millisecond, "with --manygroups: Raft tick of both systems (dragonboat's RTTMillisecond; our default); election 10 ticks, heartbeat 1")
	flag.BoolVar(&o.mg.dragonboatTLS, "dragonboat-tls", true, "with --manygroups: mutual TLS between dragonboat's NodeHosts (ours always uses mutual TLS between nodes)")
	flag.IntVar(&o.mg.oursWorkers, "ours-workers", 0, "with --manygroups: Raft workers per node of ours (0: the cluster package's default, GOMAXPROCS)")
	flag.Uint64Var(&o.mg.shards, "dragonboat-shards", 0, "with --manygroups: dragonboat's execution and LogDB shards per NodeHost (0: its default, 16; each LogDB shard syncs its own WAL)")
	flag.Uint64Var(&o.mg.snapshotEntries, "dragonboat-snapshot-entries", 0, "with --manygroups: dragonboat's Config.SnapshotEntries (0: its default, no snapshots)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of this process (the load generator, and with --manygroups both systems) to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "compare: cpu profile:", err)
			os.Exit(1)
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	if o.quick {
		o.warmup, o.duration, o.idle = time.Second, 3*time.Second, time.Second
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	if o.manyGroups && o.peerLoss != 0 {
		err = errors.New("--peer-loss applies to the etcd comparison only, not to --manygroups")
	} else if o.manyGroups {
		o.mg.systems = "nodedb,dragonboat"
		flag.Visit(func(f *flag.Flag) {
			if f.Name == "systems" {
				o.mg.systems = o.systems
			}
		})
		_, err = runManyGroups(ctx, o, o.mg, os.Stdout)
	} else {
		err = runAll(ctx, o)
	}
	if err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "compare:", err)
		os.Exit(1)
	}
}

func workloadNames() string {
	var s []string
	for _, w := range allWorkloads {
		s = append(s, w.Name)
	}
	return strings.Join(s, ",")
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func runAll(ctx context.Context, o options) (err error) {
	wls := allWorkloads
	if o.workloads != "" {
		wls = nil
		for _, n := range strings.Split(o.workloads, ",") {
			i := slices.IndexFunc(allWorkloads, func(w workload) bool { return w.Name == strings.TrimSpace(n) })
			if i < 0 {
				return fmt.Errorf("--workloads: unknown %q (want %s)", n, workloadNames())
			}
			wls = append(wls, allWorkloads[i])
		}
	}
	want := map[string]bool{}
	for _, s := range strings.Split(o.systems, ",") {
		switch s = strings.TrimSpace(s); s {
		case "nodedb", "etcd":
			want[s] = true
		default:
			return fmt.Errorf("--systems: unknown %q (want nodedb, etcd)", s)
		}
	}
	if o.etcdTarget != "leader" && o.etcdTarget != "all" {
		return fmt.Errorf("--etcd-target %q: want leader or all", o.etcdTarget)
	}
	if o.rounds < 1 {
		return errors.New("--rounds must be at least 1")
	}
	if o.keys < 1 || o.valueSize < 0 || o.duration <= 0 || o.warmup < 0 {
		return errors.New("--keys must be at least 1, --value-size, --duration and --warmup not negative")
	}

	bin, err := filepath.Abs(o.bin)
	if err != nil {
		return err
	}
	etcdBin, oursBin := filepath.Join(bin, "etcd"), filepath.Join(bin, "nodedb-cluster")
	if !exists(etcdBin) || !exists(oursBin) {
		logf("building the binaries into %s", bin)
		cmd := exec.CommandContext(ctx, "./build-etcd.sh", bin)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("build-etcd.sh: %w", err)
		}
	}

	root := o.root
	if root == "" {
		if root, err = os.MkdirTemp("", "bench-compare-"); err != nil {
			return err
		}
	} else if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	if root, err = filepath.Abs(root); err != nil {
		return err
	}
	var ps procs
	defer func() {
		logf("stopping every server")
		ps.stopAll()
		if o.keep {
			logf("kept data dirs and logs in %s", root)
		} else {
			os.RemoveAll(root)
		}
	}()

	rep := report{Conditions: conditions{
		Date:          time.Now().UTC().Format(time.RFC3339),
		CPUs:          runtime.NumCPU(),
		LoadAvgBefore: loadavg(),
		GoVersion:     runtime.Version(),
		Fsync:         "on (both systems' defaults)",
		OursPeerTLS:   true,
		OursClientTLS: o.clientTLS,
		OursReadLease: o.readLease,
		OursTransport: o.transport,
		OursArgs:      strings.Join(strings.Fields(o.nodedbArgs), " "),
		EtcdPeerTLS:   o.peerTLS,
		EtcdClientTLS: o.clientTLS,
		ValueSize:     o.valueSize,
		Keys:          o.keys,
		WarmupS:       o.warmup.Seconds(),
		Rounds:        o.rounds,
		DurationS:     o.duration.Seconds(),
		EtcdConns:     o.etcdConns,
		EtcdTarget:    o.etcdTarget,
		Root:          root,
	}}
	if p50, mean, err := diskSyncs(root, 200); err != nil {
		logf("%v", err)
	} else {
		rep.Conditions.DiskSyncP50Ms, rep.Conditions.DiskSyncMeanMs = ms(p50), ms(mean)
		logf("disk: 4 KiB append + fdatasync p50 %.3f ms, mean %.3f ms", ms(p50), ms(mean))
	}
	var loss *netloss.Table
	if o.peerLoss != 0 {
		if loss, err = netloss.Install(ctx, "nodedb_bench_loss", o.peerLoss, netloss.OnArrival); err != nil {
			return fmt.Errorf("--peer-loss: %w", err)
		}
		defer loss.Close()
		rep.Conditions.PeerLossPct = o.peerLoss
	}
	if want["etcd"] {
		rep.Conditions.EtcdVersion = version(etcdBin, "--version")
	}
	rep.Conditions.RepoCommit = repoCommitID()
	var certs *certFiles
	if o.peerTLS || o.clientTLS {
		if certs, err = makeCerts(filepath.Join(root, "certs")); err != nil {
			return err
		}
	}
	maxClients := 1
	for _, w := range wls {
		maxClients = max(maxClients, w.Clients)
	}

	var systems []system
	if want["nodedb"] {
		logf("starting a 3-node nodedb-cluster")
		ours, err := startOurs(ctx, &ps, oursOptions{bin: oursBin, root: filepath.Join(root, "nodedb"), certs: certs,
			clientTLS: o.clientTLS, readLease: o.readLease, transport: o.transport, nodes: 3, maxConns: maxClients + 8, loss: loss,
			extra: strings.Fields(o.nodedbArgs)})
		if err != nil {
			return err
		}
		defer ours.close()
		rep.Conditions.OursLeaders = fmt.Sprint(ours.status.leaders())
		logf("nodedb-cluster ready: %d groups, data-group leaders per node %v", len(ours.status.Groups), ours.status.leaders())
		systems = append(systems, ours)
	}
	if want["etcd"] {
		logf("starting a 3-member etcd")
		e, err := startEtcd(ctx, &ps, etcdOptions{bin: etcdBin, root: filepath.Join(root, "etcd"), certs: certs,
			peerTLS: o.peerTLS, clientTLS: o.clientTLS, conns: o.etcdConns, target: o.etcdTarget, members: 3, loss: loss})
		if err != nil {
			return err
		}
		defer e.close()
		logf("etcd ready, leader %s", e.leaderURL)
		systems = append(systems, e)
	}

	value := make([]byte, o.valueSize)
	for i := range value {
		value[i] = byte('a' + i%26)
	}
	keys := make([][]byte, o.keys)
	for i := range keys {
		keys[i] = []byte(fmt.Sprintf("bench/%d", i))
	}
	for _, s := range systems {
		logf("%s: writing %d keys", s.name(), len(keys))
		if err := preload(ctx, s, keys, value, o.opTimeout); err != nil {
			return fmt.Errorf("%s: preload: %w", s.name(), err)
		}
	}

	if o.precondition > 0 {
		// Steady state before measuring: write until each system's logs
		// have turned over a few times (our nodes then write their WAL
		// into reused files, as a node that has run for a while does; see
		// docs/comparison.md, "How long each fsync takes").
		for _, s := range systems {
			res := run(ctx, runConfig{Workers: 256, Duration: o.precondition, OpTimeout: o.opTimeout}, func(ctx context.Context, wk int) error {
				return s.put(ctx, wk, keys[rand.IntN(len(keys))], value)
			})
			logf("%s: preconditioned with %s of puts from 256 clients (%.0f ops/s, %d errors)", s.name(), o.precondition, res.OpsPerSec, res.Errors)
		}
	}
	rep.Conditions.PreconditionS = o.precondition.Seconds()

	rep.Conditions.IdleCPU = map[string]float64{}
	rep.Conditions.IdleS = o.idle.Seconds()
	if o.idle > 0 {
		time.Sleep(o.pause)
		c0 := make([]float64, len(systems))
		for i, s := range systems {
			c0[i] = totalCPU(s.servers())
		}
		t0 := time.Now()
		time.Sleep(o.idle)
		el := time.Since(t0).Seconds()
		for i, s := range systems {
			rep.Conditions.IdleCPU[s.name()] = (totalCPU(s.servers()) - c0[i]) / el
		}
		logf("idle server CPU (cores): %v", rep.Conditions.IdleCPU)
	}

	for round := 1; round <= o.rounds; round++ {
		for i, w := range wls {
			order := runOrder(systems, i, round)
			for _, s := range order {
				if err := ctx.Err(); err != nil {
					return err
				}
				time.Sleep(o.pause)
				r, err := runWorkload(ctx, s, w, keys, value, o)
				if err != nil {
					return err
				}
				if err := ctx.Err(); err != nil {
					return err // interrupted: the run is incomplete
				}
				r.Round = round
				logf("round %d %-8s %-6s ops/s=%.0f p50=%.2fms p99=%.2fms p99.9=%.2fms errors=%d server CPU %.2fs (%.0f µs/op) fsyncs/op=%.3f fsync mean %.3fms proposal p50 %.2fms",
					round, w.Name, s.name(), r.OpsPerSec, r.P50ms, r.P99ms, r.P999ms, r.Errors, r.ServerCPU, r.CPUusPerOp, r.FsyncsPerOp, r.FsyncMeanMs, r.ProposalP50ms)
				if r.FirstError != "" {
					logf("%-8s %-6s first error: %s", w.Name, s.name(), r.FirstError)
				}
				rep.Runs = append(rep.Runs, r)
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if loss != nil {
		d, p, err := loss.Counts(ctx)
		if err != nil {
			return err
		}
		rep.Conditions.PeerDropped, rep.Conditions.PeerPackets = d, d+p
		logf("peer packets dropped: %d of %d", d, d+p)
	}
	rep.Results = medians(rep.Runs)
	rep.Ratios, rep.Targets = ratiosAndTargets(rep.Results)
	if o.jsonFile != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(o.jsonFile, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	if o.asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	printReport(os.Stdout, rep)
	return nil
}

// repoCommit names the measured code when it is not the checkout's HEAD
// (for a binary built from an export: -ldflags "-X main.repoCommit=ID").
var repoCommit string

func repoCommitID() string {
	if repoCommit != "" {
		return repoCommit
	}
	return version("git", "rev-parse", "--short", "HEAD")
}

func exists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.TrimSpace(string(b))
}

func version(bin string, args ...string) string {
	out, _ := exec.Command(bin, args...).Output()
	first, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(first)
}

// preload writes every key once with 64 concurrent writers.
func preload(ctx context.Context, s system, keys [][]byte, value []byte, timeout time.Duration) error {
	const workers = 64
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			for i := w; i < len(keys); i += workers {
				octx, cancel := context.WithTimeout(ctx, timeout)
				err := s.put(octx, w, keys[i], value)
				cancel()
				if err != nil {
					errs <- fmt.Errorf("key %s: %w", keys[i], err)
					return
				}
			}
			errs <- nil
		}()
	}
	var err error
	for range workers {
		err = errors.Join(err, <-errs)
	}
	return err
}

func runWorkload(ctx context.Context, s system, w workload, keys [][]byte, value []byte, o options) (row, error) {
	var u0, s0, u1, s1, self0, self1 float64
	var t0, t1 serverHistograms
	var syncErr error
	srv := s.servers()
	timings := func(v *serverHistograms) {
		t, err := s.timings(ctx)
		*v = t
		syncErr = errors.Join(syncErr, err)
	}
	cfg := runConfig{
		Workers: w.Clients, Warmup: o.warmup, Duration: o.duration, OpTimeout: o.opTimeout,
		OnMeasure: func() { u0, s0 = totalUserSys(srv); self0 = selfCPU(); timings(&t0) },
		OnEnd:     func() { u1, s1 = totalUserSys(srv); self1 = selfCPU(); timings(&t1) },
	}
	rngs := make([]*rand.Rand, w.Clients)
	for i := range rngs {
		rngs[i] = rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))
	}
	res := run(ctx, cfg, func(ctx context.Context, wk int) error {
		rng := rngs[wk]
		k := keys[rng.IntN(len(keys))]
		if w.ReadRatio >= 1 || (w.ReadRatio > 0 && rng.Float64() < w.ReadRatio) {
			return s.get(ctx, wk, k)
		}
		return s.put(ctx, wk, k, value)
	})
	for _, p := range srv {
		if p.exited() {
			return row{}, fmt.Errorf("%s exited during %s: %v\n%s", p.name, w.Name, p.err, p.tail(20))
		}
	}
	r := row{
		Workload: w.Name, System: s.name(), Clients: w.Clients, ReadRatio: w.ReadRatio,
		Ops: res.Ops, Errors: res.Errors, Seconds: res.Seconds, OpsPerSec: res.OpsPerSec,
		P50ms: ms(res.P50), P99ms: ms(res.P99), P999ms: ms(res.P999), MaxMs: ms(res.Max),
		ServerCPU: (u1 + s1) - (u0 + s0), ServerSys: s1 - s0, BenchCPU: self1 - self0, FirstError: res.FirstError,
	}
	if res.Ops > 0 {
		r.CPUusPerOp = r.ServerCPU / float64(res.Ops) * 1e6
		syncs := t1.walSync.Sub(t0.walSync)
		r.FsyncsPerOp = float64(syncs.Count) / float64(res.Ops)
		r.FsyncMeanMs = syncs.Mean() * 1e3
		if props := t1.proposal.Sub(t0.proposal); props.Count > 0 {
			r.ProposalP50ms = props.Quantile(0.5) * 1e3
		}
	}
	if syncErr != nil {
		logf("%s %s: WAL fsync and proposal histograms: %v", w.Name, s.name(), syncErr)
		r.FsyncsPerOp, r.FsyncMeanMs, r.ProposalP50ms = -1, -1, 0
	}
	return r, nil
}

// opsCell is a row's ops/s, with the range over the rounds when there were
// several.
func opsCell(r row) string {
	ops := fmt.Sprintf("%.0f", r.OpsPerSec)
	if r.Rounds > 1 {
		ops += fmt.Sprintf(" [%.0f-%.0f]", r.OpsMin, r.OpsMax)
	}
	return ops
}

// runOrder is the order in which the systems run workload i of a round:
// alternated, so that neither always goes first.
func runOrder[S any](systems []S, i, round int) []S {
	order := slices.Clone(systems)
	if (i+round)%2 == 0 {
		slices.Reverse(order)
	}
	return order
}

// findRow returns the row of workload wl and system sys, or nil.
func findRow(rows []row, wl, sys string) *row {
	for i := range rows {
		if rows[i].Workload == wl && rows[i].System == sys {
			return &rows[i]
		}
	}
	return nil
}

// ratioOf is a/b, NaN when b is 0 (a ratio that cannot be measured).
func ratioOf(a, b float64) float64 {
	if b == 0 {
		return math.NaN()
	}
	return a / b
}

func ratiosAndTargets(rows []row) ([]ratio, []target) {
	find := func(wl, sys string) *row { return findRow(rows, wl, sys) }
	div := ratioOf
	var rs []ratio
	var ts []target
	for _, w := range allWorkloads {
		a, b := find(w.Name, "nodedb"), find(w.Name, "etcd")
		if a == nil || b == nil {
			continue
		}
		rs = append(rs, ratio{Workload: w.Name, Throughput: div(a.OpsPerSec, b.OpsPerSec), P50: div(a.P50ms, b.P50ms),
			P99: div(a.P99ms, b.P99ms), CPUPerOp: div(a.CPUusPerOp, b.CPUusPerOp)})
		switch w.Name {
		case "put256":
			ts = append(ts, target{"put 256 B, 256 clients: ours >= 3x etcd ops/s, our p99 <= etcd's",
				fmt.Sprintf("%.2fx ops/s, p99 %.1f vs %.1f ms", div(a.OpsPerSec, b.OpsPerSec), a.P99ms, b.P99ms),
				a.OpsPerSec >= 3*b.OpsPerSec && a.P99ms <= b.P99ms})
		case "put1":
			ts = append(ts, target{"put 256 B, 1 client: our p50 <= etcd's",
				fmt.Sprintf("p50 %.2f vs %.2f ms", a.P50ms, b.P50ms), a.P50ms <= b.P50ms})
		case "get256":
			ts = append(ts, target{"linearizable get, 256 clients: ours >= 2x etcd ops/s",
				fmt.Sprintf("%.2fx ops/s", div(a.OpsPerSec, b.OpsPerSec)), a.OpsPerSec >= 2*b.OpsPerSec})
		}
		if w.ReadRatio == 0 {
			ts = append(ts, target{fmt.Sprintf("server CPU per 1,000 writes (%s): ours <= etcd's", w.Name),
				fmt.Sprintf("%.0f vs %.0f ms", a.CPUusPerOp, b.CPUusPerOp), a.CPUusPerOp <= b.CPUusPerOp})
		}
	}
	return rs, ts
}

func printReport(out io.Writer, rep report) {
	c := rep.Conditions
	tlsWord := func(b bool) string {
		if b {
			return "TLS"
		}
		return "plain"
	}
	fmt.Fprintf(out, "%s, %d CPUs, load before %s, %s, repo at %s, %s\n", c.Date, c.CPUs, c.LoadAvgBefore, c.GoVersion, c.RepoCommit, c.EtcdVersion)
	var parts []string
	if c.OursLeaders != "" {
		lease := ""
		if c.OursReadLease {
			lease = "; linearizable reads from leader leases (--read-lease)"
		}
		if c.OursArgs != "" {
			lease += "; started with " + c.OursArgs
		}
		peerTransport := "QUIC"
		if c.OursTransport == "tcp" {
			peerTransport = "TCP"
		}
		parts = append(parts, fmt.Sprintf("3 nodedb-cluster nodes (peers mutual TLS 1.3 over %s, clients %s over HTTP; data-group leaders per node %s%s)",
			peerTransport, tlsWord(c.OursClientTLS), c.OursLeaders, lease))
	}
	if c.EtcdVersion != "" {
		parts = append(parts, fmt.Sprintf("3 etcd members (peers %s, clients %s over gRPC; clients -> %s, %d gRPC connection(s))",
			tlsWord(c.EtcdPeerTLS), tlsWord(c.EtcdClientTLS), c.EtcdTarget, c.EtcdConns))
	}
	fmt.Fprintf(out, "%s, all on 127.0.0.1 and one disk, fsync on\n", strings.Join(parts, " and "))
	if c.DiskSyncP50Ms > 0 {
		fmt.Fprintf(out, "the disk alone, before the servers start: 4 KiB append + fdatasync p50 %.3f ms, mean %.3f ms (200 syncs)\n", c.DiskSyncP50Ms, c.DiskSyncMeanMs)
	}
	if c.PeerLossPct > 0 {
		fmt.Fprintf(out, "%v%% of the packets between members dropped at random, both systems, both directions (nftables): %d of %d over the run\n",
			c.PeerLossPct, c.PeerDropped, c.PeerPackets)
	}
	if len(c.IdleCPU) > 0 {
		var parts []string
		for _, n := range []string{"nodedb", "etcd"} {
			if v, ok := c.IdleCPU[n]; ok {
				parts = append(parts, fmt.Sprintf("%s %.3f cores", n, v))
			}
		}
		fmt.Fprintf(out, "servers' CPU with no load (%.0fs, both clusters up): %s\n", c.IdleS, strings.Join(parts, ", "))
	}
	fmt.Fprintf(out, "%d-byte values over %d keys (all written first), closed loop, %.0fs warm-up + %.0fs measured per run, load generator in this process\n",
		c.ValueSize, c.Keys, c.WarmupS, c.DurationS)
	if c.PreconditionS > 0 {
		fmt.Fprintf(out, "each system preconditioned with %.0fs of puts from 256 clients before the first run\n", c.PreconditionS)
	}
	if c.Rounds > 1 {
		fmt.Fprintf(out, "medians of %d interleaved rounds (ops/s range in brackets; errors summed)\n", c.Rounds)
	}
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\tsystem\tclients\tops/s\tp50 ms\tp99 ms\tp99.9 ms\terrors\tserver CPU s (sys)\tCPU µs/op\tfsyncs/op\tfsync ms\traft p50 ms\tbench CPU s\t")
	for _, r := range rep.Results {
		ops := opsCell(r)
		raft := "-"
		if r.ProposalP50ms > 0 {
			raft = fmt.Sprintf("%.2f", r.ProposalP50ms)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%.2f\t%.2f\t%.2f\t%d\t%.2f (%.2f)\t%.0f\t%.3f\t%.3f\t%s\t%.2f\t\n",
			r.Workload, r.System, r.Clients, ops, r.P50ms, r.P99ms, r.P999ms, r.Errors, r.ServerCPU, r.ServerSys, r.CPUusPerOp, r.FsyncsPerOp, r.FsyncMeanMs, raft, r.BenchCPU)
	}
	tw.Flush()
	printTail(out, "etcd", "workload", rep.Ratios, rep.Targets, rep.Results, 66, 38)
}

// printTail prints a report's ratios, its targets and the first error of
// each row that had one; the columns are targetW and valueW wide.
func printTail(out io.Writer, other, firstCol string, ratios []ratio, targets []target, results []row, targetW, valueW int) {
	if len(ratios) > 0 {
		fmt.Fprintf(out, "\nours/%s\n", other)
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "%s\tops/s\tp50\tp99\tCPU/op\t\n", firstCol)
		for _, r := range ratios {
			fmt.Fprintf(tw, "%s\t%.2fx\t%.2fx\t%.2fx\t%.2fx\t\n", r.Workload, r.Throughput, r.P50, r.P99, r.CPUPerOp)
		}
		tw.Flush()
	}
	if len(targets) > 0 {
		fmt.Fprintln(out, "\ntargets (issue 6)")
		for _, t := range targets {
			v := "does not hold"
			if t.Holds {
				v = "holds"
			}
			fmt.Fprintf(out, "  %-*s %-*s %s\n", targetW, t.Target, valueW, t.Value, v)
		}
	}
	for _, r := range results {
		if r.FirstError != "" {
			fmt.Fprintf(out, "\n%s %s: first error: %s\n", r.Workload, r.System, r.FirstError)
		}
	}
}
