package main

import (
	"log/slog"
	"os"
	"runtime/debug"
)

// serverGCPercent is the garbage collector's target a server process runs
// with unless GOGC is set in the environment.
const serverGCPercent = 400

// raiseGCPercent sets the garbage collector's target (GOGC) to
// serverGCPercent unless GOGC is set in the environment.
//
// A node's Go heap is small: Pebble's block cache and memtables live outside
// it. With Go's default of 100 the collector ran whenever the heap had grown
// by that small live size (about 10 MB per node), several times a second
// under load, and its marking, assists and sweeping took 7-8% of a node's
// CPU. At 400 it runs about a quarter as often. Measured on `dev` (3 nodes,
// 2 cores, 256 clients, five interleaved pairs per workload): the median
// pair had 8% less CPU per put and 10% less per read, and 7% more puts and
// 14% more reads per second (single pairs ranged from 30% worse to 30%
// better: the machine is noisy); the three-node process's peak RSS went
// from 179 to 317 MB. docs/performance.md has the figures. Set GOGC (and
// GOMEMLIMIT, for a hard bound) to choose otherwise.
func raiseGCPercent(log *slog.Logger) {
	if _, set := os.LookupEnv("GOGC"); set {
		return
	}
	debug.SetGCPercent(serverGCPercent)
	log.Debug("garbage collector target", "gogc", serverGCPercent)
}
