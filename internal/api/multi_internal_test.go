package api

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/nodedb/nodedb-cluster/internal/kv"
	"github.com/nodedb/nodedb-cluster/internal/multiwire"
	"github.com/nodedb/nodedb-cluster/internal/server"
)

// memService is a Service over a map, for measuring the API layer alone.
type memService struct {
	vals map[string][]byte
}

func (m *memService) KVPut(ctx context.Context, key, value []byte, o server.WriteOptions) (server.WriteResult, error) {
	m.vals[string(key)] = append([]byte(nil), value...)
	return server.WriteResult{Version: 1, VShard: 7}, nil
}

func (m *memService) KVDelete(ctx context.Context, key []byte, o server.WriteOptions) (server.WriteResult, error) {
	delete(m.vals, string(key))
	return server.WriteResult{Version: 2, VShard: 7}, nil
}

func (m *memService) KVBatch(ctx context.Context, ops []kv.Op, o server.WriteOptions) ([]server.WriteResult, error) {
	return nil, &server.APIError{Code: server.CodeInvalidArgument, Message: "not in this fake"}
}

func (m *memService) KVGet(ctx context.Context, key []byte, o server.ReadOptions) (server.GetResult, error) {
	v, ok := m.vals[string(key)]
	return server.GetResult{Found: ok, Value: v, Version: 1, VShard: 7}, nil
}

func (m *memService) KVScan(ctx context.Context, prefix []byte, cursor string, limit int, o server.ReadOptions) (server.ScanPage, error) {
	return server.ScanPage{}, nil
}

func (m *memService) ClusterStatus() (server.ClusterStatus, error) {
	return server.ClusterStatus{}, nil
}
func (m *memService) Ready() error               { return nil }
func (m *memService) Limits() kv.Limits          { return kv.Limits{MaxKeySize: 4 << 10, MaxValueSize: 1 << 20} }
func (m *memService) AdminHandler() http.Handler { return http.NotFoundHandler() }

// BenchmarkMultiGet measures the API layer's cost of a POST /v1/multi
// exchange carrying 16 linearizable GETs of 256-byte values, as the Go
// client sends them under load, over a service that answers from a map:
// everything the node does for a read besides the read itself.
func BenchmarkMultiGet(b *testing.B) {
	const n = 16
	svc := &memService{vals: map[string][]byte{}}
	reqs := make([]multiwire.Request, n)
	for i := range reqs {
		k := fmt.Sprintf("bench/key-%d", i)
		svc.vals[k] = bytes.Repeat([]byte{'v'}, 256)
		hd := http.Header{}
		hd.Set(HeaderTimeout, "4.5s")
		reqs[i] = multiwire.Request{Method: http.MethodGet, URI: "/v1/kv/bench%2Fkey-" + fmt.Sprint(i), Header: hd}
	}
	body := multiwire.AppendRequests(nil, reqs)
	h, stop := Handler(svc, nil)
	defer stop()
	exchange := func() *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, "/v1/multi", bytes.NewReader(body))
		r.Header.Set("Content-Type", multiwire.ContentType)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != http.StatusOK {
			b.Fatalf("multi: %d %s", w.Code, w.Body)
		}
		return w
	}
	// Check one exchange's answers; then only their length (the order of
	// answers varies), so that decoding them, the client's work, is not
	// measured.
	want := exchange().Body
	rr := multiwire.NewResponseReader(bytes.NewReader(want.Bytes()), multiwire.DefaultLimits())
	for got := 0; ; got++ {
		a, err := rr.Next(n)
		if err == io.EOF {
			if got != n {
				b.Fatalf("%d answers", got)
			}
			break
		}
		if err != nil || a.Status != http.StatusOK || len(a.Body) != 256 || a.Header.Get(HeaderVersion) != "1" || a.Header.Get(HeaderVShard) != "7" {
			b.Fatalf("answer %+v: %v", a, err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if w := exchange(); w.Body.Len() != want.Len() {
			b.Fatalf("answers of %d bytes, want %d", w.Body.Len(), want.Len())
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/get")
}

// TestPlainGetKeyMatchesTheMux: a carried GET that takes the fast path
// (plainGetKey) is one the mux would route to GET /v1/kv/{key} with the
// same key; anything the fast path refuses still gets the mux's answer.
func TestPlainGetKeyMatchesTheMux(t *testing.T) {
	mux := http.NewServeMux()
	var routed string
	mux.HandleFunc("GET /v1/kv/{key}", func(w http.ResponseWriter, r *http.Request) { routed = r.PathValue("key") })
	uris := []string{
		"/v1/kv/a", "/v1/kv/a%2Fb", "/v1/kv/%2E", "/v1/kv/%2E%2E", "/v1/kv/.", "/v1/kv/..", "/v1/kv/a/b",
		"/v1/kv/", "/v1/kv", "/v1/kv/a?x=1", "/v1/kv/a#f", "/v1/kv/%zz", "/v1/kv/%00%FF", "/v1/kv/sp%20ace",
		"/v1/kv/a+b", "/v1/kv/%7Btag%7Dx", "/v1/kv/%C3%BC", "/v1/kv//a", "/v1/kv/a%3Fb", "/v1/kv/a;b",
		"/v1/kvx/a", "/v2/kv/a", "/v1/kv/...", "/v1/kv/a.", "/v1/kv/%2e",
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		k := make([]byte, 1+rng.IntN(12))
		for i := range k {
			k[i] = byte(rng.IntN(256))
		}
		uris = append(uris, "/v1/kv/"+url.PathEscape(string(k)))
	}
	fast := 0
	for _, uri := range uris {
		key, ok := plainGetKey(uri)
		if !ok {
			continue
		}
		fast++
		r, err := http.NewRequest(http.MethodGet, uri, nil)
		if err != nil {
			t.Errorf("%q: fast path took a URI that is not a request: %v", uri, err)
			continue
		}
		routed = "\x00unrouted"
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, r)
		if routed != key {
			t.Errorf("%q: fast path key %q, the mux routes %q (status %d)", uri, key, routed, w.Code)
		}
	}
	if fast < 2000 {
		t.Errorf("only %d of %d URIs took the fast path", fast, len(uris))
	}
}
