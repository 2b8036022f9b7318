package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
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
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure ops/s and latency of puts, gets or a mix against a cluster",
		Long: `Run a closed-loop load against the cluster's client API with the Go client
(requests go straight to each key's leader): --clients workers each issue one
request at a time for --duration after a --warmup. Reports ops/s, p50, p99,
p99.9, max and errors.

Workloads: put (each write a new version of one of --keys keys, --value-size
bytes), get (reads of --keys keys written first), mixed (--read-ratio reads,
the rest writes).`,
		Example: `  nodedb-cluster bench --workload put --clients 16 --value-size 256 --duration 10s
  nodedb-cluster bench --workload mixed --clients 64 --json`,
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
				for i := range keys {
					if _, err := c.Put(ctx, key(i), value); err != nil {
						return fmt.Errorf("load key %d: %w", i, err)
					}
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
			res, err := loadgen.Run(ctx, loadgen.Config{Workers: clients, Duration: duration, Warmup: warmup}, op)
			if err != nil {
				return err
			}
			rep := benchReport{Workload: workload, Endpoints: e.list, ValueSize: valueSize, Keys: keys, Consistency: consistency, Result: res}
			if workload == "mixed" {
				rep.ReadRatio = readRatio
			}
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(rep)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "workload %s, %d clients, %d-byte values, %d keys, %s reads, %s measured after %s warm-up\n",
				workload, clients, valueSize, keys, consistency, duration, warmup)
			res.Print(cmd.OutOrStdout(), workload)
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
	return cmd
}
