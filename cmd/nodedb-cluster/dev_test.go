package main

import (
	"bytes"
	"context"
	"strings"
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
