package main

import (
	"log/slog"
	"os"
	"runtime"
)

// addSyncProcessors gives the Go scheduler one processor (P) more than its
// default for each node this process runs, unless GOMAXPROCS is set in the
// environment.
//
// Each node's write-ahead log is synced by one goroutine at a time, and a
// goroutine in a blocking system call keeps its processor until the runtime
// takes it back (20 µs to several ms later). With as many processors as
// cores, a node spends every fsync with one processor fewer: on two cores,
// the goroutines that carry its messages to peers and its answers to
// clients queue behind the sync. The extra processor is idle while nothing
// syncs; when a sync blocks one, it runs the rest on the core the sync left
// free. Measured with bench/compare on 2 cores (3 server processes, fsync
// on): single-client put p50 2.3 ms instead of 2.8 ms and 20% less server
// CPU per put at one client; throughput at 16 and 256 clients unchanged
// within the noise (docs/performance.md). The base is Go's default (the CPUs
// the process may use, cgroup limits included), taken at start; setting it
// turns off the runtime's own updates when a container's CPU limit changes
// later, so an operator who resizes limits live sets GOMAXPROCS instead.
func addSyncProcessors(nodes int, log *slog.Logger) {
	if nodes < 1 || os.Getenv("GOMAXPROCS") != "" {
		return
	}
	before := runtime.GOMAXPROCS(0)
	runtime.GOMAXPROCS(before + nodes)
	log.Debug("processors for WAL syncs", "gomaxprocs", before+nodes, "default", before, "nodes", nodes)
}
