package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/promtext"
)

// The server-side histograms bench reads from every endpoint's /metrics
// around the measured window: where a write's time went inside the
// cluster, beside the client's own latency.
const (
	histProposal = "nodedb_raft_proposal_duration_seconds"
	histAppend   = "nodedb_raft_append_duration_seconds"
	histWALSync  = "nodedb_storage_wal_sync_duration_seconds"
)

// serverTimings is the cluster's side of a bench run: its histograms over
// the measured window, summed over the endpoints, in milliseconds.
type serverTimings struct {
	Nodes     int          `json:"nodes"`
	Proposals latencyStats `json:"proposals"`
	Appends   latencyStats `json:"log_appends"`
	WALSyncs  latencyStats `json:"wal_syncs"`
}

type latencyStats struct {
	Count  uint64  `json:"count"`
	MeanMs float64 `json:"mean_ms"`
	P50ms  float64 `json:"p50_ms"`
	P99ms  float64 `json:"p99_ms"`
}

func statsOf(h promtext.Histogram) latencyStats {
	if h.Count == 0 {
		return latencyStats{}
	}
	return latencyStats{Count: h.Count, MeanMs: h.Mean() * 1e3, P50ms: h.Quantile(0.5) * 1e3, P99ms: h.Quantile(0.99) * 1e3}
}

// scrapeServerHistograms reads the three histograms from every endpoint
// (base URLs), summed over them.
func scrapeServerHistograms(ctx context.Context, hc *http.Client, urls []string) (map[string]promtext.Histogram, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	metrics := make([]string, len(urls))
	for i, u := range urls {
		metrics[i] = u + "/metrics"
	}
	return promtext.SumHistograms(ctx, hc, metrics, histProposal, histAppend, histWALSync)
}

// serverTimingsBetween is what each histogram sampled between the two
// readings, over nodes endpoints.
func serverTimingsBetween(nodes int, before, after map[string]promtext.Histogram) *serverTimings {
	diff := func(name string) latencyStats { return statsOf(after[name].Sub(before[name])) }
	return &serverTimings{Nodes: nodes, Proposals: diff(histProposal), Appends: diff(histAppend), WALSyncs: diff(histWALSync)}
}

// print writes the timings as one line per histogram that has samples.
func (s *serverTimings) print(w io.Writer, ops int) {
	line := func(what string, st latencyStats, extra string) {
		if st.Count == 0 {
			return
		}
		fmt.Fprintf(w, "  %-12s n=%-9d mean=%.3fms p50=%.3fms p99=%.3fms%s\n", what, st.Count, st.MeanMs, st.P50ms, st.P99ms, extra)
	}
	if s.Proposals.Count == 0 && s.Appends.Count == 0 && s.WALSyncs.Count == 0 {
		fmt.Fprintf(w, "server side, %d nodes: no proposals, log appends or WAL syncs in the measured window\n", s.Nodes)
		return
	}
	fmt.Fprintf(w, "server side, %d nodes summed (from their /metrics over the measured window):\n", s.Nodes)
	line("proposals", s.Proposals, "  (leader: proposed to applied and answered)")
	line("log appends", s.Appends, "  (queued to durable)")
	perOp := ""
	if ops > 0 {
		perOp = fmt.Sprintf("  (%.3f per op)", float64(s.WALSyncs.Count)/float64(ops))
	}
	line("WAL syncs", s.WALSyncs, perOp)
}

// histogramWindow reads the servers' histograms when the warm-up ends and
// again when asked, for bench's report. A cluster that does not serve them
// (an older one, or metrics unreachable) gives no report, and the run goes
// on without it.
type histogramWindow struct {
	ctx    context.Context
	hc     *http.Client
	urls   []string
	timer  *time.Timer
	done   chan struct{}
	before map[string]promtext.Histogram
	err    error
}

func startHistogramWindow(ctx context.Context, hc *http.Client, urls []string, warmup time.Duration) *histogramWindow {
	w := &histogramWindow{ctx: ctx, hc: hc, urls: urls, done: make(chan struct{})}
	w.timer = time.AfterFunc(warmup, func() {
		defer close(w.done)
		w.before, w.err = scrapeServerHistograms(ctx, hc, urls)
	})
	return w
}

// end returns the timings since the warm-up ended, or an error saying why
// there are none.
func (w *histogramWindow) end() (*serverTimings, error) {
	if w.timer.Stop() {
		return nil, fmt.Errorf("the run ended before its warm-up did")
	}
	<-w.done
	if w.err != nil {
		return nil, w.err
	}
	after, err := scrapeServerHistograms(w.ctx, w.hc, w.urls)
	if err != nil {
		return nil, err
	}
	return serverTimingsBetween(len(w.urls), w.before, after), nil
}

// serverNote is how bench reports missing server timings: one line, not an
// error (the client's figures stand on their own).
func serverNote(err error) string {
	return "server side: no histograms (" + strings.TrimSpace(err.Error()) + ")"
}
