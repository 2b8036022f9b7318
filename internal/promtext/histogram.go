package promtext

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Histogram is a Prometheus histogram summed over every label set (every
// node of a cluster, say): cumulative counts per upper bound, ascending, the
// +Inf bucket being Count.
type Histogram struct {
	Bounds []float64 // upper bounds of the finite buckets, ascending
	Counts []uint64  // cumulative count at each bound
	Count  uint64
	Sum    float64
}

// Sub returns h minus an earlier reading prev of the same histogram: the
// samples taken in between. Buckets missing from prev count as zero.
func (h Histogram) Sub(prev Histogram) Histogram {
	out := Histogram{Bounds: h.Bounds, Counts: make([]uint64, len(h.Counts)), Count: h.Count - prev.Count, Sum: h.Sum - prev.Sum}
	for i, b := range h.Bounds {
		out.Counts[i] = h.Counts[i]
		if j, ok := slices.BinarySearch(prev.Bounds, b); ok {
			out.Counts[i] -= prev.Counts[j]
		}
	}
	return out
}

// Add returns the sum of two histograms of the same metric (from two
// nodes, say); either may be empty.
func (h Histogram) Add(o Histogram) Histogram {
	if len(h.Bounds) == 0 {
		return o
	}
	if len(o.Bounds) == 0 {
		return h
	}
	out := Histogram{Bounds: h.Bounds, Counts: slices.Clone(h.Counts), Count: h.Count + o.Count, Sum: h.Sum + o.Sum}
	for i, b := range out.Bounds {
		if j, ok := slices.BinarySearch(o.Bounds, b); ok {
			out.Counts[i] += o.Counts[j]
		}
	}
	return out
}

// Mean is Sum/Count, or 0 with no samples.
func (h Histogram) Mean() float64 {
	if h.Count == 0 {
		return 0
	}
	return h.Sum / float64(h.Count)
}

// Quantile estimates the q-quantile (0 < q < 1) the way PromQL's
// histogram_quantile does: linear interpolation inside the bucket that holds
// it, the first bucket starting at 0. It is NaN with no samples and the
// largest finite bound when the quantile lies in the +Inf bucket.
func (h Histogram) Quantile(q float64) float64 {
	if h.Count == 0 || len(h.Bounds) == 0 {
		return math.NaN()
	}
	rank := q * float64(h.Count)
	lower, below := 0.0, uint64(0)
	for i, b := range h.Bounds {
		c := h.Counts[i]
		if float64(c) >= rank {
			if c == below {
				return b
			}
			return lower + (b-lower)*(rank-float64(below))/float64(c-below)
		}
		lower, below = b, c
	}
	return h.Bounds[len(h.Bounds)-1]
}

// Histograms reads the histograms called names from Prometheus text format,
// each summed over its label sets; a name the text lacks is absent from the
// result.
func Histograms(r io.Reader, names ...string) (map[string]Histogram, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	out := map[string]Histogram{}
	for _, name := range names {
		fam := fams[name]
		if fam == nil {
			continue
		}
		var h Histogram
		counts := map[float64]uint64{}
		for _, m := range fam.GetMetric() {
			hm := m.GetHistogram()
			if hm == nil {
				return nil, fmt.Errorf("%s is a %s, not a histogram", name, fam.GetType())
			}
			h.Count += hm.GetSampleCount()
			h.Sum += hm.GetSampleSum()
			for _, b := range hm.GetBucket() {
				if ub := b.GetUpperBound(); !math.IsInf(ub, +1) {
					counts[ub] += b.GetCumulativeCount()
				}
			}
		}
		for b := range counts {
			h.Bounds = append(h.Bounds, b)
		}
		slices.Sort(h.Bounds)
		for _, b := range h.Bounds {
			h.Counts = append(h.Counts, counts[b])
		}
		out[name] = h
	}
	return out, nil
}

// ScrapeHistograms fetches url (a /metrics endpoint) with hc and reads the
// histograms called names from it (see Histograms).
func ScrapeHistograms(ctx context.Context, hc *http.Client, url string, names ...string) (hs map[string]Histogram, err error) {
	err = fetch(ctx, hc, url, func(r io.Reader) error {
		hs, err = Histograms(r, names...)
		return err
	})
	return hs, err
}

// SumHistograms scrapes every endpoint in urls and sums each histogram
// called names over them (a cluster's nodes, say). A name no endpoint
// serves is absent from the result.
func SumHistograms(ctx context.Context, hc *http.Client, urls []string, names ...string) (map[string]Histogram, error) {
	out := map[string]Histogram{}
	for _, u := range urls {
		hs, err := ScrapeHistograms(ctx, hc, u, names...)
		if err != nil {
			return nil, err
		}
		for n, h := range hs {
			out[n] = out[n].Add(h)
		}
	}
	return out, nil
}
