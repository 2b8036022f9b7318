package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/devcluster"
	"github.com/nodedb/nodedb-cluster/internal/loadgen"
)

func TestBenchCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    loadgen.Result
		want []string // substrings of the error; none: the check passes
	}{
		{"closed loop, clean", loadgen.Result{Ops: 10, OpsPerSec: 5}, nil},
		{"fixed rate, on target", loadgen.Result{Rate: 200, Ops: 1000, OpsPerSec: 199.8}, nil},
		{"fixed rate, at 90%", loadgen.Result{Rate: 200, Ops: 900, OpsPerSec: 180}, nil},
		{"errors", loadgen.Result{Ops: 10, OpsPerSec: 200, Rate: 200, Errors: 2, FirstError: "unavailable"},
			[]string{"2 of 12 requests failed", "unavailable"}},
		{"nothing succeeded", loadgen.Result{}, []string{"no request succeeded"}},
		{"below the rate", loadgen.Result{Rate: 200, Ops: 800, OpsPerSec: 160, Missed: 150, MaxLateness: time.Second},
			[]string{"achieved 160.0 ops/s, below 90% of --rate 200", "150 scheduled requests missed: not started within 1s"}},
	} {
		err := checkResult(tc.r)
		if (err != nil) != (len(tc.want) > 0) {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q lacks %q", tc.name, err, w)
			}
		}
	}
}

func TestPreloadPutsEveryKeyOnceAndStopsAtAnError(t *testing.T) {
	var mu sync.Mutex
	seen := map[int]int{}
	err := preload(context.Background(), 8, 100, func(_ context.Context, i int) error {
		mu.Lock()
		defer mu.Unlock()
		seen[i]++
		return nil
	})
	if err != nil || len(seen) != 100 {
		t.Fatalf("%d keys, %v", len(seen), err)
	}
	for i, n := range seen {
		if n != 1 || i < 0 || i >= 100 {
			t.Fatalf("key %d put %d times", i, n)
		}
	}
	boom := errors.New("boom")
	calls := 0
	err = preload(context.Background(), 1, 100, func(_ context.Context, i int) error {
		calls++
		if i == 3 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "load key 3") || calls != 4 {
		t.Fatalf("err %v after %d calls", err, calls)
	}
}

// TestBenchAtAFixedRateWithCheck runs the CI smoke's bench against a
// one-node dev cluster: a low fixed rate passes --check, and --check fails
// when the rate cannot be reached with the clients given.
func TestBenchAtAFixedRateWithCheck(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := devcluster.Start(ctx, t.TempDir(), devcluster.Shape{Nodes: 1, Groups: 2, VShards: 16, RF: 1}, 0, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	bench := func(args ...string) (benchReport, string, error) {
		cmd := newBenchCommand()
		cmd.SilenceUsage, cmd.SilenceErrors = true, true
		var out, errOut bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&errOut)
		cmd.SetArgs(append([]string{"--endpoints", strings.Join(c.APIs, ","), "--workload", "mixed", "--keys", "50",
			"--value-size", "64", "--duration", "1s", "--warmup", "200ms", "--json", "--check"}, args...))
		err := cmd.ExecuteContext(ctx)
		var rep benchReport
		if jerr := json.Unmarshal(out.Bytes(), &rep); jerr != nil {
			t.Fatalf("bench %v: %v, output %s", args, jerr, out.String())
		}
		return rep, errOut.String(), err
	}
	rep, stderr, err := bench("--rate", "100", "--clients", "4")
	if err != nil || !strings.Contains(stderr, "check passed") {
		t.Fatalf("--rate 100: %v %s: %+v", err, stderr, rep)
	}
	// 100 slots in the measured second; a healthy node runs them all.
	if rep.Rate != 100 || rep.Errors != 0 || rep.Ops+rep.Missed != 100 || rep.OpsPerSec < 90 {
		t.Fatalf("--rate 100: %+v", rep)
	}
	// The node's own timings of the measured window come with the report:
	// about a tenth of the requests were writes, each a proposal with a
	// synced append.
	if s := rep.Server; s == nil || s.Nodes != 1 || s.Proposals.Count == 0 || s.Proposals.Count > uint64(rep.Ops)+50 ||
		!(s.Proposals.P50ms > 0 && s.Proposals.P50ms <= s.Proposals.P99ms) || s.Appends.Count == 0 || s.WALSyncs.Count == 0 {
		t.Fatalf("--rate 100: server timings %+v for %d ops", rep.Server, rep.Ops)
	}
	// One client, one request at a time over HTTP, cannot make a million
	// a second: the check fails and says why.
	rep, _, err = bench("--rate", "1000000", "--clients", "1", "--duration", "100ms", "--warmup", "0s")
	if err == nil || !strings.Contains(err.Error(), "below 90% of --rate 1e+06") || rep.Missed == 0 {
		t.Fatalf("--rate 1e6 with one client: %v: %+v", err, rep)
	}
}
