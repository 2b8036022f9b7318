package main

import (
	"context"
	"slices"
	"sync"
	"time"
)

// op performs one operation for worker w.
type op func(ctx context.Context, w int) error

// runConfig shapes one closed-loop run.
type runConfig struct {
	Workers  int
	Warmup   time.Duration
	Duration time.Duration
	// OpTimeout bounds one operation (its context).
	OpTimeout time.Duration
	// OnMeasure is called when the measured window starts, and OnEnd once
	// every worker has stopped (to sample the servers' CPU).
	OnMeasure, OnEnd func()
}

// runResult summarizes the measured window of a run.
type runResult struct {
	Ops        int
	Errors     int
	Seconds    float64
	OpsPerSec  float64
	P50        time.Duration
	P99        time.Duration
	P999       time.Duration
	Max        time.Duration
	FirstError string
}

// run is a closed loop, the same for both systems: cfg.Workers goroutines,
// each issuing one operation at a time (the next as soon as the last one
// returned) for cfg.Warmup and then cfg.Duration. Operations that started
// during the warm-up are not counted; latencies are of successful
// operations, failed ones count as errors.
func run(ctx context.Context, cfg runConfig, f op) runResult {
	type stats struct {
		lat    []time.Duration
		errors int
		first  error
	}
	st := make([]stats, cfg.Workers)
	start := time.Now()
	measureFrom := start.Add(cfg.Warmup)
	end := measureFrom.Add(cfg.Duration)
	measured := make(chan struct{})
	measureTimer := time.AfterFunc(cfg.Warmup, func() {
		if cfg.OnMeasure != nil {
			cfg.OnMeasure()
		}
		close(measured)
	})
	var wg sync.WaitGroup
	for w := range cfg.Workers {
		wg.Go(func() {
			s := &st[w]
			s.lat = make([]time.Duration, 0, 4096)
			// Each worker's operations derive from a context of its own:
			// 256 workers making each operation's context straight from
			// ctx contend on ctx's lock (a tenth of the load generator's
			// CPU), for both systems alike.
			ctx, stop := context.WithCancel(ctx)
			defer stop()
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(end) {
					return
				}
				octx, cancel := context.WithTimeout(ctx, cfg.OpTimeout)
				err := f(octx, w)
				cancel()
				d := time.Since(t0)
				if t0.Before(measureFrom) {
					continue
				}
				if err != nil {
					s.errors++
					if s.first == nil {
						s.first = err
					}
					continue
				}
				s.lat = append(s.lat, d)
			}
		})
	}
	wg.Wait()
	stopped := time.Now()
	if measureTimer.Stop() {
		close(measured) // cancelled during the warm-up: OnMeasure never ran
	}
	<-measured
	if cfg.OnEnd != nil {
		cfg.OnEnd()
	}
	elapsed := stopped.Sub(measureFrom)
	var all []time.Duration
	r := runResult{Seconds: elapsed.Seconds()}
	for _, s := range st {
		all = append(all, s.lat...)
		r.Errors += s.errors
		if s.first != nil && r.FirstError == "" {
			r.FirstError = s.first.Error()
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
	return r
}

// quantile returns the q-quantile of sorted (nearest rank).
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}
