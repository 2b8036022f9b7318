package client

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/apitest"
	"github.com/nodedb/nodedb-cluster/internal/server"
)

var (
	procNemesis     = flag.Duration("nodedb.proc-nemesis", 0, "run TestLinearizableUnderProcessNemesis's workload this long (0: skip it)")
	procNemesisSeed = flag.Uint64("nodedb.proc-nemesis-seed", 0, "seed of TestLinearizableUnderProcessNemesis's nemesis (0: from the clock, logged)")
)

// runProcWorkload runs workers goroutines until the time until, worker w
// using clients[w%len(clients)], each putting, compare-and-setting and
// reading a few keys, and records every operation in h. A write whose outcome the client never learned (a timeout,
// a node lost mid-request) is recorded as unknown; a failed read has no
// effect and is not recorded.
func runProcWorkload(ctx context.Context, clients []*Client, h *history, workers int, until time.Time) {
	keys := []string{"p0", "p1", "p2", "{p}3"}
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
// real stack: three node processes of the built binary (QUIC with mutual
// TLS, Pebble on disk), six Go clients, and a nemesis that for
// -nodedb.proc-nemesis keeps doing one of these to one node at a time:
// SIGKILL and restart after a pause, SIGKILL and restart at once (a crash
// loop), SIGKILL of the node leading the most groups, SIGSTOP for up to 3 s
// and SIGCONT (a stalled machine, a long GC pause: the node wakes up
// believing it still leads), SIGSTOP of the busiest leader for longer than an
// election, SIGSTOP of two nodes at once (no quorum for a while), or SIGKILL of every node at once and a restart (every process
// crashed; the page cache survives a SIGKILL, so this is not a power cut).
// Over QUIC with quorum reads, over QUIC with leader leases
// (`--read-lease`, where a stalled leader is the classic way to serve a
// stale read), and over TCP (`--transport tcp`). Then every history must be
// linearizable (porcupine), and every group's replicas must converge to the
// same state hash.
func TestLinearizableUnderProcessNemesis(t *testing.T) {
	if *procNemesis <= 0 {
		t.Skip("extended tier: run with -nodedb.proc-nemesis=60s (README, \"Extended tests\")")
	}
	seed := *procNemesisSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	for _, c := range []struct {
		name  string
		extra []string
	}{
		{"quorum-reads", nil},
		{"read-lease", []string{"--read-lease"}},
		{"tcp", []string{"--transport", "tcp"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Logf("nemesis seed %d (-nodedb.proc-nemesis-seed)", seed)
			runProcNemesis(t, *procNemesis, seed, c.extra...)
		})
	}
}

func runProcNemesis(t *testing.T, dur time.Duration, seed uint64, extra ...string) {
	ctx, pc := startProcClusterWith(t, dur+3*time.Minute, extra...)
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
		victim := rng.IntN(len(pc.procs))
		p := pc.procs[victim]
		var act string
		switch k := rng.IntN(7); k {
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
			act = fmt.Sprintf("and node %d: stop both (no quorum), continue after a pause", other+1)
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
		default:
			act = "stop (SIGSTOP), continue after a pause"
			p.cmd.Process.Signal(syscall.SIGSTOP)
			sleep(100*time.Millisecond, 3*time.Second)
			p.cmd.Process.Signal(syscall.SIGCONT)
		}
		actions = append(actions, fmt.Sprintf("%s: node %d: %s", time.Duration(h.now()).Round(time.Millisecond), victim+1, act))
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

	st, err := pc.admin(0).Cluster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	admins := make([]*server.AdminClient, len(pc.procs))
	for i := range pc.procs {
		admins[i] = pc.admin(i)
	}
	apitest.WaitConverged(ctx, t, admins, 0) // the metadata group
	for _, g := range st.Groups {
		apitest.WaitConverged(ctx, t, admins, g.ID)
	}
}
