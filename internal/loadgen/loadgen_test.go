package loadgen

import (
	"context"
	"errors"
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
