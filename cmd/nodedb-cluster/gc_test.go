package main

import (
	"log/slog"
	"os"
	"runtime/debug"
	"testing"
)

// A server raises the collector's target unless GOGC is set, even to the
// default.
func TestRaiseGCPercent(t *testing.T) {
	base := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(base) })

	// t.Setenv then os.Unsetenv: GOGC absent, and restored after the test.
	t.Setenv("GOGC", "")
	unsetenv(t, "GOGC")
	raiseGCPercent(slog.Default())
	if got := debug.SetGCPercent(100); got != serverGCPercent {
		t.Fatalf("GC percent %d without GOGC, want %d", got, serverGCPercent)
	}

	t.Setenv("GOGC", "100")
	raiseGCPercent(slog.Default())
	if got := debug.SetGCPercent(100); got != 100 {
		t.Fatalf("GC percent %d with GOGC=100 in the environment, want it left at 100", got)
	}
}

func unsetenv(t *testing.T, key string) {
	t.Helper()
	if err := os.Unsetenv(key); err != nil {
		t.Fatal(err)
	}
}
