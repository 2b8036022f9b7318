package promtext

import (
	"math"
	"strings"
	"testing"
)

// Two nodes' histograms are summed bucket by bucket, and quantiles
// interpolate within the bucket that holds them, as PromQL does.
func TestHistograms(t *testing.T) {
	text := `# HELP d a duration
# TYPE d histogram
d_bucket{node="1",le="0.001"} 2
d_bucket{node="1",le="0.002"} 6
d_bucket{node="1",le="+Inf"} 8
d_sum{node="1"} 0.012
d_count{node="1"} 8
d_bucket{node="2",le="0.001"} 2
d_bucket{node="2",le="0.002"} 4
d_bucket{node="2",le="+Inf"} 4
d_sum{node="2"} 0.004
d_count{node="2"} 4
# TYPE c counter
c 3
`
	hs, err := Histograms(strings.NewReader(text), "d", "absent")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := hs["absent"]; ok {
		t.Error("an absent histogram was read")
	}
	h := hs["d"]
	if h.Count != 12 || math.Abs(h.Sum-0.016) > 1e-12 || len(h.Bounds) != 2 || h.Counts[0] != 4 || h.Counts[1] != 10 {
		t.Fatalf("summed histogram %+v", h)
	}
	// 4 samples in (0, 1 ms], 6 in (1, 2 ms], 2 above.
	for q, want := range map[float64]float64{0.25: 0.00075, 0.5: 0.001 + 0.001*2/6, 0.99: 0.002} {
		if got := h.Quantile(q); math.Abs(got-want) > 1e-12 {
			t.Errorf("q%.2f = %v, want %v", q, got, want)
		}
	}
	if got := h.Mean(); math.Abs(got-0.016/12) > 1e-12 {
		t.Errorf("mean %v", got)
	}
	prev := Histogram{Bounds: []float64{0.001, 0.002}, Counts: []uint64{4, 4}, Count: 4, Sum: 0.002}
	d := h.Sub(prev)
	if d.Count != 8 || d.Counts[0] != 0 || d.Counts[1] != 6 || math.Abs(d.Quantile(0.5)-(0.001+0.001*4/6)) > 1e-12 {
		t.Errorf("difference %+v, median %v", d, d.Quantile(0.5))
	}
	if s := d.Add(prev); s.Count != h.Count || s.Counts[0] != h.Counts[0] || s.Counts[1] != h.Counts[1] || math.Abs(s.Sum-h.Sum) > 1e-12 {
		t.Errorf("difference plus earlier reading %+v, want %+v", s, h)
	}
	if s := (Histogram{}).Add(h); s.Count != h.Count || len(s.Counts) != 2 {
		t.Errorf("empty plus h: %+v", s)
	}
	if !math.IsNaN((Histogram{}).Quantile(0.5)) {
		t.Error("a quantile of no samples is not NaN")
	}
	if _, err := Histograms(strings.NewReader(text), "c"); err == nil {
		t.Error("a counter read as a histogram")
	}
	if _, err := Histograms(strings.NewReader("# TYPE d histogram\nd_bucket{le=\"x\"} 1\n"), "d"); err == nil {
		t.Error("a malformed bound parsed")
	}
}
