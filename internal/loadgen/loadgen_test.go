package loadgen

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestRunCountsOpsErrorsAndQuantiles(t *testing.T) {
	op := func(ctx context.Context, w, n int) error {
		if n%10 == 9 {
			return errors.New("boom")
		}
		time.Sleep(time.Millisecond)
		return nil
	}
	r, err := Run(context.Background(), Config{Workers: 4, Duration: 300 * time.Millisecond}, op)
	if err != nil {
		t.Fatal(err)
	}
	if r.Ops == 0 || r.Errors == 0 || r.FirstError != "boom" {
		t.Fatalf("result %+v", r)
	}
	// 9 of every 10 operations succeed.
	if ratio := float64(r.Errors) / float64(r.Ops+r.Errors); ratio < 0.05 || ratio > 0.15 {
		t.Fatalf("error ratio %.2f, want about 0.1", ratio)
	}
	if r.P50 < time.Millisecond || r.P50 > r.P99 || r.P99 > r.P999 || r.P999 > r.Max {
		t.Fatalf("quantiles out of order: %+v", r)
	}
	if r.OpsPerSec <= 0 || r.Seconds < 0.25 || r.Seconds > 1 {
		t.Fatalf("rate %+v", r)
	}
}

func TestQuantile(t *testing.T) {
	var s []time.Duration
	for i := 1; i <= 1000; i++ {
		s = append(s, time.Duration(i))
	}
	for q, want := range map[float64]time.Duration{0.5: 500, 0.99: 990, 0.999: 999} {
		if got := quantile(s, q); got != want {
			t.Errorf("q%.3f = %d, want %d", q, got, want)
		}
	}
	if quantile(nil, 0.5) != 0 {
		t.Error("empty")
	}
}

func TestRunRefusesBadConfig(t *testing.T) {
	if _, err := Run(context.Background(), Config{}, nil); err == nil {
		t.Fatal("zero workers accepted")
	}
}

// takeAll drains p at a fixed now and returns the slots.
func takeAll(p *pacer, now time.Duration) []slot {
	var out []slot
	for {
		s, ok := p.take(now)
		if !ok {
			return out
		}
		out = append(out, s)
	}
}

func TestPacerSchedulesSlotsInOrderAtFixedIntervals(t *testing.T) {
	// 100 ops/s for 1 s after 200 ms of warm-up: slots every 10 ms, the
	// first 20 in the warm-up, 120 in all.
	p, err := newPacer(Config{Workers: 4, Rate: 100, Warmup: 200 * time.Millisecond, Duration: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if p.interval != 10*time.Millisecond || p.first != 20 || p.total != 120 || p.maxLate != time.Second {
		t.Fatalf("pacer %+v", p)
	}
	// A caller that is always on time (now = the slot's own time) gets
	// every slot once, in order, and misses none.
	var got []slot
	for now := time.Duration(0); ; now += 10 * time.Millisecond {
		s, ok := p.take(now)
		if !ok {
			break
		}
		got = append(got, s)
	}
	if len(got) != 120 {
		t.Fatalf("%d slots, want 120", len(got))
	}
	measured := 0
	for i, s := range got {
		if s.index != int64(i) || s.at != time.Duration(i)*10*time.Millisecond {
			t.Fatalf("slot %d = %+v", i, s)
		}
		if s.measured != (i >= 20) {
			t.Fatalf("slot %d measured=%v", i, s.measured)
		}
		if s.measured {
			measured++
		}
	}
	if measured != 100 || p.missed != 0 || p.missedMeasured() != 0 {
		t.Fatalf("measured %d, missed %d", measured, p.missed)
	}
	if _, ok := p.take(time.Hour); ok {
		t.Fatal("slot after the end of the schedule")
	}
}

func TestPacerHandsOutFutureSlotsWithoutSkipping(t *testing.T) {
	// Callers ahead of the schedule (workers idle at the start) get the
	// next slots, to wait for; nothing is skipped.
	p, err := newPacer(Config{Workers: 8, Rate: 1000, Duration: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	got := takeAll(p, 0)
	if len(got) != 50 || got[49].at != 49*time.Millisecond || p.missed != 0 {
		t.Fatalf("%d slots, last %+v, missed %d", len(got), got[len(got)-1], p.missed)
	}
}

func TestPacerBoundsTheBacklog(t *testing.T) {
	// 1000 ops/s; a slot not started within 10 ms of its time is skipped.
	// A caller that stalls for 100 ms finds slots 1-100 due: 1-89 are over
	// 10 ms late and skipped, and it gets 90-100 before the future ones.
	p, err := newPacer(Config{Workers: 1, Rate: 1000, Duration: time.Second, MaxLateness: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := p.take(0); s.index != 0 {
		t.Fatalf("first slot %+v", s)
	}
	s, ok := p.take(100 * time.Millisecond)
	if !ok || s.index != 90 || p.missed != 89 {
		t.Fatalf("after a stall: slot %+v, missed %d; want slot 90, 89 missed", s, p.missed)
	}
	for want := int64(91); want <= 100; want++ {
		if s, _ := p.take(100 * time.Millisecond); s.index != want {
			t.Fatalf("slot %d, want %d", s.index, want)
		}
	}
	// The backlog is drained: the next slot is in the future.
	if s, _ := p.take(100 * time.Millisecond); s.index != 101 || s.at <= 100*time.Millisecond {
		t.Fatalf("slot %+v", s)
	}
	// A stall past the end plus the lateness bound: nothing is left to
	// run, so a stalled run ends instead of draining its backlog.
	if rest := takeAll(p, time.Second+10*time.Millisecond); len(rest) != 0 {
		t.Fatalf("%d slots after the end, from %+v", len(rest), rest[0])
	}
	if p.missed != 89+898 || p.missedMeasured() != p.missed {
		t.Fatalf("missed %d (measured %d), want %d", p.missed, p.missedMeasured(), 89+898)
	}
	// Every slot was either taken (0, 90-100, 101) or missed, once.
	if got := 1 + 11 + 1 + p.missed; got != 1000 {
		t.Fatalf("accounted %d slots", got)
	}
}

func TestPacerCountsOnlyMeasuredMisses(t *testing.T) {
	// 100 ops/s, 100 ms warm-up (slots 0-9), lateness bound 45 ms. A first
	// call at 150 ms skips the slots before 105 ms, 0-10: ten in the
	// warm-up, one measured.
	p, err := newPacer(Config{Workers: 1, Rate: 100, Warmup: 100 * time.Millisecond, Duration: time.Second, MaxLateness: 45 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	s, ok := p.take(150 * time.Millisecond)
	if !ok || s.index != 11 || !s.measured || p.missed != 11 || p.missedMeasured() != 1 {
		t.Fatalf("slot %+v, missed %d (measured %d)", s, p.missed, p.missedMeasured())
	}
}

func TestPacerRefusesAnImpossibleRate(t *testing.T) {
	if _, err := newPacer(Config{Workers: 1, Rate: 2e9, Duration: time.Second}); err == nil {
		t.Fatal("rate above one per nanosecond accepted")
	}
	for _, cfg := range []Config{
		{Workers: 1, Duration: time.Second, Rate: -1},
		{Workers: 1, Duration: time.Second, MaxLateness: -1},
		{Workers: 1, Duration: time.Second, Warmup: -time.Second},
	} {
		if _, err := Run(context.Background(), cfg, nil); err == nil {
			t.Fatalf("config %+v accepted", cfg)
		}
	}
}

func TestRunAtAFixedRateIssuesTheSchedule(t *testing.T) {
	// 2000 ops/s for 100 ms after 50 ms of warm-up: 300 slots, 200 of them
	// measured. Every slot runs once (or, on a machine stalled for over a
	// second, is counted missed); the warm-up's are not counted, and each
	// worker numbers its calls.
	var calls atomic.Int64
	var mu sync.Mutex
	seen := map[[2]int]bool{}
	op := func(ctx context.Context, w, n int) error {
		mu.Lock()
		defer mu.Unlock()
		if seen[[2]int{w, n}] {
			t.Errorf("worker %d call %d twice", w, n)
		}
		seen[[2]int{w, n}] = true
		if calls.Add(1)%20 == 0 {
			return errors.New("boom")
		}
		return nil
	}
	r, err := Run(context.Background(), Config{Workers: 4, Rate: 2000, Warmup: 50 * time.Millisecond, Duration: 100 * time.Millisecond}, op)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Ops + r.Errors + r.Missed; got != 200 {
		t.Fatalf("ops %d + errors %d + missed %d = %d, want the 200 measured slots", r.Ops, r.Errors, r.Missed, got)
	}
	if n := calls.Load(); n > 300 || n < int64(200-r.Missed) {
		t.Fatalf("%d calls for 300 slots", n)
	}
	if r.Errors == 0 || r.FirstError != "boom" || r.Rate != 2000 {
		t.Fatalf("result %+v", r)
	}
	// The measured time is at least the schedule's span, so the rate is
	// at most the target.
	if r.Duration < 100*time.Millisecond || r.OpsPerSec > 2000 {
		t.Fatalf("duration %s, ops/s %.0f", r.Duration, r.OpsPerSec)
	}
}

func TestRunAtAFixedRateCountsQueueingInLatency(t *testing.T) {
	// One worker, an operation every millisecond, each taking at least 5:
	// the worker falls behind, and latency measured from the scheduled
	// start grows well past the operation's own time. Slots more than
	// 20 ms late are skipped instead of queueing them all.
	op := func(ctx context.Context, w, n int) error {
		time.Sleep(5 * time.Millisecond)
		return nil
	}
	r, err := Run(context.Background(), Config{Workers: 1, Rate: 1000, Duration: 200 * time.Millisecond, MaxLateness: 20 * time.Millisecond}, op)
	if err != nil {
		t.Fatal(err)
	}
	if r.Missed == 0 || r.Ops+r.Missed != 200 || r.Errors != 0 {
		t.Fatalf("ops %d, missed %d, errors %d", r.Ops, r.Missed, r.Errors)
	}
	if r.Max < 15*time.Millisecond || r.P50 < 5*time.Millisecond {
		t.Fatalf("max latency %s, p50 %s: queueing not counted", r.Max, r.P50)
	}
	// Most slots were missed, so the achieved rate is far below the target.
	if r.OpsPerSec > 500 {
		t.Fatalf("ops/s %.0f with one 5 ms worker", r.OpsPerSec)
	}
}
