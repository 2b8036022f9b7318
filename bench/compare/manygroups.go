package main

// The many-group mode (--manygroups): nodedb-cluster's library API
// (package cluster) against dragonboat v3.3.8, both in this process, on the
// same proposal workload: G Raft groups of 3 replicas over 3 nodes on
// 127.0.0.1, P closed-loop proposers that each propose to the groups in
// turn, synchronously, through the group's leader.

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// groupSystem is a set of Raft groups under test, running in this process.
type groupSystem interface {
	name() string
	// propose proposes cmd to group g (0-based) through its leader and
	// waits until it is applied there.
	propose(ctx context.Context, g int, cmd []byte) error
	// leaders returns how many groups each node leads.
	leaders() []int
	// terms returns the sum over the groups of the highest Raft term seen:
	// its growth counts elections.
	terms() uint64
	// close stops every node and waits for their goroutines.
	close() error
}

// groupOptions shapes one system's start.
type groupOptions struct {
	dir    string
	groups int
	tick   time.Duration // Raft tick: dragonboat's RTTMillisecond
	certs  *certFiles    // dragonboat's mutual TLS; nil: plain TCP
	// oursWorkers is each of our nodes' Raft worker pool (0: the default).
	oursWorkers int
	// snapshotEntries is dragonboat's Config.SnapshotEntries (0: never).
	snapshotEntries uint64
	// dragonboatShards, when non-zero, sets dragonboat's execution shards
	// (step workers) and LogDB shards (Pebble instances, each with its own
	// WAL) per NodeHost; its default is 16 of each.
	dragonboatShards uint64
}

// shape is one many-group workload: groups and concurrent proposers.
type shape struct {
	Groups, Proposers int
}

func (s shape) name() string { return fmt.Sprintf("%dg/%dp", s.Groups, s.Proposers) }

func parseShapes(s string) ([]shape, error) {
	var out []shape
	for _, f := range strings.Split(s, ",") {
		g, p, ok := strings.Cut(strings.TrimSpace(f), "x")
		gn, err1 := strconv.Atoi(g)
		pn, err2 := strconv.Atoi(p)
		if !ok || err1 != nil || err2 != nil || gn < 1 || pn < 1 {
			return nil, fmt.Errorf("--shapes: %q is not GROUPSxPROPOSERS", f)
		}
		out = append(out, shape{gn, pn})
	}
	return out, nil
}

// encodeCmd is the proposal both systems replicate: a key and a value, the
// key's length first.
func encodeCmd(key, value []byte) []byte {
	b := make([]byte, 0, 2+len(key)+len(value))
	b = binary.BigEndian.AppendUint16(b, uint16(len(key)))
	return append(append(b, key...), value...)
}

func decodeCmd(b []byte) (key, value []byte, ok bool) {
	if len(b) < 2 {
		return nil, nil, false
	}
	n := int(binary.BigEndian.Uint16(b))
	if len(b) < 2+n {
		return nil, nil, false
	}
	return b[2 : 2+n], b[2+n:], true
}

type mgConditions struct {
	Date          string  `json:"date"`
	CPUs          int     `json:"cpus"`
	GOMAXPROCS    int     `json:"gomaxprocs"`
	LoadAvgBefore string  `json:"loadavg_before"`
	GoVersion     string  `json:"go_version"`
	Dragonboat    string  `json:"dragonboat_version"`
	RepoCommit    string  `json:"repo_commit"`
	Fsync         string  `json:"fsync"`
	OursTLS       string  `json:"ours_tls"`
	DragonboatTLS string  `json:"dragonboat_tls"`
	TickMs        float64 `json:"tick_ms"`
	ElectionTicks int     `json:"election_ticks"`
	HeartbeatTick int     `json:"heartbeat_ticks"`
	OursWorkers   int     `json:"ours_workers"`
	SnapshotEvery uint64  `json:"dragonboat_snapshot_entries"`
	DBShards      uint64  `json:"dragonboat_shards,omitempty"`
	ValueSize     int     `json:"value_size"`
	CmdSize       int     `json:"cmd_size"`
	Keys          int     `json:"keys"`
	WarmupS       float64 `json:"warmup_s"`
	DurationS     float64 `json:"duration_s"`
	Rounds        int     `json:"rounds"`
	Shapes        string  `json:"shapes"`
	IdleS         float64 `json:"idle_s"`
	Root          string  `json:"root"`
	// Leaders has, per run, how many groups each node led.
	Leaders map[string][]int `json:"leaders_per_node"`
}

type mgReport struct {
	Conditions mgConditions `json:"conditions"`
	// Results has one row per shape and system (medians over the rounds);
	// Runs has every round's rows. ServerCPU is this process's CPU (the
	// three nodes and the proposers) during the measured window.
	Results []row    `json:"results"`
	Runs    []row    `json:"runs"`
	Ratios  []ratio  `json:"ratios"`
	Targets []target `json:"targets"`
}

const (
	dragonboatVersion = "github.com/lni/dragonboat/v3 v3.3.8"
	mgElectionTicks   = 10
	mgHeartbeatTicks  = 1
)

// mgOptions is the many-group mode's part of the command line.
type mgOptions struct {
	shapes          string
	systems         string
	tick            time.Duration
	dragonboatTLS   bool
	oursWorkers     int
	snapshotEntries uint64
	shards          uint64
}

// runManyGroups runs every shape on each system, one system at a time: each
// run starts the system afresh (the data dirs of the last run removed),
// waits for a leader per group with leaderships spread over the three nodes,
// runs the closed loop and stops the system again.
func runManyGroups(ctx context.Context, o options, m mgOptions, out io.Writer) (*mgReport, error) {
	shapes, err := parseShapes(m.shapes)
	if err != nil {
		return nil, err
	}
	var systems []string
	for _, s := range strings.Split(m.systems, ",") {
		switch s = strings.TrimSpace(s); s {
		case "nodedb", "dragonboat":
			systems = append(systems, s)
		default:
			return nil, fmt.Errorf("--systems: unknown %q (want nodedb, dragonboat)", s)
		}
	}
	if o.rounds < 1 || o.keys < 1 || o.valueSize < 0 || o.duration <= 0 || o.warmup < 0 || m.tick < time.Millisecond {
		return nil, errors.New("--rounds and --keys must be at least 1, --value-size and --warmup not negative, --duration positive, --raft-tick at least 1ms")
	}
	root := o.root
	if root == "" {
		if root, err = os.MkdirTemp("", "bench-manygroups-"); err != nil {
			return nil, err
		}
	} else if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	if root, err = filepath.Abs(root); err != nil {
		return nil, err
	}
	defer func() {
		if o.keep {
			logf("kept data dirs in %s", root)
		} else {
			os.RemoveAll(root)
		}
	}()
	var certs *certFiles
	if m.dragonboatTLS {
		if certs, err = makeCerts(filepath.Join(root, "certs")); err != nil {
			return nil, err
		}
	}
	value := make([]byte, o.valueSize)
	for i := range value {
		value[i] = byte('a' + i%26)
	}
	cmds := make([][]byte, o.keys)
	for i := range cmds {
		cmds[i] = encodeCmd([]byte(fmt.Sprintf("bench/%06d", i)), value)
	}
	dbTLS := "plain TCP"
	if m.dragonboatTLS {
		dbTLS = "mutual TLS over TCP (NodeHostConfig.MutualTLS)"
	}
	rep := &mgReport{Conditions: mgConditions{
		Date:          time.Now().UTC().Format(time.RFC3339),
		CPUs:          runtime.NumCPU(),
		GOMAXPROCS:    runtime.GOMAXPROCS(0),
		LoadAvgBefore: loadavg(),
		GoVersion:     runtime.Version(),
		Dragonboat:    dragonboatVersion,
		RepoCommit:    repoCommitID(),
		Fsync:         "on (both systems' defaults)",
		OursTLS:       "mutual TLS 1.3 over QUIC",
		DragonboatTLS: dbTLS,
		TickMs:        float64(m.tick) / float64(time.Millisecond),
		ElectionTicks: mgElectionTicks,
		HeartbeatTick: mgHeartbeatTicks,
		OursWorkers:   m.oursWorkers,
		SnapshotEvery: m.snapshotEntries,
		DBShards:      m.shards,
		ValueSize:     o.valueSize,
		CmdSize:       len(cmds[0]),
		Keys:          o.keys,
		WarmupS:       o.warmup.Seconds(),
		DurationS:     o.duration.Seconds(),
		Rounds:        o.rounds,
		Shapes:        m.shapes,
		IdleS:         o.idle.Seconds(),
		Root:          root,
		Leaders:       map[string][]int{},
	}}
	run := 0
	for round := 1; round <= o.rounds; round++ {
		for i, sh := range shapes {
			order := runOrder(systems, i, round)
			for _, sys := range order {
				if err := ctx.Err(); err != nil {
					return nil, err
				}
				run++
				dir := filepath.Join(root, fmt.Sprintf("run%d-%s", run, sys))
				r, leaders, err := runShape(ctx, sys, sh, groupOptions{dir: dir, groups: sh.Groups, tick: m.tick,
					certs: certs, oursWorkers: m.oursWorkers, snapshotEntries: m.snapshotEntries, dragonboatShards: m.shards}, cmds, o)
				os.RemoveAll(dir)
				if err != nil {
					return nil, fmt.Errorf("%s %s: %w", sh.name(), sys, err)
				}
				if err := ctx.Err(); err != nil {
					return nil, err // interrupted: the run is incomplete
				}
				r.Round = round
				rep.Conditions.Leaders[fmt.Sprintf("%d %s %s", round, sh.name(), sys)] = leaders
				logf("round %d %-8s %-10s ops/s=%.0f p50=%.2fms p99=%.2fms p99.9=%.2fms errors=%d process CPU %.2fs (%.0f µs/op) leaders %v, new terms %d, rest of the machine %.2f cores",
					round, sh.name(), sys, r.OpsPerSec, r.P50ms, r.P99ms, r.P999ms, r.Errors, r.ServerCPU, r.CPUusPerOp, leaders, r.NewTerms, r.OtherCores)
				if r.FirstError != "" {
					logf("%-8s %-10s first error: %s", sh.name(), sys, r.FirstError)
				}
				rep.Runs = append(rep.Runs, r)
			}
		}
	}
	rep.Results = medians(rep.Runs)
	shapeIndex := func(n string) int { return slices.IndexFunc(shapes, func(s shape) bool { return s.name() == n }) }
	slices.SortStableFunc(rep.Results, func(a, b row) int {
		if d := shapeIndex(a.Workload) - shapeIndex(b.Workload); d != 0 {
			return d
		}
		return strings.Compare(b.System, a.System) // nodedb, then dragonboat
	})
	rep.Ratios, rep.Targets = mgRatiosAndTargets(rep.Results, shapes)
	if o.jsonFile != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(o.jsonFile, append(b, '\n'), 0o644); err != nil {
			return nil, err
		}
	}
	if out != nil {
		if o.asJSON {
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			return rep, enc.Encode(rep)
		}
		printMGReport(out, rep)
	}
	return rep, nil
}

// runShape starts one system with sh.Groups groups, runs sh.Proposers
// proposers against it and stops it.
func runShape(ctx context.Context, sys string, sh shape, g groupOptions, cmds [][]byte, o options) (r row, leaders []int, err error) {
	if err := os.MkdirAll(g.dir, 0o755); err != nil {
		return r, nil, err
	}
	logf("%s: starting 3 nodes with %d groups", sys, sh.Groups)
	t0 := time.Now()
	var s groupSystem
	switch sys {
	case "nodedb":
		s, err = startOursGroups(ctx, g)
	case "dragonboat":
		s, err = startDragonboat(ctx, g)
	}
	if err != nil {
		return r, nil, err
	}
	defer func() {
		if cerr := s.close(); cerr != nil && err == nil {
			err = fmt.Errorf("stop: %w", cerr)
		}
	}()
	leaders = s.leaders()
	logf("%s: ready in %.1fs, groups led per node %v", sys, time.Since(t0).Seconds(), leaders)
	runtime.GC()
	time.Sleep(o.pause)
	if o.idle > 0 {
		// The cost of keeping the groups alive (ticks, heartbeats) with no load.
		iu, is := selfUserSys()
		it := time.Now()
		time.Sleep(o.idle)
		iu1, is1 := selfUserSys()
		r.IdleCores = (iu1 + is1 - iu - is) / time.Since(it).Seconds()
	}

	var u0, s0, u1, s1 float64
	var t0terms, t1terms uint64
	var m0, m1 float64
	cfg := runConfig{
		Workers: sh.Proposers, Warmup: o.warmup, Duration: o.duration, OpTimeout: o.opTimeout,
		OnMeasure: func() { u0, s0 = selfUserSys(); m0 = machineBusy(); t0terms = s.terms() },
		OnEnd:     func() { u1, s1 = selfUserSys(); m1 = machineBusy(); t1terms = s.terms() },
	}
	type worker struct {
		rng  *rand.Rand
		next int // the next group
	}
	ws := make([]worker, sh.Proposers)
	for i := range ws {
		// Proposer i starts at group i and then takes the groups in turn,
		// so that every group gets the same share at any moment.
		ws[i] = worker{rng: rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano()))), next: i % sh.Groups}
	}
	res := run(ctx, cfg, func(ctx context.Context, w int) error {
		wk := &ws[w]
		grp := wk.next
		wk.next = (wk.next + 1) % sh.Groups
		return s.propose(ctx, grp, cmds[wk.rng.IntN(len(cmds))])
	})
	idle := r.IdleCores
	r = row{
		IdleCores: idle, Workload: sh.name(), System: sys, Clients: sh.Proposers,
		Ops: res.Ops, Errors: res.Errors, Seconds: res.Seconds, OpsPerSec: res.OpsPerSec,
		P50ms: ms(res.P50), P99ms: ms(res.P99), P999ms: ms(res.P999), MaxMs: ms(res.Max),
		ServerCPU: (u1 + s1) - (u0 + s0), ServerSys: s1 - s0, FirstError: res.FirstError,
		NewTerms: int(t1terms - t0terms),
	}
	if res.Ops > 0 {
		r.CPUusPerOp = r.ServerCPU / float64(res.Ops) * 1e6
	}
	if res.Seconds > 0 && m1 > 0 {
		r.OtherCores = max(0, (m1-m0)-r.ServerCPU) / res.Seconds
	}
	logf("%s: stopping", sys)
	return r, leaders, nil
}

// selfUserSys is this process's user and system CPU seconds.
func selfUserSys() (user, sys float64) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime), tv(ru.Stime)
}

// spreadTarget is the node index (0-based, of 3) that should lead group g
// (0-based): round robin, so that leaderships differ by at most one.
func spreadTarget(g, nodes int) int { return g % nodes }

func mgRatiosAndTargets(rows []row, shapes []shape) ([]ratio, []target) {
	find := func(wl, sys string) *row { return findRow(rows, wl, sys) }
	div := ratioOf
	var rs []ratio
	var ts []target
	for _, sh := range shapes {
		a, b := find(sh.name(), "nodedb"), find(sh.name(), "dragonboat")
		if a == nil || b == nil {
			continue
		}
		rs = append(rs, ratio{Workload: sh.name(), Throughput: div(a.OpsPerSec, b.OpsPerSec), P50: div(a.P50ms, b.P50ms),
			P99: div(a.P99ms, b.P99ms), CPUPerOp: div(a.CPUusPerOp, b.CPUusPerOp)})
		if sh.Groups > 1 {
			// Failed proposals on our side void the comparison.
			v := fmt.Sprintf("%.0f vs %.0f/s (%.2fx)", a.OpsPerSec, b.OpsPerSec, div(a.OpsPerSec, b.OpsPerSec))
			if a.Errors+b.Errors > 0 {
				v += fmt.Sprintf(", errors %d vs %d", a.Errors, b.Errors)
			}
			ts = append(ts, target{fmt.Sprintf("many-group proposals (%d groups, %d proposers): ours >= dragonboat's ops/s, no errors", sh.Groups, sh.Proposers),
				v, a.OpsPerSec >= b.OpsPerSec && a.Errors == 0})
		}
	}
	return rs, ts
}

func printMGReport(out io.Writer, rep *mgReport) {
	c := rep.Conditions
	fmt.Fprintf(out, "%s, %d CPUs (GOMAXPROCS %d), load before %s, %s, repo at %s, %s\n",
		c.Date, c.CPUs, c.GOMAXPROCS, c.LoadAvgBefore, c.GoVersion, c.RepoCommit, c.Dragonboat)
	fmt.Fprintf(out, "in this process, one system at a time: 3 nodes on 127.0.0.1, every group on all 3, leaderships spread round robin\n")
	fmt.Fprintf(out, "  nodedb:     package cluster, %s, Pebble per node, fsync on, a state machine that sets the key in its Pebble batch, raft workers %s\n",
		c.OursTLS, workersWord(c.OursWorkers))
	shards := "default 16 execution shards and 16 LogDB shards (Pebble instances)"
	if c.DBShards > 0 {
		shards = fmt.Sprintf("%d execution shard(s) and %d LogDB shard(s) (Pebble instances), not the default 16", c.DBShards, c.DBShards)
	}
	fmt.Fprintf(out, "  dragonboat: 3 NodeHosts, %s, %s per NodeHost, fsync on, in-memory map state machine, snapshots %s\n",
		c.DragonboatTLS, shards, snapWord(c.SnapshotEvery))
	fmt.Fprintf(out, "Raft tick %gms (dragonboat RTTMillisecond), election %d ticks, heartbeat %d tick, CheckQuorum on\n",
		c.TickMs, c.ElectionTicks, c.HeartbeatTick)
	fmt.Fprintf(out, "%d-byte proposals (%d-byte value, key of %d keys), synchronous (SyncPropose / Node.Propose) on the leader, each proposer takes the groups in turn,\n",
		c.CmdSize, c.ValueSize, c.Keys)
	fmt.Fprintf(out, "closed loop, %gs warm-up + %gs measured per run, each run on a freshly started system; CPU is the whole process's (nodes and proposers);\n",
		c.WarmupS, c.DurationS)
	fmt.Fprintf(out, "idle cores: the process's CPU use with the groups up and no load, over %gs before each run; new terms: elections during the measured window;\nother cores: CPU that the rest of the machine used during the measured window (interference)\n", c.IdleS)
	if c.Rounds > 1 {
		fmt.Fprintf(out, "medians of %d interleaved rounds (ops/s range in brackets; errors summed)\n", c.Rounds)
	}
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "groups/proposers\tsystem\tproposers\tops/s\tp50 ms\tp99 ms\tp99.9 ms\terrors\tnew terms\tprocess CPU s (sys)\tCPU µs/op\tidle cores\tother cores\t")
	for _, r := range rep.Results {
		ops := opsCell(r)
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%.2f\t%.2f\t%.2f\t%d\t%d\t%.2f (%.2f)\t%.0f\t%.3f\t%.2f\t\n",
			r.Workload, r.System, r.Clients, ops, r.P50ms, r.P99ms, r.P999ms, r.Errors, r.NewTerms, r.ServerCPU, r.ServerSys, r.CPUusPerOp, r.IdleCores, r.OtherCores)
	}
	tw.Flush()
	printTail(out, "dragonboat", "groups/proposers", rep.Ratios, rep.Targets, rep.Results, 86, 28)
}

func workersWord(n int) string {
	if n <= 0 {
		return "GOMAXPROCS per node (default)"
	}
	return fmt.Sprintf("%d per node", n)
}

func snapWord(n uint64) string {
	if n == 0 {
		return "off (SnapshotEntries 0, the default)"
	}
	return fmt.Sprintf("every %d entries", n)
}
