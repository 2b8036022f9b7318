package client

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/apitest"
	"github.com/nodedb/nodedb-cluster/internal/server"
)

// nodeProc is one node process of the built binary.
type nodeProc struct {
	args   []string
	dir    string
	api    string
	listen string // peer address (QUIC: one UDP socket for dials and accepts)
	log    *os.File
	cmd    *exec.Cmd
}

func (p *nodeProc) start(t *testing.T, bin string) {
	t.Helper()
	p.cmd = exec.Command(bin, p.args...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
}

// kill sends SIGKILL, as a crash would.
func (p *nodeProc) kill() {
	if p.cmd != nil && p.cmd.Process != nil {
		p.cmd.Process.Signal(syscall.SIGKILL)
		p.cmd.Wait()
		p.cmd = nil
	}
}

// procBinEnv names a nodedb-cluster binary already built, for a test binary
// that another one started (netloss.RerunInPrivate).
const procBinEnv = "NODEDB_TEST_BIN"

// buildProcBinary builds the nodedb-cluster binary into dir.
func buildProcBinary(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "nodedb-cluster")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/nodedb/nodedb-cluster/cmd/nodedb-cluster").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// procCluster is node processes of the built binary (three unless a test
// asks for more; ticks of 20ms, 4 data groups of 3 voters each, placed) and
// a Go client of them.
type procCluster struct {
	procs []*nodeProc
	bin   string
	extra []string // flags every node's start was given beyond the defaults
	// nodeIDs[i] is process i's node ID: joins finish in any order, so
	// IDs need not follow the processes' order.
	nodeIDs []uint64
	client  *Client
}

// restart starts node i's process again from its data dir (its addresses
// are stored there), with the flags it was first given.
func (pc *procCluster) restart(t *testing.T, i int) {
	p := pc.procs[i]
	p.args = append([]string{"start", "--dir", p.dir, "--tick", "20ms", "--log-level", "info"}, pc.extra...)
	p.start(t, pc.bin)
}

func (pc *procCluster) admin(i int) *server.AdminClient {
	return server.NewAdminClient(pc.procs[i].dir)
}

// startProcCluster builds the binary, bootstraps node 1, joins two more
// with tokens and waits until every group has its three voters. It skips
// the test with -short, and returns the context that bounds the test (two
// minutes, ended when the test ends).
func startProcCluster(t *testing.T) (context.Context, *procCluster) {
	return startProcClusterWith(t, 3, 2*time.Minute)
}

// startProcClusterWith is startProcCluster with n nodes (RF 3: with more
// than three, each group has three of them), the test's time bound and
// extra flags for every node's `start` (restart repeats them).
func startProcClusterWith(t *testing.T, n int, bound time.Duration, extra ...string) (context.Context, *procCluster) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary and runs processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	t.Cleanup(cancel)
	root := t.TempDir()
	bin := os.Getenv(procBinEnv) // built by the test process that started this one
	if bin == "" {
		bin = buildProcBinary(t, root)
	}
	procs := make([]*nodeProc, n)
	for i := range procs {
		dir := filepath.Join(root, fmt.Sprintf("n%d", i+1))
		logf, err := os.Create(dir + ".log")
		if err != nil {
			t.Fatal(err)
		}
		p := &nodeProc{dir: dir, api: apitest.FreeTCP(t), listen: apitest.FreeUDP(t), log: logf}
		p.args = []string{"start", "--dir", dir, "--listen", p.listen, "--tick", "20ms", "--log-level", "info"}
		p.args = append(p.args, "--api", p.api)
		p.args = append(p.args, extra...)
		procs[i] = p
		t.Cleanup(func() {
			p.kill()
			if t.Failed() {
				b, _ := os.ReadFile(logf.Name())
				t.Logf("process %d (%s) log:\n%s", i+1, dir, b)
			}
			logf.Close()
		})
	}
	pc := &procCluster{procs: procs, bin: bin, extra: extra}
	procs[0].args = append(procs[0].args, "--bootstrap", "--groups", "4", "--vshards", "64")
	procs[0].start(t, bin)
	token := func() string {
		for {
			tk, err := pc.admin(0).CreateToken(ctx, time.Minute)
			if err == nil {
				return tk.Token
			}
			if ctx.Err() != nil {
				t.Fatalf("token: %v", err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	join := procs[0].listen
	for _, p := range procs[1:] {
		p.args = append(p.args, "--join", join, "--token", token())
		p.start(t, bin)
	}
	var st server.ClusterStatus
	for placed := false; !placed; {
		var err error
		if st, err = pc.admin(0).Cluster(ctx); err == nil {
			placed = len(st.Nodes) == n && fullyPlaced(st, n)
		}
		if ctx.Err() != nil {
			t.Fatalf("cluster never placed: %v %+v", err, st.Groups)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for i := range procs {
		st, err := pc.admin(i).Status(ctx)
		if err != nil {
			t.Fatalf("status of process %d: %v", i, err)
		}
		pc.nodeIDs = append(pc.nodeIDs, st.Node)
	}
	pc.client = pc.newClient(ctx, t)
	return ctx, pc
}

// newClient returns a client of every node, with a routing cache of its
// own, closed when the test ends.
func (pc *procCluster) newClient(ctx context.Context, t *testing.T) *Client {
	t.Helper()
	var endpoints []string
	for _, p := range pc.procs {
		endpoints = append(endpoints, p.api)
	}
	cl, err := New(ctx, Config{Endpoints: endpoints, RequestTimeout: time.Second, Logger: testLog()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// fullyPlaced reports whether every group of st has its voters (RF 3 for
// data groups, up to 5 for the metadata group) on a cluster of n nodes,
// and no learner.
func fullyPlaced(st server.ClusterStatus, n int) bool {
	for _, g := range st.Groups {
		want := 3
		if g.ID == 0 {
			want = min(n, 5)
		}
		if len(g.Voters) != want || len(g.Learners) != 0 {
			return false
		}
	}
	return true
}

// adminOfNode returns the admin client of the process that is node id.
func (pc *procCluster) adminOfNode(t *testing.T, id uint64) *server.AdminClient {
	t.Helper()
	i := slices.Index(pc.nodeIDs, id)
	if i < 0 {
		t.Fatalf("no process is node %d", id)
	}
	return pc.admin(i)
}

// mostLeader returns the index of the process leading the most groups, and
// how many it leads.
func (pc *procCluster) mostLeader(ctx context.Context) (victim, most int) {
	victim, most = 0, -1
	if st, err := pc.admin(0).Cluster(ctx); err == nil {
		count := map[uint64]int{}
		for _, g := range st.Groups {
			count[g.Leader]++
		}
		for i := range pc.procs {
			if count[pc.nodeIDs[i]] > most {
				victim, most = i, count[pc.nodeIDs[i]]
			}
		}
	}
	return victim, most
}

// TestLinearizableWithAKilledNodeProcess runs three node processes of the
// built binary, drives them with the Go client (six workers putting,
// compare-and-setting and reading a few keys), SIGKILLs the node that leads
// the most groups midway and restarts it, and checks the whole history with
// porcupine: the client routes around the dead node and no acknowledged
// write is lost or applied twice.
func TestLinearizableWithAKilledNodeProcess(t *testing.T) {
	ctx, pc := startProcCluster(t)
	procs, cl := pc.procs, pc.client

	h := &history{start: time.Now()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runProcWorkload(ctx, []*Client{cl}, h, 6, time.Now().Add(6*time.Second))
	}()
	// The nemesis: SIGKILL the node leading the most groups, restart it.
	time.Sleep(1500 * time.Millisecond)
	victim, most := pc.mostLeader(ctx)
	procs[victim].kill()
	killedAt := h.now()
	time.Sleep(2 * time.Second)
	pc.restart(t, victim)
	<-done

	afterKill, unknown := 0, 0
	for _, op := range h.ops {
		if op.Output.(kvOut).unknown {
			unknown++
		} else if op.Call > killedAt {
			afterKill++
		}
	}
	t.Logf("%d operations, %d of unknown outcome, %d completed after node %d (leader of %d groups) was killed",
		len(h.ops), unknown, afterKill, pc.nodeIDs[victim], most)
	if afterKill < 50 {
		t.Fatalf("only %d operations completed after the kill: the client did not route around the dead node", afterKill)
	}
	checkLinearizable(t, h.ops, time.Minute)
}
