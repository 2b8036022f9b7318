package main

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"
)

func TestQuantile(t *testing.T) {
	var s []time.Duration
	for i := 1; i <= 1000; i++ {
		s = append(s, time.Duration(i))
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500}, {0.99, 990}, {0.999, 999}, {1, 1000}, {0, 1}} {
		if got := quantile(s, c.q); got != c.want {
			t.Errorf("quantile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
	if quantile(nil, 0.5) != 0 {
		t.Error("quantile of nothing")
	}
}

func TestRunCountsOnlyTheMeasuredWindow(t *testing.T) {
	var measured, ended bool
	r := run(context.Background(), runConfig{
		Workers: 4, Warmup: 50 * time.Millisecond, Duration: 200 * time.Millisecond, OpTimeout: time.Second,
		OnMeasure: func() { measured = true },
		OnEnd:     func() { ended = true },
	}, func(ctx context.Context, w int) error {
		time.Sleep(time.Millisecond)
		if w == 3 {
			return errors.New("boom")
		}
		return nil
	})
	if !measured || !ended {
		t.Fatalf("hooks: measure %v end %v", measured, ended)
	}
	if r.Seconds < 0.19 || r.Seconds > 0.5 {
		t.Errorf("measured %vs, want about 0.2", r.Seconds)
	}
	// 3 workers at about 1 ms per op for 0.2 s; warm-up ops are not counted.
	if r.Ops < 150 || r.Ops > 3*200+3 {
		t.Errorf("%d ops", r.Ops)
	}
	if r.Errors == 0 || r.FirstError != "boom" {
		t.Errorf("errors %d %q", r.Errors, r.FirstError)
	}
	if r.P50 < time.Millisecond || r.P99 < r.P50 || r.P999 < r.P99 {
		t.Errorf("quantiles %v %v %v", r.P50, r.P99, r.P999)
	}
}

func TestCPUSecondsOfThisProcess(t *testing.T) {
	end := time.Now().Add(100 * time.Millisecond)
	for time.Now().Before(end) {
	}
	s, err := cpuSeconds(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s < 0.05 {
		t.Errorf("cpu %v after 100ms of spinning", s)
	}
}

func TestReadyWantsSpreadLeaders(t *testing.T) {
	st := clusterStatus{}
	for i := uint64(1); i <= 3; i++ {
		st.Nodes = append(st.Nodes, struct {
			ID    uint64 `json:"id"`
			State string `json:"state"`
		}{i, "active"})
	}
	group := func(id, leader uint64) {
		st.Groups = append(st.Groups, struct {
			ID       uint64   `json:"id"`
			Voters   []uint64 `json:"voters"`
			Learners []uint64 `json:"learners"`
			Leader   uint64   `json:"leader"`
		}{ID: id, Voters: []uint64{1, 2, 3}, Leader: leader})
	}
	group(0, 1)
	for g := uint64(1); g <= 4; g++ {
		group(g, 1)
	}
	if ok, _ := st.ready(3); ok {
		t.Fatal("all leaders on node 1 counted as spread")
	}
	st.Groups[2].Leader, st.Groups[3].Leader = 2, 3
	if ok, why := st.ready(3); !ok {
		t.Fatalf("not ready: %s", why)
	}
}

func TestPortsAreDistinct(t *testing.T) {
	seen := map[string]bool{}
	for range 50 {
		a, err := freeAddr()
		if err != nil {
			t.Fatal(err)
		}
		if seen[a] {
			t.Fatalf("%s handed out twice", a)
		}
		seen[a] = true
	}
}
