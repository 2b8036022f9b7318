package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/nodedb/nodedb-cluster/client"
	"github.com/nodedb/nodedb-cluster/internal/loadgen"
)

// benchReport is the --json output of bench.
type benchReport struct {
	Workload    string  `json:"workload"`
	Endpoints   string  `json:"endpoints"`
	ValueSize   int     `json:"value_size"`
	Keys        int     `json:"keys"`
	ReadRatio   float64 `json:"read_ratio,omitempty"`
	Consistency string  `json:"consistency"`
	loadgen.Result
	// Server is the cluster's side of the measured window (see
	// serverTimings); absent when its /metrics could not be read.
	Server *serverTimings `json:"server,omitempty"`
}

func newBenchCommand() *cobra.Command {
	var (
		e           endpoints
		workload    string
		clients     int
		valueSize   int
		duration    time.Duration
		warmup      time.Duration
		keys        int
		readRatio   float64
		consistency string
		staleness   time.Duration
		asJSON      bool
		rate        float64
		check       bool
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure ops/s and latency of puts, gets or a mix against a cluster",
		Long: `Run a load against the cluster's client API with the Go client (requests
go straight to each key's leader) for --duration after a --warmup. Reports
ops/s, p50, p99, p99.9, max and errors.

Closed loop (the default): --clients workers each issue one request at a
time, back to back. With --rate R: open loop at R requests/s in total,
scheduled at fixed intervals and run by the next free one of the --clients
workers; latency counts from the scheduled start, so queueing shows in it. A
request that cannot start within 1 s of its scheduled time (every worker busy)
is skipped and reported as missed, which bounds the backlog of a stalled
cluster.

--check exits non-zero, saying why, if any request failed, none succeeded,
or (with --rate) the achieved rate is below 90% of R: a smoke test that the
cluster sustains a low fixed rate without errors.

Workloads: put (each write a new version of one of --keys keys, --value-size
bytes), get (reads of --keys keys written first), mixed (--read-ratio reads,
the rest writes).`,
		Example: `  nodedb-cluster bench --workload put --clients 16 --value-size 256 --duration 10s
  nodedb-cluster bench --workload mixed --clients 64 --json
  nodedb-cluster bench --workload mixed --rate 200 --clients 8 --duration 5s --check`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch workload {
			case "put", "get", "mixed":
			default:
				return fmt.Errorf("--workload %q: want put, get or mixed", workload)
			}
			if clients < 1 || valueSize < 0 || keys < 1 || readRatio < 0 || readRatio > 1 {
				return fmt.Errorf("--clients and --keys must be at least 1, --value-size at least 0, --read-ratio in [0, 1]")
			}
			if rate < 0 || math.IsNaN(rate) || math.IsInf(rate, 0) {
				return fmt.Errorf("--rate %v: want 0 (closed loop) or a positive number of requests per second", rate)
			}
			var eps []string
			for _, u := range e.urls() {
				eps = append(eps, strings.TrimPrefix(u, "http://"))
			}
			ctx := cmd.Context()
			tr := &http.Transport{MaxIdleConnsPerHost: clients + 8}
			defer tr.CloseIdleConnections()
			c, err := client.New(ctx, client.Config{Endpoints: eps, HTTPClient: &http.Client{Transport: tr}})
			if err != nil {
				return err
			}
			defer c.Close()
			value := make([]byte, valueSize)
			for i := range value {
				value[i] = byte('a' + i%26)
			}
			key := func(i int) []byte { return []byte(fmt.Sprintf("bench/%d", i)) }
			var ropts []client.ReadOption
			if consistency == "stale" {
				ropts = append(ropts, client.WithStale(staleness))
			}
			if workload != "put" {
				// Reads need the keys to exist.
				if err := preload(ctx, clients, keys, func(ctx context.Context, i int) error {
					_, err := c.Put(ctx, key(i), value)
					return err
				}); err != nil {
					return err
				}
			}
			op := func(ctx context.Context, w, n int) error {
				k := key(rand.IntN(keys))
				read := workload == "get" || (workload == "mixed" && rand.Float64() < readRatio)
				if read {
					_, err := c.Get(ctx, k, ropts...)
					return err
				}
				_, err := c.Put(ctx, k, value)
				return err
			}
			window := startHistogramWindow(ctx, &http.Client{Transport: tr}, e.urls(), warmup)
			res, err := loadgen.Run(ctx, loadgen.Config{Workers: clients, Duration: duration, Warmup: warmup, Rate: rate}, op)
			if err != nil {
				return err
			}
			server, serverErr := window.end()
			rep := benchReport{Workload: workload, Endpoints: e.list, ValueSize: valueSize, Keys: keys, Consistency: consistency, Result: res, Server: server}
			if workload == "mixed" {
				rep.ReadRatio = readRatio
			}
			if asJSON {
				if err := json.NewEncoder(cmd.OutOrStdout()).Encode(rep); err != nil {
					return err
				}
			} else {
				pacing := "closed loop"
				if rate > 0 {
					pacing = fmt.Sprintf("fixed rate %g ops/s", rate)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "workload %s, %s, %d clients, %d-byte values, %d keys, %s reads, %s measured after %s warm-up\n",
					workload, pacing, clients, valueSize, keys, consistency, duration, warmup)
				res.Print(cmd.OutOrStdout(), workload)
				if server != nil {
					server.print(cmd.OutOrStdout(), res.Ops)
				} else {
					fmt.Fprintln(cmd.OutOrStdout(), serverNote(serverErr))
				}
			}
			if check {
				if err := checkResult(res); err != nil {
					return err
				}
				if asJSON {
					fmt.Fprintln(cmd.ErrOrStderr(), "check passed")
				} else {
					fmt.Fprintln(cmd.OutOrStdout(), "check passed")
				}
			}
			return nil
		},
	}
	e.flags(cmd)
	f := cmd.Flags()
	f.StringVar(&workload, "workload", "put", "put, get or mixed")
	f.IntVar(&clients, "clients", 16, "concurrent clients, each one request at a time")
	f.IntVar(&valueSize, "value-size", 256, "value size in bytes")
	f.DurationVar(&duration, "duration", 10*time.Second, "how long to measure")
	f.DurationVar(&warmup, "warmup", 2*time.Second, "how long to run before measuring")
	f.IntVar(&keys, "keys", 10000, "number of distinct keys")
	f.Float64Var(&readRatio, "read-ratio", 0.9, "share of reads in the mixed workload")
	f.StringVar(&consistency, "consistency", "linearizable", "reads: linearizable or stale")
	f.DurationVar(&staleness, "max-staleness", time.Second, "with --consistency stale")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	f.Float64Var(&rate, "rate", 0, "total requests per second, paced at fixed intervals (open loop); 0 runs closed loop")
	f.BoolVar(&check, "check", false, "exit non-zero if any request failed, none succeeded, or the achieved rate is below 90% of --rate")
	return cmd
}

// checkMinRateShare is the share of --rate that --check requires.
const checkMinRateShare = 0.9

// checkResult is bench --check: an error saying why the run failed, or nil.
func checkResult(r loadgen.Result) error {
	var why []string
	if r.Errors > 0 {
		why = append(why, fmt.Sprintf("%d of %d requests failed (first error: %s)", r.Errors, r.Ops+r.Errors, r.FirstError))
	}
	if r.Ops == 0 {
		why = append(why, "no request succeeded")
	}
	if r.Rate > 0 && r.OpsPerSec < checkMinRateShare*r.Rate {
		why = append(why, fmt.Sprintf("achieved %.1f ops/s, below %.0f%% of --rate %g (%d scheduled requests missed: not started within %s)",
			r.OpsPerSec, 100*checkMinRateShare, r.Rate, r.Missed, r.MaxLateness))
	}
	if len(why) > 0 {
		return fmt.Errorf("check failed: %s", strings.Join(why, "; "))
	}
	return nil
}

// preload runs put for keys 0..keys-1 on up to workers goroutines and
// returns the first error.
func preload(ctx context.Context, workers, keys int, put func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	for range min(workers, keys) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= keys || ctx.Err() != nil {
					return
				}
				if err := put(ctx, i); err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("load key %d: %w", i, err) })
					cancel()
					return
				}
			}
		}()
	}
	wg.Wait()
	return firstErr
}
