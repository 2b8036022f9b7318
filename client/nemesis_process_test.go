package client

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/apitest"
	"github.com/nodedb/nodedb-cluster/internal/netloss"
	"github.com/nodedb/nodedb-cluster/internal/server"
)

var (
	procNemesis     = flag.Duration("nodedb.proc-nemesis", 0, "run the process nemesis tests (TestLinearizableUnderProcess*) this long per case (0: skip them)")
	procNemesisSeed = flag.Uint64("nodedb.proc-nemesis-seed", 0, "seed of the process nemesis (0: from the clock, logged)")
)

// runProcWorkload runs workers goroutines until the time until, worker w
// using clients[w%len(clients)], each putting, compare-and-setting and
// reading a dozen keys (spread over the groups), and records every
// operation in h. A write whose outcome the client never learned (a
// timeout, a node lost mid-request) is recorded as unknown; a failed read
// has no effect and is not recorded.
func runProcWorkload(ctx context.Context, clients []*Client, h *history, workers int, until time.Time) {
	keys := []string{"p0", "p1", "p2", "{p}3", "p4", "p5", "p6", "p7", "p8", "p9", "p10", "{p}11"}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			cl := clients[w%len(clients)]
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			seen := map[string]uint64{}
			for n := 0; time.Now().Before(until) && ctx.Err() == nil; n++ {
				key := keys[rng.IntN(len(keys))]
				octx, ocancel := context.WithTimeout(ctx, 4*time.Second)
				in := kvIn{key: key, value: fmt.Sprintf("w%d-%d", w, n)}
				var out kvOut
				call := h.now()
				switch p := rng.IntN(100); {
				case p < 40:
					in.kind, in.value = opGet, ""
					g, err := cl.Get(octx, []byte(key))
					switch {
					case err == nil:
						out = kvOut{found: true, value: string(g.Value), version: g.Version}
						seen[key] = g.Version
					case errors.Is(err, ErrNotFound):
						seen[key] = 0
					default:
						ocancel()
						continue // a failed read has no effect
					}
				case p < 75:
					in.kind = opPut
					wr, err := cl.Put(octx, []byte(key), []byte(in.value))
					if err != nil {
						out.unknown = true
					} else {
						out.version, seen[key] = wr.Version, wr.Version
					}
				default:
					in.kind, in.ifVersion = opCAS, seen[key]
					wr, err := cl.Put(octx, []byte(key), []byte(in.value), WithIfVersion(in.ifVersion))
					cur, conflict := CurrentVersion(err)
					switch {
					case err == nil:
						out, seen[key] = kvOut{ok: true, version: wr.Version}, wr.Version
					case errors.Is(err, ErrConflict) && conflict:
						out, seen[key] = kvOut{version: cur}, cur
					default:
						out.unknown = true
					}
				}
				ret := h.now()
				ocancel()
				h.add(w, in, call, out, ret)
			}
		})
	}
	wg.Wait()
}

// TestLinearizableUnderProcessNemesis is the extended tier's soak over the
// real stack: node processes of the built binary (mutual TLS between them,
// Pebble on disk), six Go clients, and a nemesis that for
// -nodedb.proc-nemesis keeps doing one of these: SIGKILL a node and restart
// it after a pause, or at once (a crash loop), or the node leading the most
// groups; SIGSTOP a node for up to 3 s and SIGCONT it (a stalled machine, a
// long GC pause: the node wakes up believing it still leads), or the
// busiest leader for longer than an election, or two nodes at once (no
// quorum for a while); SIGKILL every node at once and restart them all
// (every process crashed; the page cache survives a SIGKILL, so this is not
// a power cut); stall a node's Raft log commits for a second, three times,
// or once for 4 s, past the disk stall limit (a slow disk, through a
// failpoint armed on its admin socket). Over QUIC with quorum reads, over QUIC with leader leases
// (`--read-lease`, where a stalled leader is the classic way to serve a
// stale read), over TCP (`--transport tcp`), and on four nodes with replica
// moves requested throughout. Then every history must be linearizable
// (porcupine), every move must have completed or aborted (none
// quarantined), and every group's replicas must converge to the same state
// hash.
func TestLinearizableUnderProcessNemesis(t *testing.T) {
	if *procNemesis <= 0 {
		t.Skip("extended tier: run with -nodedb.proc-nemesis=60s (README, \"Extended tests\")")
	}
	seed := *procNemesisSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	for _, c := range []procNemesisCase{
		{name: "quorum-reads", nodes: 3},
		{name: "read-lease", nodes: 3, extra: []string{"--read-lease"}},
		{name: "tcp", nodes: 3, extra: []string{"--transport", "tcp"}},
		{name: "moves", nodes: 4, moves: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Logf("nemesis seed %d (-nodedb.proc-nemesis-seed)", seed)
			runProcNemesis(t, *procNemesis, seed, c)
		})
	}
}

// procNemesisCase is one cluster shape the process nemesis runs against.
type procNemesisCase struct {
	name  string
	nodes int      // 3, or more for moves (RF 3)
	extra []string // flags for every node's start
	// moves: before every disturbance, ask for a replica move half the
	// time (a random voter of a random data group to the node without
	// one), so that moves run through kills, stalls and crashes of all.
	moves bool
	// partitions adds a disturbance: every packet to and from one node's
	// peer port dropped for a while (nftables, in a network namespace of
	// the test's own), while its client API stays reachable: a leader cut
	// off from its followers but not from its clients.
	partitions bool
}

func runProcNemesis(t *testing.T, dur time.Duration, seed uint64, c procNemesisCase) {
	ctx, pc := startProcClusterWith(t, c.nodes, dur+4*time.Minute, c.extra...)
	// A client per worker, each with its own routing cache, as separate
	// application processes would have: a worker whose cache still names a
	// stalled leader sends it a read that starts after another worker's
	// write through the new leader finished. With one shared cache, the
	// write's redirect would have updated it first.
	clients := make([]*Client, 6)
	for i := range clients {
		clients[i] = pc.newClient(ctx, t)
	}
	h := &history{start: time.Now()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runProcWorkload(ctx, clients, h, len(clients), time.Now().Add(dur))
	}()

	rng := rand.New(rand.NewPCG(seed, 7))
	sleep := func(lo, hi time.Duration) {
		time.Sleep(lo + time.Duration(rng.Int64N(int64(hi-lo))))
	}
	var actions []string
	for end := time.Now().Add(dur - 2*time.Second); time.Now().Before(end); {
		sleep(500*time.Millisecond, 2*time.Second)
		if c.moves && rng.IntN(2) == 0 {
			actions = append(actions, fmt.Sprintf("%s: %s", time.Duration(h.now()).Round(time.Millisecond), requestMove(ctx, pc, rng)))
		}
		victim := rng.IntN(len(pc.procs))
		p := pc.procs[victim]
		var act string
		k := rng.IntN(8)
		if c.partitions && rng.IntN(2) == 0 {
			k = 8 // half the disturbances, where cuts are the point
		}
		switch k {
		case 0:
			act = "kill, restart after a pause"
			p.kill()
			sleep(200*time.Millisecond, 3*time.Second)
			pc.restart(t, victim)
		case 1:
			act = "kill, restart at once"
			p.kill()
			pc.restart(t, victim)
		case 2:
			victim, _ = pc.mostLeader(ctx)
			act = "kill the node leading the most groups, restart after a pause"
			pc.procs[victim].kill()
			sleep(500*time.Millisecond, 2*time.Second)
			pc.restart(t, victim)
		case 3:
			other := (victim + 1 + rng.IntN(len(pc.procs)-1)) % len(pc.procs)
			act = fmt.Sprintf("and node %d: stop both (no quorum), continue after a pause", pc.nodeIDs[other])
			q := pc.procs[other]
			p.cmd.Process.Signal(syscall.SIGSTOP)
			q.cmd.Process.Signal(syscall.SIGSTOP)
			sleep(100*time.Millisecond, 2*time.Second)
			q.cmd.Process.Signal(syscall.SIGCONT)
			p.cmd.Process.Signal(syscall.SIGCONT)
		case 4:
			// Longer than an election, shorter than a client's request
			// timeout: the requests queued at the stopped leader are still
			// awaited when it resumes, while another leader took writes.
			victim, _ = pc.mostLeader(ctx)
			act = "stop the node leading the most groups for 0.3-1 s"
			q := pc.procs[victim]
			q.cmd.Process.Signal(syscall.SIGSTOP)
			sleep(300*time.Millisecond, time.Second)
			q.cmd.Process.Signal(syscall.SIGCONT)
		case 5:
			act = "and every other node: kill all, restart all"
			for _, q := range pc.procs {
				q.kill()
			}
			for i := range pc.procs {
				pc.restart(t, i)
			}
		case 7:
			// A disk that stalls (a cloud volume's hiccup): the node's
			// Raft log commits block, its groups' leaderships must move
			// or wait, and nothing it acknowledged may be lost.
			// Three 1 s stalls stay under the stall limit (2 s: the
			// node keeps its leaderships); one of 4 s goes over it.
			fp := []string{"raft.before-log-commit", "raft.after-log-commit"}[rng.IntN(2)]
			action := []string{"3*sleep(1000)", "1*sleep(4000)"}[rng.IntN(2)]
			act = fmt.Sprintf("slow disk: %s=%s", fp, action)
			if err := pc.admin(victim).ArmFailpoint(ctx, fp, action); err != nil {
				t.Fatalf("arm %s: %v", fp, err)
			}
			sleep(time.Second, 4*time.Second)
			if err := pc.admin(victim).DisarmFailpoint(ctx, fp); err != nil {
				t.Fatalf("disarm %s: %v", fp, err)
			}
		case 8:
			act = "cut off from its peers (not from its clients), healed after a pause"
			if rng.IntN(2) == 0 {
				victim, _ = pc.mostLeader(ctx)
				act = "cut off the node leading the most groups from its peers, healed after a pause"
			}
			cutOff(ctx, t, pc.procs[victim].listen, func() { sleep(200*time.Millisecond, 3*time.Second) })
		default:
			act = "stop (SIGSTOP), continue after a pause"
			p.cmd.Process.Signal(syscall.SIGSTOP)
			sleep(100*time.Millisecond, 3*time.Second)
			p.cmd.Process.Signal(syscall.SIGCONT)
		}
		actions = append(actions, fmt.Sprintf("%s: node %d: %s", time.Duration(h.now()).Round(time.Millisecond), pc.nodeIDs[victim], act))
	}
	<-done
	for _, a := range actions {
		t.Log(a)
	}

	unknown := 0
	for _, op := range h.ops {
		if op.Output.(kvOut).unknown {
			unknown++
		}
	}
	t.Logf("%d operations, %d of unknown outcome, %d nemesis actions", len(h.ops), unknown, len(actions))
	if len(h.ops)-unknown < 100 {
		t.Fatalf("only %d operations completed: the cluster did not serve through the nemesis", len(h.ops)-unknown)
	}
	checkLinearizable(t, h.ops, 5*time.Minute)

	st := settled(ctx, t, pc)
	if c.moves {
		t.Logf("placement after the moves: %+v", st.Groups)
	}
	for _, g := range st.Groups { // the metadata group (0) too
		var admins []*server.AdminClient
		for _, id := range g.Voters {
			admins = append(admins, pc.adminOfNode(t, id))
		}
		apitest.WaitConverged(ctx, t, admins, g.ID)
	}
}

// requestMove asks for a replica move of a random data group from a random
// voter to a node without a replica of it, and says what it asked and how
// it was answered: refusals (a move already in flight for the group, a
// node not active while it restarts) are part of the game.
func requestMove(ctx context.Context, pc *procCluster, rng *rand.Rand) string {
	st, err := pc.admin(rng.IntN(len(pc.procs))).Cluster(ctx)
	if err != nil {
		return fmt.Sprintf("move: no status: %v", err)
	}
	var data []server.GroupInfo
	for _, g := range st.Groups {
		if g.ID != 0 && len(g.Voters) > 0 {
			data = append(data, g)
		}
	}
	if len(data) == 0 {
		return "move: no data group"
	}
	g := data[rng.IntN(len(data))]
	var outsiders []uint64
	for _, n := range st.Nodes {
		if !slices.Contains(g.Voters, n.ID) && !slices.Contains(g.Learners, n.ID) {
			outsiders = append(outsiders, n.ID)
		}
	}
	if len(outsiders) == 0 {
		return fmt.Sprintf("move: group %d is on every node", g.ID)
	}
	req := server.MoveRequest{Group: g.ID, From: g.Voters[rng.IntN(len(g.Voters))], To: outsiders[rng.IntN(len(outsiders))]}
	m, err := pc.admin(rng.IntN(len(pc.procs))).MoveReplica(ctx, req)
	if err != nil {
		return fmt.Sprintf("move group %d from node %d to %d: refused: %v", req.Group, req.From, req.To, err)
	}
	return fmt.Sprintf("move group %d from node %d to %d: started %s", req.Group, req.From, req.To, m.ID)
}

// settled waits until no migration is left (every move completed or
// aborted, none quarantined) and every group has its voters and no
// learner, and returns that placement.
func settled(ctx context.Context, t *testing.T, pc *procCluster) server.ClusterStatus {
	t.Helper()
	n := len(pc.procs)
	for {
		st, err := pc.admin(0).Cluster(ctx)
		if err == nil {
			for _, m := range st.Migrations {
				if m.Quarantined {
					t.Fatalf("migration quarantined: %+v", m)
				}
			}
			if len(st.Migrations) == 0 && fullyPlaced(st, n) {
				return st
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the cluster did not settle: %v %+v", err, st)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// TestLinearizableUnderProcessPartitions is the process nemesis with one
// more disturbance, a node cut off from its peers while its clients still
// reach it (the case leases and forwarding must get right), over QUIC with
// quorum reads, with leases, and on four nodes with replica moves. Cutting needs nftables in a network
// namespace of the test's own (internal/netloss): the test reruns itself in
// one, and skips where the machine cannot make one (not root, no unshare,
// ip or nft).
func TestLinearizableUnderProcessPartitions(t *testing.T) {
	dur, seed := *procNemesis, *procNemesisSeed
	if netloss.InPrivate() {
		var err error
		if dur, err = time.ParseDuration(os.Getenv(procNemesisEnv)); err != nil {
			t.Fatalf("%s: %v", procNemesisEnv, err)
		}
		if seed, err = strconv.ParseUint(os.Getenv(procNemesisSeedEnv), 10, 64); err != nil {
			t.Fatalf("%s: %v", procNemesisSeedEnv, err)
		}
	} else {
		if dur <= 0 {
			t.Skip("extended tier: run with -nodedb.proc-nemesis=60s (README, \"Extended tests\")")
		}
		if testing.Short() {
			t.Skip("builds the binary and runs processes")
		}
		if seed == 0 {
			seed = uint64(time.Now().UnixNano())
		}
		// Built here: the rerun has no network but loopback.
		bin := buildProcBinary(t, t.TempDir())
		netloss.RerunInPrivate(t, procBinEnv+"="+bin, procNemesisEnv+"="+dur.String(), procNemesisSeedEnv+"="+strconv.FormatUint(seed, 10))
		return
	}
	for _, c := range []procNemesisCase{
		{name: "quorum-reads", nodes: 3, partitions: true},
		{name: "read-lease", nodes: 3, extra: []string{"--read-lease"}, partitions: true},
		// Membership changes (a move adds a learner, promotes it with
		// joint consensus, removes the old voter) while nodes are cut off:
		// a learner counted in a quorum, or an acknowledgement from an
		// old configuration, would commit without a real majority.
		{name: "moves", nodes: 4, moves: true, partitions: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Logf("nemesis seed %d (-nodedb.proc-nemesis-seed)", seed)
			runProcNemesis(t, dur, seed, c)
		})
	}
}

// The flags' values for the rerun in a namespace of its own, which gets
// the test binary's flags but not the test's.
const (
	procNemesisEnv     = "NODEDB_PROC_NEMESIS"
	procNemesisSeedEnv = "NODEDB_PROC_NEMESIS_SEED"
)

// cutOff drops every packet to and from the peer address listen while
// during runs. A QUIC node sends and receives all its peer traffic on that
// one UDP port, so this cuts it off from every peer; its client API, on
// another port, stays reachable.
func cutOff(ctx context.Context, t *testing.T, listen string, during func()) {
	t.Helper()
	cut, err := netloss.Install(ctx, "nodedb_test_cut", 100, netloss.OnArrival)
	if err != nil {
		t.Fatal(err)
	}
	defer cut.Close()
	if err := cut.Add(ctx, listen); err != nil {
		t.Fatal(err)
	}
	during()
}
