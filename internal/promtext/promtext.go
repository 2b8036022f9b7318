// Package promtext reads samples out of Prometheus' text exposition format:
// what tests and the comparison harness need from a node's (or etcd's)
// /metrics, without a client library.
package promtext

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// maxBody bounds the /metrics body Scrape reads.
const maxBody = 32 << 20

// Scrape fetches url (a /metrics endpoint) with hc and sums the samples of
// the metric called name, every label set; found is false when there is
// none.
func Scrape(ctx context.Context, hc *http.Client, url, name string) (sum float64, found bool, err error) {
	err = fetch(ctx, hc, url, func(r io.Reader) error {
		sum, found, err = Sum(r, name)
		return err
	})
	return sum, found, err
}

// fetch GETs url with hc and hands read its body (at most maxBody bytes);
// errors say which url.
func fetch(ctx context.Context, hc *http.Client, url string, read func(io.Reader) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	if err := read(io.LimitReader(resp.Body, maxBody)); err != nil {
		return fmt.Errorf("scrape %s: %w", url, err)
	}
	return nil
}

// Sum sums the samples of metric name in Prometheus text format; found is
// false when there is none.
func Sum(r io.Reader, name string) (sum float64, found bool, err error) {
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
