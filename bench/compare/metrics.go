package main

import (
	"context"
	"fmt"
	"net/http"

	"github.com/nodedb/nodedb-cluster/internal/promtext"
)

// sumCounter fetches each Prometheus text endpoint in urls and sums the
// samples of the metric called name (every label set).
func sumCounter(ctx context.Context, hc *http.Client, urls []string, name string) (float64, error) {
	var sum float64
	for _, u := range urls {
		v, err := scrapeCounter(ctx, hc, u, name)
		if err != nil {
			return 0, err
		}
		sum += v
	}
	return sum, nil
}

func scrapeCounter(ctx context.Context, hc *http.Client, url, name string) (float64, error) {
	v, found, err := promtext.Scrape(ctx, hc, url, name)
	if err != nil {
		return 0, err
	}
	if !found {
		return 0, fmt.Errorf("scrape %s: no metric %s", url, name)
	}
	return v, nil
}
