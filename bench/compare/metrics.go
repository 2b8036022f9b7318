package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
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
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	v, found, err := parseCounter(io.LimitReader(resp.Body, 32<<20), name)
	if err != nil {
		return 0, fmt.Errorf("scrape %s: %w", url, err)
	}
	if !found {
		return 0, fmt.Errorf("scrape %s: no metric %s", url, name)
	}
	return v, nil
}

// parseCounter sums the samples of metric name in Prometheus text format.
func parseCounter(r io.Reader, name string) (sum float64, found bool, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		// name[{labels}] value [timestamp]
		if strings.HasPrefix(rest, "{") {
			_, rest, _ = strings.Cut(rest, "}")
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return 0, false, fmt.Errorf("malformed sample %q", line)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return 0, false, fmt.Errorf("malformed sample %q: %w", line, err)
		}
		sum += v
		found = true
	}
	return sum, found, sc.Err()
}
