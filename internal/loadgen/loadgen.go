// Package loadgen runs a closed-loop load: N workers, each issuing one
// operation at a time for a duration, and summarizes throughput and latency.
// The operation is the caller's (the bench command plugs in the Go client),
// so the runner is tested without a cluster.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"
)

// Op performs one operation for worker w; its n-th call gets n.
type Op func(ctx context.Context, w, n int) error

// Config shapes a run.
type Config struct {
	Workers  int
	Duration time.Duration
	// Warmup runs before measuring; its operations are not counted.
	Warmup time.Duration
}

// Result summarizes a run.
type Result struct {
	Workers   int           `json:"clients"`
	Duration  time.Duration `json:"-"`
	Seconds   float64       `json:"seconds"`
	Ops       int           `json:"ops"`
	Errors    int           `json:"errors"`
	OpsPerSec float64       `json:"ops_per_sec"`
	P50       time.Duration `json:"-"`
	P99       time.Duration `json:"-"`
	P999      time.Duration `json:"-"`
	Max       time.Duration `json:"-"`
	P50ms     float64       `json:"p50_ms"`
	P99ms     float64       `json:"p99_ms"`
	P999ms    float64       `json:"p999_ms"`
	MaxMs     float64       `json:"max_ms"`
	// FirstError is one error seen, for the report.
	FirstError string `json:"first_error,omitempty"`
}

// Run runs op on cfg.Workers workers until cfg.Duration has passed (after
// the warm-up) or ctx ends. Latencies count successful operations only;
// failed ones are counted in Errors.
func Run(ctx context.Context, cfg Config, op Op) (Result, error) {
	if cfg.Workers < 1 {
		return Result{}, errors.New("loadgen: at least one worker")
	}
	if cfg.Duration <= 0 {
		return Result{}, errors.New("loadgen: duration must be positive")
	}
	type workerStats struct {
		lat    []time.Duration
		errors int
		first  error
	}
	stats := make([]workerStats, cfg.Workers)
	start := time.Now()
	measureFrom := start.Add(cfg.Warmup)
	end := measureFrom.Add(cfg.Duration)
	ctx, cancel := context.WithDeadline(ctx, end.Add(30*time.Second))
	defer cancel()
	var wg sync.WaitGroup
	for w := range cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := &stats[w]
			for n := 0; ctx.Err() == nil; n++ {
				t0 := time.Now()
				if !t0.Before(end) {
					return
				}
				err := op(ctx, w, n)
				d := time.Since(t0)
				if t0.Before(measureFrom) {
					continue
				}
				if err != nil {
					st.errors++
					if st.first == nil {
						st.first = err
					}
					continue
				}
				st.lat = append(st.lat, d)
			}
		}()
	}
	wg.Wait()
	elapsed := min(time.Since(measureFrom), cfg.Duration+time.Since(end))
	var all []time.Duration
	r := Result{Workers: cfg.Workers, Duration: elapsed, Seconds: elapsed.Seconds()}
	for _, st := range stats {
		all = append(all, st.lat...)
		r.Errors += st.errors
		if st.first != nil && r.FirstError == "" {
			r.FirstError = st.first.Error()
		}
	}
	slices.Sort(all)
	r.Ops = len(all)
	if elapsed > 0 {
		r.OpsPerSec = float64(r.Ops) / elapsed.Seconds()
	}
	r.P50, r.P99, r.P999 = quantile(all, 0.50), quantile(all, 0.99), quantile(all, 0.999)
	if len(all) > 0 {
		r.Max = all[len(all)-1]
	}
	r.P50ms, r.P99ms, r.P999ms, r.MaxMs = ms(r.P50), ms(r.P99), ms(r.P999), ms(r.Max)
	return r, ctx.Err()
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// quantile returns the q-quantile of sorted (nearest rank).
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// Print writes r as one readable line.
func (r Result) Print(w io.Writer, label string) {
	fmt.Fprintf(w, "%-12s clients=%-4d ops=%-8d ops/s=%-10.0f p50=%-9s p99=%-9s p99.9=%-9s max=%-9s errors=%d\n",
		label, r.Workers, r.Ops, r.OpsPerSec, r.P50.Round(10*time.Microsecond), r.P99.Round(10*time.Microsecond),
		r.P999.Round(10*time.Microsecond), r.Max.Round(10*time.Microsecond), r.Errors)
	if r.FirstError != "" {
		fmt.Fprintf(w, "%-12s first error: %s\n", "", r.FirstError)
	}
}
