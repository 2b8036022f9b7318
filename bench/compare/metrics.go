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

// sumHistograms is promtext.SumHistograms, with a name that no endpoint
// serves an error: the harness needs every figure it asks for.
func sumHistograms(ctx context.Context, hc *http.Client, urls []string, names ...string) (map[string]promtext.Histogram, error) {
	out, err := promtext.SumHistograms(ctx, hc, urls, names...)
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		if len(out[n].Bounds) == 0 {
			return nil, fmt.Errorf("no histogram %s at %v", n, urls)
		}
	}
	return out, nil
}
