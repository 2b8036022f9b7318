package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/server"
)

// binDir holds the binary built for the process tests; TestMain removes it.
var binDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// buildBinary builds the nodedb-cluster binary once per test binary run.
var buildBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "nodedb-bin")
	if err != nil {
		return "", err
	}
	binDir = dir
	bin := filepath.Join(dir, "nodedb-cluster")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// proc is one node process.
type proc struct {
	t    *testing.T
	bin  string
	dir  string
	args []string
	cmd  *exec.Cmd
	log  *os.File
}

func (p *proc) start() {
	p.t.Helper()
	p.cmd = exec.Command(p.bin, p.args...)
	p.cmd.Stdout = p.log
	p.cmd.Stderr = p.log
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
}

// kill sends SIGKILL, as a crash would, and reaps the process.
func (p *proc) kill() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.cmd.Wait()
	p.cmd = nil
}

func freeUDPPorts(t *testing.T, n int) []string {
	var out []string
	var conns []net.PacketConn
	for range n {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, pc)
		out = append(out, pc.LocalAddr().String())
	}
	for _, c := range conns {
		c.Close()
	}
	return out
}

func adminOf(dir string) *server.AdminClient { return server.NewAdminClient(dir) }

// TestProcessClusterSurvivesLeaderKill runs three node processes of the
// built binary on 127.0.0.1 over QUIC with mutual TLS, writes through them,
// SIGKILLs the process leading a group, keeps writing, restarts it, and
// checks that every replica converges and no acknowledged write is lost.
func TestProcessClusterSurvivesLeaderKill(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs processes")
	}
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	caDir := filepath.Join(root, "ca")
	if out, err := exec.Command(bin, "certs", "ca", "--dir", caDir).CombinedOutput(); err != nil {
		t.Fatalf("certs ca: %v\n%s", err, out)
	}
	addrs := freeUDPPorts(t, 3)
	var peers []string
	for i, a := range addrs {
		peers = append(peers, fmt.Sprintf("%d=%s", i+1, a))
	}
	procs := make([]*proc, 3)
	for i := range procs {
		dir := filepath.Join(root, fmt.Sprintf("n%d", i+1))
		logf, err := os.Create(filepath.Join(root, fmt.Sprintf("n%d.log", i+1)))
		if err != nil {
			t.Fatal(err)
		}
		defer logf.Close()
		procs[i] = &proc{t: t, bin: bin, dir: dir, log: logf, args: []string{
			"start", "--dir", dir, "--node-id", fmt.Sprint(i + 1), "--ca-dir", caDir,
			"--peers", strings.Join(peers, ","), "--groups", "4", "--vshards", "64", "--rf", "3",
			"--tick", "20ms", "--log-level", "warn",
		}}
		procs[i].start()
	}
	t.Cleanup(func() {
		for _, p := range procs {
			p.kill()
		}
		if t.Failed() {
			for i := range procs {
				b, _ := os.ReadFile(filepath.Join(root, fmt.Sprintf("n%d.log", i+1)))
				t.Logf("node %d log:\n%s", i+1, b)
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	waitLeaders(ctx, t, procs, 4)

	// Writers: unique keys through every live node; a key is acknowledged
	// when a node answered 200.
	var mu sync.Mutex
	acked := map[string]string{}
	down := map[int]bool{}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				i := (w + n) % 3
				mu.Lock()
				skip := down[i]
				mu.Unlock()
				if skip {
					continue
				}
				key := fmt.Sprintf("w%d-%d", w, n)
				val := fmt.Sprintf("v%d-%d", w, n)
				wctx, c := context.WithTimeout(ctx, 5*time.Second)
				_, err := adminOf(procs[i].dir).Put(wctx, key, []byte(val))
				c()
				if err == nil {
					mu.Lock()
					acked[key] = val
					mu.Unlock()
				}
			}
		}()
	}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acked)
	}
	waitCount(ctx, t, count, 100)

	// Kill the process leading group 1.
	st, err := adminOf(procs[0].dir).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var victim int
	for _, g := range st.Groups {
		if g.Group == 1 {
			victim = int(g.LeaderNode) - 1
		}
	}
	if victim < 0 {
		t.Fatal("group 1 has no leader")
	}
	mu.Lock()
	down[victim] = true
	mu.Unlock()
	procs[victim].kill()
	killedAt := count()
	t.Logf("killed node %d (leader of group 1) after %d acknowledged writes", victim+1, killedAt)

	// Writes continue after re-election, including to group 1.
	waitCount(ctx, t, count, killedAt+200)
	procs[victim].args = []string{"start", "--dir", procs[victim].dir, "--log-level", "warn", "--tick", "20ms"}
	procs[victim].start()
	waitAdmin(ctx, t, procs[victim].dir)
	mu.Lock()
	down[victim] = false
	mu.Unlock()
	waitCount(ctx, t, count, count()+100)
	close(stop)
	wg.Wait()
	total := count()
	t.Logf("%d acknowledged writes", total)

	// Every replica converges to the same state.
	for g := uint64(1); g <= 4; g++ {
		waitConverged(ctx, t, procs, g)
	}
	// No acknowledged write is lost, read through every node.
	mu.Lock()
	defer mu.Unlock()
	n := 0
	for k, v := range acked {
		p := procs[n%3]
		n++
		got, err := adminOf(p.dir).Get(ctx, k)
		if err != nil {
			t.Fatalf("get %s: %v", k, err)
		}
		if !got.Found || got.Value != v {
			t.Fatalf("acknowledged write %s=%s lost: read %+v", k, v, got)
		}
	}
}

func waitAdmin(ctx context.Context, t *testing.T, dir string) {
	t.Helper()
	for {
		if _, err := adminOf(dir).Status(ctx); err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("admin socket of %s never answered", dir)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func waitLeaders(ctx context.Context, t *testing.T, procs []*proc, groups int) {
	t.Helper()
	for _, p := range procs {
		waitAdmin(ctx, t, p.dir)
	}
	for {
		led := map[uint64]bool{}
		for _, p := range procs {
			st, err := adminOf(p.dir).Status(ctx)
			if err != nil {
				continue
			}
			for _, g := range st.Groups {
				if g.IsLeader {
					led[g.Group] = true
				}
			}
		}
		if len(led) == groups {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("only %d of %d groups have a leader", len(led), groups)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func waitCount(ctx context.Context, t *testing.T, count func() int, n int) {
	t.Helper()
	for count() < n {
		select {
		case <-ctx.Done():
			t.Fatalf("only %d of %d writes acknowledged", count(), n)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func waitConverged(ctx context.Context, t *testing.T, procs []*proc, g uint64) {
	t.Helper()
	var last []server.HashAnswer
	for {
		last = last[:0]
		for _, p := range procs {
			h, err := adminOf(p.dir).Hash(ctx, g)
			if err != nil {
				var ae *server.AdminError
				if !errors.As(err, &ae) {
					t.Logf("hash of group %d on %s: %v", g, p.dir, err)
				}
				break
			}
			last = append(last, h)
		}
		if len(last) == len(procs) && last[0].Applied > 0 {
			same := true
			for _, h := range last[1:] {
				same = same && h == last[0]
			}
			if same {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("group %d did not converge: %+v", g, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
