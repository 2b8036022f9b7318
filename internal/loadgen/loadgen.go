// Package loadgen runs a load of N workers for a duration and summarizes
// throughput and latency. Closed loop (the default), each worker issues one
// operation at a time, back to back. At a fixed rate (Config.Rate), the
// operations are scheduled at fixed intervals and the workers take the
// slots in order; latency counts from the scheduled start, so time spent
// waiting for a free worker (queueing) shows in it. The operation is the
// caller's (the bench command plugs in the Go client), so the runner is
// tested without a cluster.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
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
	// Rate, if positive, paces the run at Rate operations per second in
	// total (open loop): operation k is scheduled at k/Rate seconds from
	// the start, whether or not earlier ones have returned, and runs on
	// the next free worker (so Workers bounds the operations in flight).
	// 0 runs closed loop.
	Rate float64
	// MaxLateness bounds the backlog at a fixed rate: an operation that
	// has not started within MaxLateness of its scheduled time (every
	// worker busy) is skipped and counted in Result.Missed, so a stalled
	// target neither gets the backlog in a burst later nor keeps the run
	// going long past its end. 0 means one second.
	MaxLateness time.Duration
}

// DefaultMaxLateness is the backlog bound of a fixed-rate run.
const DefaultMaxLateness = time.Second

// Result summarizes a run.
type Result struct {
	Workers int `json:"clients"`
	// Rate is Config.Rate (0: closed loop), MaxLateness the backlog bound
	// that applied.
	Rate        float64       `json:"target_ops_per_sec,omitempty"`
	MaxLateness time.Duration `json:"-"`
	// Duration is the measured time. Closed loop, it runs until the last
	// operation returned. At a fixed rate, it is the schedule's span
	// (Config.Duration), or longer when the operations started late: until
	// the last measured one started. One slow reply at the end does not
	// lower OpsPerSec; a target that cannot keep up with Rate does.
	Duration time.Duration `json:"-"`
	Seconds  float64       `json:"seconds"`
	// Ops counts the operations that succeeded, Errors those that failed,
	// Missed (at a fixed rate) the scheduled ones skipped because they
	// could not start within Config.MaxLateness.
	Ops       int           `json:"ops"`
	Errors    int           `json:"errors"`
	Missed    int           `json:"missed,omitempty"`
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

type workerStats struct {
	lat    []time.Duration
	errors int
	first  error
}

func (st *workerStats) record(d time.Duration, err error) {
	if err != nil {
		st.errors++
		if st.first == nil {
			st.first = err
		}
		return
	}
	st.lat = append(st.lat, d)
}

// Run runs op on cfg.Workers workers until cfg.Duration has passed (after
// the warm-up) or ctx ends: closed loop, or paced at cfg.Rate. Latencies
// count successful operations only; failed ones are counted in Errors.
func Run(ctx context.Context, cfg Config, op Op) (Result, error) {
	if cfg.Workers < 1 {
		return Result{}, errors.New("loadgen: at least one worker")
	}
	if cfg.Duration <= 0 {
		return Result{}, errors.New("loadgen: duration must be positive")
	}
	if cfg.Warmup < 0 || cfg.Rate < 0 || math.IsNaN(cfg.Rate) || math.IsInf(cfg.Rate, 0) || cfg.MaxLateness < 0 {
		return Result{}, errors.New("loadgen: warm-up, rate and lateness must not be negative")
	}
	var p *pacer
	if cfg.Rate > 0 {
		var err error
		if p, err = newPacer(cfg); err != nil {
			return Result{}, err
		}
	}
	stats := make([]workerStats, cfg.Workers)
	lastStart := make([]time.Time, cfg.Workers)
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
			if p != nil {
				lastStart[w] = paced(ctx, p, start, w, op, &stats[w])
				return
			}
			st := &stats[w]
			// A context of the worker's own: the contexts the client
			// derives for each request then never contend on a lock
			// shared by every worker.
			ctx, stop := context.WithCancel(ctx)
			defer stop()
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
				st.record(d, err)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(measureFrom)
	r := Result{Workers: cfg.Workers, Rate: cfg.Rate}
	if p != nil {
		elapsed = cfg.Duration
		for _, t := range lastStart {
			elapsed = max(elapsed, t.Sub(measureFrom))
		}
		r.Missed, r.MaxLateness = int(p.missedMeasured()), p.maxLate
	}
	r.Duration, r.Seconds = elapsed, elapsed.Seconds()
	var all []time.Duration
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

// paced is one worker of a fixed-rate run: it takes the pacer's slots in
// order, waits for each one's scheduled time, runs op and records the
// latency from the scheduled time. It returns when the last measured
// operation it ran started (zero if none).
func paced(ctx context.Context, p *pacer, start time.Time, w int, op Op, st *workerStats) (lastStart time.Time) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for n := 0; ctx.Err() == nil; n++ {
		s, ok := p.take(time.Since(start))
		if !ok {
			return lastStart
		}
		at := start.Add(s.at)
		if wait := time.Until(at); wait > 0 {
			if timer == nil {
				timer = time.NewTimer(wait)
			} else {
				timer.Reset(wait)
			}
			select {
			case <-ctx.Done():
				return lastStart
			case <-timer.C:
			}
		}
		t0 := time.Now()
		err := op(ctx, w, n)
		d := time.Since(at)
		if !s.measured {
			continue
		}
		lastStart = t0
		st.record(d, err)
	}
	return lastStart
}

// slot is one scheduled operation of a fixed-rate run.
type slot struct {
	index    int64
	at       time.Duration // scheduled start, from the run's start
	measured bool          // after the warm-up
}

// pacer hands out the slots of a fixed-rate schedule in order. It is pure
// logic over the time elapsed since the start, which the caller passes in,
// so it is tested without clocks.
type pacer struct {
	interval time.Duration
	// first is the first measured slot; total the number of slots (slot
	// k runs at k*interval, before Warmup+Duration).
	first, total int64
	maxLate      time.Duration

	mu             sync.Mutex
	next           int64
	missed, missMe int64 // skipped slots; those of them measured
}

func newPacer(cfg Config) (*pacer, error) {
	interval := time.Duration(float64(time.Second) / cfg.Rate)
	if interval <= 0 {
		return nil, fmt.Errorf("loadgen: rate %g is too high", cfg.Rate)
	}
	p := &pacer{
		interval: interval,
		maxLate:  cfg.MaxLateness,
	}
	p.first, p.total = p.slotsBefore(cfg.Warmup), p.slotsBefore(cfg.Warmup+cfg.Duration)
	if p.maxLate == 0 {
		p.maxLate = DefaultMaxLateness
	}
	return p, nil
}

// slotsBefore is the number of slots scheduled before d.
func (p *pacer) slotsBefore(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + p.interval - 1) / p.interval)
}

// take returns the next slot to run, now being the time since the start.
// Slots are handed out in order, each once; the returned one may lie in
// the future (the caller waits for it). Slots scheduled more than maxLate
// before now are skipped and counted as missed. ok is false once the
// schedule is exhausted.
func (p *pacer) take(now time.Duration) (s slot, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if late := min(p.slotsBefore(now-p.maxLate), p.total); late > p.next {
		p.missed += late - p.next
		// The skipped slots [next, late) that are measured.
		p.missMe += max(0, late-max(p.next, p.first))
		p.next = late
	}
	if p.next >= p.total {
		return slot{}, false
	}
	s = slot{index: p.next, at: time.Duration(p.next) * p.interval, measured: p.next >= p.first}
	p.next++
	return s, true
}

// missedMeasured is the number of measured slots skipped.
func (p *pacer) missedMeasured() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.missMe
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

// Print writes r as one readable line (two with a fixed rate's target and
// misses, one more with an error).
func (r Result) Print(w io.Writer, label string) {
	fmt.Fprintf(w, "%-12s clients=%-4d ops=%-8d ops/s=%-10.0f p50=%-9s p99=%-9s p99.9=%-9s max=%-9s errors=%d\n",
		label, r.Workers, r.Ops, r.OpsPerSec, r.P50.Round(10*time.Microsecond), r.P99.Round(10*time.Microsecond),
		r.P999.Round(10*time.Microsecond), r.Max.Round(10*time.Microsecond), r.Errors)
	if r.Rate > 0 {
		fmt.Fprintf(w, "%-12s target %g ops/s, achieved %.1f%%, %d scheduled operations missed (not started within %s); latency counts from the scheduled start\n",
			"", r.Rate, 100*r.OpsPerSec/r.Rate, r.Missed, r.MaxLateness)
	}
	if r.FirstError != "" {
		fmt.Fprintf(w, "%-12s first error: %s\n", "", r.FirstError)
	}
}
