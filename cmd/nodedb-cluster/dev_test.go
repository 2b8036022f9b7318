package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestDevOnceBootstrapsThenRestarts runs the README's local-cluster command
// the way a user does (through cobra), twice on one dir.
func TestDevOnceBootstrapsThenRestarts(t *testing.T) {
	dir := t.TempDir()
	run := func(args ...string) string { t.Helper(); return runDevOnce(t, dir, args...) }
	first := run()
	for _, want := range []string{"bootstrapped 3 nodes, 4 groups, 64 vShards", "self-check:", "API endpoints written to"} {
		if !strings.Contains(first, want) {
			t.Fatalf("first run output lacks %q:\n%s", want, first)
		}
	}
	second := run("--nodes", "5")
	for _, want := range []string{"restarted 3 nodes, 4 groups, 64 vShards", "warning: --nodes=5 ignored"} {
		if !strings.Contains(second, want) {
			t.Fatalf("second run output lacks %q:\n%s", want, second)
		}
	}
}

// TestDevOverTCP: --transport tcp runs the dev cluster's peers over TCP
// (joins, forwarding, the self-check), and a restart keeps it whatever the
// flag says.
func TestDevOverTCP(t *testing.T) {
	dir := t.TempDir()
	first := runDevOnce(t, dir, "--transport", "tcp")
	for _, want := range []string{"bootstrapped 3 nodes, 4 groups, 64 vShards, RF 3 over TCP", "self-check: a write forwarded over TCP", "TCP (mutual TLS)"} {
		if !strings.Contains(first, want) {
			t.Fatalf("first run output lacks %q:\n%s", want, first)
		}
	}
	second := runDevOnce(t, dir, "--transport", "quic")
	for _, want := range []string{"warning: --transport=quic ignored", "restarted 3 nodes, 4 groups, 64 vShards, RF 3 over TCP", "self-check: a write forwarded over TCP"} {
		if !strings.Contains(second, want) {
			t.Fatalf("second run output lacks %q:\n%s", want, second)
		}
	}
}

func TestDevRefusesBadShape(t *testing.T) {
	cmd := newDevCommand()
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetArgs([]string{"--dir", t.TempDir(), "--once", "--vshards", "100", "--port-base", "0"})
	if err := cmd.ExecuteContext(context.Background()); err == nil {
		t.Fatal("a vShard count that is not a power of two was accepted")
	}
	cmd = newDevCommand()
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetArgs([]string{"--dir", t.TempDir(), "--once", "--transport", "udp", "--port-base", "0"})
	if err := cmd.ExecuteContext(context.Background()); err == nil || !strings.Contains(err.Error(), `transport "udp"`) {
		t.Fatalf("an unknown transport: %v", err)
	}
}

// TestDevInterruptedWhileReplicating: Ctrl-C while the groups are still
// being up-replicated (right after the bootstrap line) stops dev cleanly,
// with no error, and the next run restarts the same cluster.
func TestDevInterruptedWhileReplicating(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &cancelOnWrite{cancel: cancel, when: "bootstrapped"}
	cmd := newDevCommand()
	cmd.SetOut(out)
	cmd.SetArgs([]string{"--dir", dir, "--groups", "4", "--vshards", "64", "--port-base", "0"})
	if err := cmd.ExecuteContext(ctx); err != nil {
		t.Fatalf("dev interrupted while replicating: %v\n%s", err, out.String())
	}
	if s := out.String(); !strings.Contains(s, "interrupted before the cluster was ready") && !strings.Contains(s, "stopping") {
		t.Fatalf("output:\n%s", s)
	}
	again := newDevCommand()
	var second bytes.Buffer
	again.SetOut(&second)
	again.SetArgs([]string{"--dir", dir, "--once"})
	if err := again.ExecuteContext(context.Background()); err != nil {
		t.Fatalf("dev after an interrupted first run: %v\n%s", err, second.String())
	}
	if !strings.Contains(second.String(), "restarted 3 nodes") || !strings.Contains(second.String(), "self-check:") {
		t.Fatalf("second run output:\n%s", second.String())
	}
}

// runDevOnce runs 'dev --once' on dir with a small shape and free ports, the
// way a user does (through cobra), and returns its output.
func runDevOnce(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := newDevCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetArgs(append([]string{"--dir", dir, "--once", "--groups", "4", "--vshards", "64", "--port-base", "0"}, args...))
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		t.Fatalf("dev %v: %v\n%s", args, err, out.String())
	}
	return out.String()
}

// cancelOnWrite records output and calls cancel once a write contains when
// (never if when is empty).
type cancelOnWrite struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	cancel context.CancelFunc
	when   string
}

func (w *cancelOnWrite) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.when != "" && strings.Contains(string(p), w.when) {
		w.cancel()
	}
	return w.buf.Write(p)
}

func (w *cancelOnWrite) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// TestDevReadyFile: DIR/ready appears once the cluster has passed its
// self-check, lists API addresses that answer, and is gone once dev stops;
// a stale one from an earlier run is removed before anything starts.
func TestDevReadyFile(t *testing.T) {
	dir := t.TempDir()
	ready := filepath.Join(dir, devReadyFile)
	// A stale file, and a dir dev refuses (a bad shape): the run fails, and
	// the stale file must be gone all the same.
	if err := os.WriteFile(ready, []byte("stale\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cluster.json"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := newDevCommand()
	bad.SetOut(io.Discard)
	bad.SetArgs([]string{"--dir", dir, "--port-base", "0"})
	if err := bad.ExecuteContext(context.Background()); err == nil {
		t.Fatal("dev started on a corrupt shape file")
	}
	if _, err := os.Stat(ready); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stale ready file after a failed start: %v", err)
	}

	dir = t.TempDir()
	ready = filepath.Join(dir, devReadyFile)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out cancelOnWrite // no when: never cancels
	cmd := newDevCommand()
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"--dir", dir, "--groups", "4", "--vshards", "64", "--port-base", "0"})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	var b []byte
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var err error
		if b, err = os.ReadFile(ready); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("dev ended before it was ready: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ready file after 60s:\n%s", out.String())
		}
	}
	if !strings.Contains(out.String(), "self-check:") {
		t.Fatalf("ready file before the self-check passed:\n%s", out.String())
	}
	apis := strings.Fields(string(b))
	if len(apis) != 3 {
		t.Fatalf("ready file %q: want 3 API addresses", b)
	}
	for _, a := range apis {
		resp, err := http.Get("http://" + a + "/readyz")
		if err != nil {
			t.Fatalf("ready file lists %s: %v", a, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("ready file lists %s, whose /readyz says %d", a, resp.StatusCode)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("dev: %v", err)
	}
	if _, err := os.Stat(ready); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ready file after dev stopped: %v", err)
	}
}

// TestDevProcessorsFollowStoredShape: dev adds one processor per node it
// runs, and a restart runs the stored shape's nodes, not --nodes' default.
func TestDevProcessorsFollowStoredShape(t *testing.T) {
	base := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(base) })
	t.Setenv("GOMAXPROCS", "")
	dir := t.TempDir()
	run := func(args ...string) {
		t.Helper()
		runtime.GOMAXPROCS(base)
		runDevOnce(t, dir, args...)
	}
	run("--nodes", "2")
	if got := runtime.GOMAXPROCS(0); got != base+2 {
		t.Fatalf("first run of 2 nodes: GOMAXPROCS %d, want %d + 2", got, base)
	}
	run() // --nodes defaults to 3; the dir holds 2
	if got := runtime.GOMAXPROCS(0); got != base+2 {
		t.Fatalf("restart of 2 nodes: GOMAXPROCS %d, want %d + 2", got, base)
	}
}
