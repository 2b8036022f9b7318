package main

import (
	"log/slog"
	"runtime"
	"testing"
)

// The extra processors come on top of Go's default, one per node, and an
// explicit GOMAXPROCS in the environment is left alone.
func TestAddSyncProcessors(t *testing.T) {
	base := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(base) })

	t.Setenv("GOMAXPROCS", "")
	addSyncProcessors(3, slog.Default())
	if got := runtime.GOMAXPROCS(0); got != base+3 {
		t.Fatalf("GOMAXPROCS %d, want %d + 3", got, base)
	}
	runtime.GOMAXPROCS(base)

	t.Setenv("GOMAXPROCS", "1")
	addSyncProcessors(3, slog.Default())
	if got := runtime.GOMAXPROCS(0); got != base {
		t.Fatalf("GOMAXPROCS %d with GOMAXPROCS set in the environment, want it left at %d", got, base)
	}
}
