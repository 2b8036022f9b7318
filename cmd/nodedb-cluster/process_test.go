package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/apitest"
	"github.com/nodedb/nodedb-cluster/internal/freeport"
	"github.com/nodedb/nodedb-cluster/internal/server"
	"github.com/nodedb/nodedb-cluster/internal/testwatch"
)

// binDir holds the binary built for the process tests; TestMain removes it.
var binDir string

func TestMain(m *testing.M) {
	testwatch.Watch()
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// testBinEnv names a nodedb-cluster binary already built, for a test
// binary that another one started (netloss.RerunInPrivate).
const testBinEnv = "NODEDB_TEST_BIN"

// buildBinary builds the nodedb-cluster binary once per test binary run.
var buildBinary = sync.OnceValues(func() (string, error) {
	if bin := os.Getenv(testBinEnv); bin != "" {
		return bin, nil // built by the test process that started this one
	}
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
	env  []string
	api  string // client API address, if any
	cmd  *exec.Cmd
	log  *os.File
}

func (p *proc) start() {
	p.t.Helper()
	p.cmd = exec.Command(p.bin, p.args...)
	p.cmd.Env = append(os.Environ(), p.env...)
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

func freeTCPPorts(t *testing.T, n int) []string { return freePorts(t, n, freeport.TCP) }

func freeUDPPorts(t *testing.T, n int) []string { return freePorts(t, n, freeport.UDP) }

func freePorts(t *testing.T, n int, free func() (string, error)) []string {
	var out []string
	for range n {
		addr, err := free()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, addr)
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
	// The same over both peer transports: QUIC, and TCP with mutual TLS.
	t.Run("quic", func(t *testing.T) { leaderKill(t, nil) })
	t.Run("tcp", func(t *testing.T) { leaderKill(t, []string{"--transport", "tcp"}) })
}

// leaderKill runs three node processes started with allArgs, writes through
// all of them, SIGKILLs the leader of group 1 and restarts it: writes go on,
// replicas converge, no acknowledged write is lost.
func leaderKill(t *testing.T, allArgs []string) {
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	procs := startProcClusterWith(ctx, t, bin, root, 3, allArgs, "--groups", "4", "--vshards", "64", "--rf", "3")
	waitLeaders(ctx, t, procs, 5) // 4 data groups and the metadata group
	if slices.Contains(allArgs, "tcp") {
		// Each node really runs on TCP (a QUIC node would also have found
		// its UDP port free).
		for _, p := range procs {
			if b, err := os.ReadFile(filepath.Join(p.dir, "cluster.json")); err != nil || !strings.Contains(string(b), `"transport": "tcp"`) {
				t.Fatalf("%s/cluster.json: %s %v", p.dir, b, err)
			}
		}
	}

	w := startWriters(ctx, t, procs, 4)
	count := w.count
	waitCount(ctx, t, count, 100)

	// Kill the process leading group 1.
	st, err := adminOf(procs[0].dir).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	victim := -1
	for _, g := range st.Groups {
		if g.Group == 1 && g.LeaderNode != 0 {
			victim = procOfNode(ctx, t, procs, g.LeaderNode)
		}
	}
	if victim < 0 {
		t.Fatal("group 1 has no leader")
	}
	w.setDown(victim, true)
	procs[victim].kill()
	killedAt := count()
	t.Logf("killed process %d (leader of group 1) after %d acknowledged writes", victim+1, killedAt)

	// Writes continue after re-election, including to group 1.
	waitCount(ctx, t, count, killedAt+200)
	procs[victim].args = slices.Concat([]string{"start", "--dir", procs[victim].dir, "--log-level", "warn", "--tick", "20ms"}, allArgs)
	procs[victim].start()
	waitAdmin(ctx, t, procs[victim].dir)
	w.setDown(victim, false)
	waitCount(ctx, t, count, count()+100)
	w.stop()
	t.Logf("%d acknowledged writes", count())

	// Every replica converges to the same state.
	for g := uint64(1); g <= 4; g++ {
		waitConverged(ctx, t, procs, g)
	}
	// No acknowledged write is lost, read through every node.
	w.verify(ctx, t, procs)
}

// writers put unique keys through every node that is not marked down, each
// writer one request at a time; a key is acknowledged when a node answered
// 200.
type writers struct {
	mu    sync.Mutex
	acked map[string]string
	down  map[int]bool
	wg    sync.WaitGroup
	done  chan struct{}
	once  sync.Once
}

// startWriters starts n writers over procs; stop ends them, and so does
// the end of t.
func startWriters(ctx context.Context, t *testing.T, procs []*proc, n int) *writers {
	w := &writers{acked: map[string]string{}, down: map[int]bool{}, done: make(chan struct{})}
	t.Cleanup(w.stop)
	for wr := range n {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-w.done:
					return
				default:
				}
				node := (wr + i) % len(procs)
				w.mu.Lock()
				skip := w.down[node]
				w.mu.Unlock()
				if skip {
					continue
				}
				key := fmt.Sprintf("w%d-%d", wr, i)
				val := fmt.Sprintf("v%d-%d", wr, i)
				wctx, c := context.WithTimeout(ctx, 5*time.Second)
				_, err := adminOf(procs[node].dir).Put(wctx, key, []byte(val))
				c()
				if err == nil {
					w.mu.Lock()
					w.acked[key] = val
					w.mu.Unlock()
				}
			}
		}()
	}
	return w
}

// setDown stops (or resumes) writing through node i.
func (w *writers) setDown(i int, down bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.down[i] = down
}

// count is the number of acknowledged writes so far.
func (w *writers) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

// stop ends the writers and waits for them.
func (w *writers) stop() {
	w.once.Do(func() { close(w.done) })
	w.wg.Wait()
}

// verify reads every acknowledged key back, through the nodes in turn,
// and fails t if one is missing or holds another value.
func (w *writers) verify(ctx context.Context, t *testing.T, procs []*proc) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for k, v := range w.acked {
		p := procs[n%len(procs)]
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

// newProc prepares node i's process (not started) with its own dir and log.
func newProc(t *testing.T, bin, root string, i int, args ...string) *proc {
	dir := filepath.Join(root, fmt.Sprintf("n%d", i))
	logf, err := os.OpenFile(filepath.Join(root, fmt.Sprintf("n%d.log", i)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, bin: bin, dir: dir, log: logf, args: append([]string{"start", "--dir", dir, "--tick", "20ms", "--log-level", "info"}, args...)}
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("node %d log:\n%s", i, b)
		}
		logf.Close()
	})
	return p
}

// startProcCluster starts n node processes the way an operator does: node 1
// bootstraps, the others join with tokens from 'token create'. It waits
// until every group has min(3, n) voters.
func startProcCluster(ctx context.Context, t *testing.T, bin, root string, n int, bootstrapArgs ...string) []*proc {
	t.Helper()
	return startProcClusterWith(ctx, t, bin, root, n, nil, bootstrapArgs...)
}

// startProcClusterWith is startProcCluster with allArgs given to every
// node (and kept for its restarts).
func startProcClusterWith(ctx context.Context, t *testing.T, bin, root string, n int, allArgs []string, bootstrapArgs ...string) []*proc {
	t.Helper()
	addrs, apis := freeUDPPorts(t, n), freeTCPPorts(t, n)
	if i := slices.Index(allArgs, "--transport"); i >= 0 && i+1 < len(allArgs) && allArgs[i+1] == "tcp" {
		// Peer and API ports from one pool, so that they differ.
		ports := freeTCPPorts(t, 2*n)
		addrs, apis = ports[:n], ports[n:]
	}
	procs := make([]*proc, n)
	procs[0] = newProc(t, bin, root, 1, slices.Concat([]string{"--listen", addrs[0], "--api", apis[0], "--bootstrap"}, allArgs, bootstrapArgs)...)
	procs[0].api = apis[0]
	procs[0].start()
	waitAdmin(ctx, t, procs[0].dir)
	for i := 1; i < n; i++ {
		tok := createToken(ctx, t, procs[0].dir)
		procs[i] = newProc(t, bin, root, i+1, slices.Concat([]string{"--listen", addrs[i], "--api", apis[i], "--join", addrs[0], "--token", tok}, allArgs)...)
		procs[i].api = apis[i]
		procs[i].start()
	}
	for _, p := range procs[1:] {
		waitAdmin(ctx, t, p.dir)
	}
	waitPlaced(ctx, t, procs[0].dir, n, min(3, n))
	return procs
}

// createToken runs 'token create' against a node and takes the token from
// the last line of its output, as a script would.
func createToken(ctx context.Context, t *testing.T, dir string) string {
	t.Helper()
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	for {
		out, err := exec.CommandContext(ctx, bin, "token", "create", "--dir", dir, "--ttl", "10m").CombinedOutput()
		if err == nil {
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			return lines[len(lines)-1]
		}
		select {
		case <-ctx.Done():
			t.Fatalf("token create: %v\n%s", err, out)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitPlaced waits until the cluster has nodes active nodes and every data
// group has voters voters and no learner.
func waitPlaced(ctx context.Context, t *testing.T, dir string, nodes, voters int) server.ClusterStatus {
	t.Helper()
	var last error
	for {
		st, err := adminOf(dir).Cluster(ctx)
		if err == nil {
			err = placed(st, nodes, voters)
			if err == nil {
				return st
			}
		}
		last = err
		select {
		case <-ctx.Done():
			t.Fatalf("cluster not placed: %v", last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func placed(st server.ClusterStatus, nodes, voters int) error {
	active := 0
	for _, n := range st.Nodes {
		if n.State == "active" {
			active++
		}
	}
	if active != nodes || len(st.Nodes) != nodes {
		return fmt.Errorf("%d nodes, %d active, want %d", len(st.Nodes), active, nodes)
	}
	for _, g := range st.Groups {
		want := voters
		if g.ID == 0 {
			want = min(5, nodes)
		}
		if len(g.Voters) != want || len(g.Learners) > 0 {
			return fmt.Errorf("group %d: voters %v learners %v", g.ID, g.Voters, g.Learners)
		}
	}
	return nil
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

// procOfNode returns the index of the process that is node id: joins
// finish in any order, so node IDs need not follow the processes' order.
func procOfNode(ctx context.Context, t *testing.T, procs []*proc, id uint64) int {
	t.Helper()
	for i, p := range procs {
		if st, err := adminOf(p.dir).Status(ctx); err == nil && st.Node == id {
			return i
		}
	}
	t.Fatalf("no running process is node %d", id)
	return -1
}

func waitConverged(ctx context.Context, t *testing.T, procs []*proc, g uint64) {
	t.Helper()
	admins := make([]*server.AdminClient, len(procs))
	for i, p := range procs {
		admins[i] = adminOf(p.dir)
	}
	apitest.WaitConverged(ctx, t, admins, g)
}

// TestProcessJoinSurvivesLeaderCrashMidJoin crashes the metadata leader
// (exit 86 at the failpoint) right after it committed a joiner's BeginJoin
// and before it answered. The joiner keeps retrying with the same key; once
// the leader is back it is admitted exactly once: one new node ID, the
// token consumed, nothing else added.
func TestProcessJoinSurvivesLeaderCrashMidJoin(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs processes")
	}
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	addrs := freeUDPPorts(t, 2)
	leader := newProc(t, bin, root, 1, "--listen", addrs[0], "--bootstrap", "--groups", "2", "--vshards", "16")
	leader.env = []string{"NODEDB_FAILPOINTS=join.after-propose=exit"}
	leader.start()
	waitAdmin(ctx, t, leader.dir)
	tok := createToken(ctx, t, leader.dir)

	joiner := newProc(t, bin, root, 2, "--listen", addrs[1], "--join", addrs[0], "--token", tok)
	joiner.start()
	err = leader.cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 86 {
		t.Fatalf("the leader should have exited with status 86 at the failpoint, got %v", err)
	}
	leader.cmd = nil
	leader.env = nil
	leader.args = []string{"start", "--dir", leader.dir, "--tick", "20ms", "--log-level", "info"}
	leader.start()

	st := waitPlaced(ctx, t, leader.dir, 2, 2)
	ids := []uint64{}
	for _, n := range st.Nodes {
		ids = append(ids, n.ID)
	}
	if fmt.Sprint(ids) != "[1 2]" {
		t.Fatalf("nodes %v after the interrupted join, want [1 2]", ids)
	}
	consumed := 0
	for _, tk := range st.Tokens {
		if tk.State == "consumed" && tk.Node == 2 {
			consumed++
		}
	}
	if consumed != 1 {
		t.Fatalf("tokens %+v: want the join token consumed by node 2", st.Tokens)
	}
	js, err := adminOf(joiner.dir).Status(ctx)
	if err != nil || js.Node != 2 {
		t.Fatalf("joiner status %+v, %v", js, err)
	}
	// The bootstrap printed a first join token, alone on its line.
	b, _ := os.ReadFile(leader.log.Name())
	if !strings.Contains(string(b), "join token (single use") {
		t.Fatalf("start --bootstrap printed no join token:\n%s", b)
	}
	checkStatusJSON(ctx, t, bin, joiner.dir)
}

// checkStatusJSON runs 'status --json' and checks the field names scripts
// rely on.
func checkStatusJSON(ctx context.Context, t *testing.T, bin, dir string) {
	t.Helper()
	out, err := exec.CommandContext(ctx, bin, "status", "--dir", dir, "--json").Output()
	if err != nil {
		t.Fatalf("status --json: %v", err)
	}
	var st map[string]any
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("status --json is not JSON: %v\n%s", err, out)
	}
	for _, k := range []string{"cluster_id", "vshard_count", "replication_factor", "routing_version", "transport", "nodes", "groups", "vshards", "migrations"} {
		if _, ok := st[k]; !ok {
			t.Fatalf("status --json lacks %q:\n%s", k, out)
		}
	}
	fields := map[string][]string{
		"nodes":   {"id", "state", "liveness", "peer_addr", "api_addr", "zone"},
		"groups":  {"id", "voters", "learners", "leader", "vshards"},
		"vshards": {"id", "group", "epoch"},
	}
	for list, keys := range fields {
		items, _ := st[list].([]any)
		if len(items) == 0 {
			t.Fatalf("status --json: %s is empty", list)
		}
		item, _ := items[0].(map[string]any)
		for _, k := range keys {
			if _, ok := item[k]; !ok {
				t.Fatalf("status --json: %s[0] lacks %q: %v", list, k, item)
			}
		}
	}
	if n := len(st["vshards"].([]any)); n != int(st["vshard_count"].(float64)) {
		t.Fatalf("status --json: %d vshards listed, vshard_count %v", n, st["vshard_count"])
	}
}

// TestProcessRESTThroughEveryNode drives three node processes of the built
// binary over HTTP as curl would: put, get, delete and scan through every
// node (each forwards to the key's leader over QUIC), a compare-and-set
// conflict, and an Idempotency-Key replay that returns the first result.
func TestProcessRESTThroughEveryNode(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs processes")
	}
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	procs := startProcCluster(ctx, t, bin, t.TempDir(), 3, "--groups", "4", "--vshards", "64")
	url := func(i int, path string) string { return "http://" + procs[i%3].api + path }
	do := func(method, u, body string, hdr ...string) (int, string, http.Header) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, u, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, u, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}
	for i := range 12 {
		key := fmt.Sprintf("key-%d", i)
		if st, body, _ := do("PUT", url(i, "/v1/kv/"+key), "value-"+key); st != 200 || !strings.Contains(body, `"version":1`) {
			t.Fatalf("put %s via node %d: %d %s", key, i%3+1, st, body)
		}
		for j := range 3 {
			st, body, h := do("GET", url(j, "/v1/kv/"+key), "")
			if st != 200 || body != "value-"+key || h.Get("X-Nodedb-Version") != "1" {
				t.Fatalf("get %s via node %d: %d %q", key, j+1, st, body)
			}
		}
	}
	if st, body, _ := do("PUT", url(1, "/v1/kv/key-0?if_version=7"), "x"); st != 409 || !strings.Contains(body, `"code":"conflict"`) {
		t.Fatalf("CAS conflict: %d %s", st, body)
	}
	_, first, _ := do("PUT", url(2, "/v1/kv/idem"), "first", "Idempotency-Key", "op-1")
	st, replay, _ := do("PUT", url(0, "/v1/kv/idem"), "second", "Idempotency-Key", "op-1")
	if st != 200 || replay != first {
		t.Fatalf("Idempotency-Key replay: %d %s, first answer %s", st, replay, first)
	}
	if _, body, _ := do("GET", url(1, "/v1/kv/idem"), ""); body != "first" {
		t.Fatalf("after the replay the value is %q", body)
	}
	if st, body, _ := do("DELETE", url(2, "/v1/kv/key-3"), ""); st != 200 {
		t.Fatalf("delete: %d %s", st, body)
	}
	if st, _, _ := do("GET", url(0, "/v1/kv/key-3"), ""); st != 404 {
		t.Fatalf("get after delete: %d", st)
	}
	seen := map[string]bool{}
	for cursor, page := "", 0; ; page++ {
		st, body, _ := do("GET", url(page, "/v1/kv?prefix=key-&limit=5&cursor="+cursor), "")
		var ans struct {
			Items []struct {
				Key, Value string
			}
			Cursor string
		}
		if err := json.Unmarshal([]byte(body), &ans); st != 200 || err != nil {
			t.Fatalf("scan: %d %s", st, body)
		}
		for _, it := range ans.Items {
			if seen[it.Key] || it.Value != "value-"+it.Key {
				t.Fatalf("scan item %+v twice or wrong", it)
			}
			seen[it.Key] = true
		}
		if cursor = ans.Cursor; cursor == "" {
			break
		}
	}
	if len(seen) != 11 {
		t.Fatalf("scan saw %d keys, want 11", len(seen))
	}
}
