package main

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
)

// TestDevOnceBootstrapsThenRestarts runs the README's local-cluster command
// the way a user does (through cobra), twice on one dir.
func TestDevOnceBootstrapsThenRestarts(t *testing.T) {
	dir := t.TempDir()
	run := func(args ...string) string {
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

func TestDevRefusesBadShape(t *testing.T) {
	cmd := newDevCommand()
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetArgs([]string{"--dir", t.TempDir(), "--once", "--vshards", "100", "--port-base", "0"})
	if err := cmd.ExecuteContext(context.Background()); err == nil {
		t.Fatal("a vShard count that is not a power of two was accepted")
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

// cancelOnWrite records output and calls cancel once a write contains when.
type cancelOnWrite struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	cancel context.CancelFunc
	when   string
}

func (w *cancelOnWrite) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if strings.Contains(string(p), w.when) {
		w.cancel()
	}
	return w.buf.Write(p)
}

func (w *cancelOnWrite) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}
