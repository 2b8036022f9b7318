package main

import (
	"context"
	"fmt"
	"net/http"

	"github.com/nodedb/nodedb-cluster/internal/promtext"
)

// serverHistograms is what runWorkload reads of a system's histograms
// around a run, summed over its servers.
type serverHistograms struct {
	walSync  promtext.Histogram
	proposal promtext.Histogram // ours only
}

// sumHistograms fetches each endpoint in urls and sums the histograms
// called names over them; a name that no endpoint serves is an error.
func sumHistograms(ctx context.Context, hc *http.Client, urls []string, names ...string) (map[string]promtext.Histogram, error) {
	out := map[string]promtext.Histogram{}
	for _, u := range urls {
		hs, err := promtext.ScrapeHistograms(ctx, hc, u, names...)
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			out[n] = out[n].Add(hs[n])
		}
	}
	for _, n := range names {
		if _, ok := out[n]; !ok || len(out[n].Bounds) == 0 {
			return nil, fmt.Errorf("no histogram %s at %v", n, urls)
		}
	}
	return out, nil
}
