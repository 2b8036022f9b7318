package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/kv"
	"github.com/nodedb/nodedb-cluster/internal/multiwire"
	"github.com/nodedb/nodedb-cluster/internal/server"
)

// memService is a Service over a map, for measuring the API layer alone
// and comparing its paths. A key "down/..." answers unavailable.
type memService struct {
	mu    sync.Mutex
	vals  map[string][]byte
	vers  map[string]uint64
	still bool // writes change nothing (benchmarks: answers of one length)
}

func newMemService() *memService {
	return &memService{vals: map[string][]byte{}, vers: map[string]uint64{}}
}

var errDown = &server.APIError{Code: server.CodeUnavailable, Message: "no leader"}

func (m *memService) KVPut(ctx context.Context, key, value []byte, o server.WriteOptions) (server.WriteResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if bytes.HasPrefix(key, []byte("down/")) {
		return server.WriteResult{}, errDown
	}
	prev := m.vers[string(key)]
	if m.still {
		return server.WriteResult{Version: prev + 1, VShard: 7, PrevVersion: prev}, nil
	}
	m.vals[string(key)] = append([]byte(nil), value...)
	m.vers[string(key)] = prev + 1 + o.Seq // the sequence shows that the headers were read
	return server.WriteResult{Version: m.vers[string(key)], VShard: 7, PrevVersion: prev}, nil
}

func (m *memService) KVDelete(ctx context.Context, key []byte, o server.WriteOptions) (server.WriteResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if bytes.HasPrefix(key, []byte("down/")) {
		return server.WriteResult{}, errDown
	}
	prev := m.vers[string(key)]
	delete(m.vals, string(key))
	m.vers[string(key)] = prev + 1
	return server.WriteResult{Version: prev + 1, VShard: 7, PrevVersion: prev}, nil
}

func (m *memService) KVBatch(ctx context.Context, ops []kv.Op, o server.WriteOptions) ([]server.WriteResult, error) {
	return nil, &server.APIError{Code: server.CodeInvalidArgument, Message: "not in this fake"}
}

func (m *memService) KVGet(ctx context.Context, key []byte, o server.ReadOptions) (server.GetResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if bytes.HasPrefix(key, []byte("down/")) {
		return server.GetResult{}, errDown
	}
	if o.NoForward {
		return server.GetResult{}, &server.APIError{Code: server.CodeNotLeader, Message: "not the leader", Hint: map[string]any{"leader": 2}}
	}
	v, ok := m.vals[string(key)]
	return server.GetResult{Found: ok, Value: v, Version: m.vers[string(key)] + o.Epoch, VShard: 7}, nil
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
func BenchmarkMultiGet(b *testing.B) { benchMulti(b, http.MethodGet) }

// BenchmarkMultiPut is BenchmarkMultiGet for PUTs of 256-byte values with
// an exactly-once identity, as the Go client sends them.
func BenchmarkMultiPut(b *testing.B) { benchMulti(b, http.MethodPut) }

func benchMulti(b *testing.B, method string) {
	const n = 16
	svc := newMemService()
	svc.still = true
	reqs := make([]multiwire.Request, n)
	value := bytes.Repeat([]byte{'v'}, 256)
	for i := range reqs {
		k := fmt.Sprintf("bench/key-%d", i)
		svc.vals[k], svc.vers[k] = value, 1
		hd := http.Header{}
		hd.Set(HeaderTimeout, "4.5s")
		req := multiwire.Request{Method: method, URI: "/v1/kv/bench%2Fkey-" + fmt.Sprint(i), Header: hd}
		if method == http.MethodPut {
			hd.Set(HeaderClientID, "123456789")
			hd.Set(HeaderSeq, "0")
			hd.Set(HeaderAckedBelow, "0")
			req.Body = value
		}
		reqs[i] = req
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
		ok := a.Status == http.StatusOK && a.Header.Get(HeaderVShard) == "7"
		if method == http.MethodGet {
			ok = ok && len(a.Body) == 256 && a.Header.Get(HeaderVersion) == "1"
		} else {
			ok = ok && a.Header.Get(HeaderVersion) == "2"
		}
		if err != nil || !ok {
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
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/request")
}

// TestPlainKeyMatchesTheMux: a carried GET that takes the fast path
// (plainKey) is one the mux would route to GET /v1/kv/{key} with the
// same key; anything the fast path refuses still gets the mux's answer.
func TestPlainKeyMatchesTheMux(t *testing.T) {
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
		key, ok := plainKey(uri)
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

// TestCarriedMatchesAlone: a request carried in /v1/multi gets the answer
// it gets alone (status, headers, body), whether it takes the shortcut for
// plain KV requests or the general path.
func TestCarriedMatchesAlone(t *testing.T) {
	hd := func(kv ...string) http.Header {
		h := http.Header{}
		for i := 0; i+1 < len(kv); i += 2 {
			h.Set(kv[i], kv[i+1])
		}
		return h
	}
	long := "/v1/kv/" + strings.Repeat("k", 5000)
	cases := []multiwire.Request{
		{Method: http.MethodGet, URI: "/v1/kv/a"},
		{Method: http.MethodGet, URI: "/v1/kv/missing"},
		{Method: http.MethodGet, URI: "/v1/kv/a%2Fb"},
		{Method: http.MethodGet, URI: "/v1/kv/a", Header: hd(HeaderEpoch, "5")},
		{Method: http.MethodGet, URI: "/v1/kv/a", Header: hd(HeaderEpoch, "x")},
		{Method: http.MethodGet, URI: "/v1/kv/a", Header: hd(HeaderNoForward, "1")},
		{Method: http.MethodGet, URI: "/v1/kv/down/x"},
		{Method: http.MethodGet, URI: "/v1/kv/down%2Fx"},
		{Method: http.MethodGet, URI: long},
		{Method: http.MethodGet, URI: "/v1/kv/a?consistency=stale&max_staleness=2s"},
		{Method: http.MethodPut, URI: "/v1/kv/a", Body: []byte("new")},
		{Method: http.MethodPut, URI: "/v1/kv/fresh", Body: nil},
		{Method: http.MethodPut, URI: "/v1/kv/a", Body: []byte("v"), Header: hd(HeaderClientID, "9", HeaderSeq, "4")},
		{Method: http.MethodPut, URI: "/v1/kv/a", Body: []byte("v"), Header: hd(HeaderSeq, "-1")},
		{Method: http.MethodPut, URI: "/v1/kv/a", Body: bytes.Repeat([]byte{'x'}, 2000)},
		{Method: http.MethodPut, URI: "/v1/kv/down%2Fx", Body: []byte("v")},
		{Method: http.MethodPut, URI: "/v1/kv/a?if_version=1", Body: []byte("v")},
		{Method: http.MethodPut, URI: long, Body: []byte("v")},
		{Method: http.MethodDelete, URI: "/v1/kv/a"},
		{Method: http.MethodDelete, URI: "/v1/kv/down%2Fx"},
		{Method: http.MethodPut, URI: "/v1/kv/", Body: []byte("v")},
		{Method: http.MethodGet, URI: "/v1/kv/"},
	}
	limits := func(m *memService) *limitedService { return &limitedService{memService: m, maxValue: 1000} }
	for _, c := range cases {
		name := c.Method + " " + c.URI[:min(len(c.URI), 40)]
		fresh := func() *limitedService {
			m := newMemService()
			m.vals["a"], m.vers["a"] = []byte("old"), 3
			return limits(m)
		}
		// Alone.
		h, stop := Handler(fresh(), nil)
		r := httptest.NewRequest(c.Method, c.URI, bytes.NewReader(c.Body))
		for k, v := range c.Header {
			r.Header[k] = v
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		stop()
		// Carried: alone in its exchange (served on the exchange's own
		// goroutine), beside another request (served by a worker), and
		// beside another over a service that starts GETs (a GET is then
		// started and answered on the exchange's goroutine).
		beside := []multiwire.Request{c, {Method: http.MethodGet, URI: "/v1/kv/other"}}
		for v, reqs := range [][]multiwire.Request{{c}, beside, beside} {
			var svc Service = fresh()
			if v == 2 {
				svc = &startingService{limitedService: fresh()}
			}
			h, stop = Handler(svc, nil)
			mr := httptest.NewRequest(http.MethodPost, "/v1/multi", bytes.NewReader(multiwire.AppendRequests(nil, reqs)))
			mr.Header.Set("Content-Type", multiwire.ContentType)
			mw := httptest.NewRecorder()
			h.ServeHTTP(mw, mr)
			stop()
			rr := multiwire.NewResponseReader(mw.Body, multiwire.DefaultLimits())
			var a multiwire.Response
			for range reqs {
				r, err := rr.Next(len(reqs))
				if err != nil {
					t.Fatalf("%s: carried with %d: %v (%d %s)", name, len(reqs), err, mw.Code, mw.Body)
				}
				if r.Index == 0 {
					a = r
				}
			}
			if a.Status != w.Code || !bytes.Equal(a.Body, w.Body.Bytes()) {
				t.Errorf("%s: carried (variant %d): %d %q, alone %d %q", name, v, a.Status, a.Body, w.Code, w.Body)
			}
			for _, k := range []string{"Content-Type", "Content-Length", HeaderVersion, HeaderVShard, "Retry-After"} {
				if a.Header.Get(k) != w.Header().Get(k) {
					t.Errorf("%s: carried (variant %d): header %s %q, alone %q", name, v, k, a.Header.Get(k), w.Header().Get(k))
				}
			}
		}
	}
}

// limitedService lowers memService's value limit.
type limitedService struct {
	*memService
	maxValue int
}

func (l *limitedService) Limits() kv.Limits {
	return kv.Limits{MaxKeySize: 4 << 10, MaxValueSize: l.maxValue}
}

// startingService starts linearizable GETs, PUTs and DELETEs as
// *server.Server does (asyncGetter, asyncWriter): a started request is
// served from the map on a goroutine of its own, as a Raft worker would
// finish it. Keys "fail/..." start but fail where they started (the leader
// moved before anything was read or written), keys "hang/..." never finish;
// "down/..." keys and no-forward GETs are not started (the server starts
// only what it leads). started and fellBack count what it saw.
type startingService struct {
	*limitedService
	mu       sync.Mutex
	started  int
	fellBack int
	wg       sync.WaitGroup
}

type startedMemReq struct {
	done chan struct{}
	get  server.GetResult
	wr   server.WriteResult
	err  error
	fail bool
}

func (p *startedMemReq) Done() <-chan struct{} { return p.done }

// start starts serve for key as described on startingService.
func (s *startingService) start(key []byte, notify func(), serve func(p *startedMemReq)) *startedMemReq {
	s.mu.Lock()
	s.started++
	s.mu.Unlock()
	p := &startedMemReq{done: make(chan struct{}), fail: bytes.HasPrefix(key, []byte("fail/"))}
	if bytes.HasPrefix(key, []byte("hang/")) {
		return p
	}
	s.wg.Go(func() {
		if !p.fail {
			serve(p)
		}
		close(p.done)
		notify()
	})
	return p
}

// finish checks that p is done and counts a failed one.
func (s *startingService) finish(p *startedMemReq) bool {
	select {
	case <-p.done:
	default:
		panic("finished before Done")
	}
	if p.fail {
		s.mu.Lock()
		s.fellBack++
		s.mu.Unlock()
		return false
	}
	return true
}

func (s *startingService) StartKVGet(key []byte, o server.ReadOptions, notify func()) (server.PendingGet, bool) {
	if o.Consistency != server.Linearizable || o.NoForward || bytes.HasPrefix(key, []byte("down/")) {
		return nil, false
	}
	return s.start(key, notify, func(p *startedMemReq) { p.get, p.err = s.KVGet(context.Background(), key, o) }), true
}

func (s *startingService) FinishKVGet(p server.PendingGet) (server.GetResult, bool, error) {
	g := p.(*startedMemReq)
	if !s.finish(g) {
		return server.GetResult{}, false, nil
	}
	return g.get, true, g.err
}

func (s *startingService) StartKVPut(key, value []byte, o server.WriteOptions, notify func()) (server.PendingWrite, bool) {
	if bytes.HasPrefix(key, []byte("down/")) {
		return nil, false
	}
	value = bytes.Clone(value) // the server encodes it into its proposal before returning
	return s.start(key, notify, func(p *startedMemReq) { p.wr, p.err = s.KVPut(context.Background(), key, value, o) }), true
}

func (s *startingService) StartKVDelete(key []byte, o server.WriteOptions, notify func()) (server.PendingWrite, bool) {
	if bytes.HasPrefix(key, []byte("down/")) {
		return nil, false
	}
	return s.start(key, notify, func(p *startedMemReq) { p.wr, p.err = s.KVDelete(context.Background(), key, o) }), true
}

func (s *startingService) FinishKVWrite(p server.PendingWrite) (server.WriteResult, bool, error) {
	w := p.(*startedMemReq)
	if !s.finish(w) {
		return server.WriteResult{}, false, nil
	}
	return w.wr, true, w.err
}

func (s *startingService) AbandonKVWrite(cause error) error {
	return &server.APIError{Code: server.CodeOutcomeUnknown, Message: cause.Error()}
}

// TestStartedRequestsFallBackToWorkers: GETs, PUTs and DELETEs started on
// the exchange's goroutine are answered there; one that fails where it
// started is answered by a worker through KVGet, KVPut or KVDelete (a
// write exactly once), so that every request gets exactly the answer it
// would have got alone; a GET whose time runs out before its read is done
// goes to a worker too, and a write whose time runs out is outcome_unknown.
func TestStartedRequestsFallBackToWorkers(t *testing.T) {
	m := newMemService()
	for _, k := range []string{"a", "fail/b", "hang/c", "d", "gone"} {
		m.vals[k], m.vers[k] = []byte("value of "+k), 2
	}
	svc := &startingService{limitedService: &limitedService{memService: m, maxValue: 1000}}
	h, stop := Handler(svc, nil)
	defer stop()
	hd := http.Header{}
	hd.Set(HeaderTimeout, "0.3s")
	reqs := []multiwire.Request{
		{Method: http.MethodGet, URI: "/v1/kv/a", Header: hd},
		{Method: http.MethodGet, URI: "/v1/kv/fail%2Fb", Header: hd},
		{Method: http.MethodGet, URI: "/v1/kv/hang%2Fc", Header: hd},
		{Method: http.MethodGet, URI: "/v1/kv/d", Header: hd},
		{Method: http.MethodGet, URI: "/v1/kv/missing", Header: hd},
		{Method: http.MethodPut, URI: "/v1/kv/e", Body: []byte("e"), Header: hd},
		{Method: http.MethodPut, URI: "/v1/kv/fail%2Ff", Body: []byte("f"), Header: hd},
		{Method: http.MethodPut, URI: "/v1/kv/hang%2Fg", Body: []byte("g"), Header: hd},
		{Method: http.MethodDelete, URI: "/v1/kv/gone", Header: hd},
		{Method: http.MethodDelete, URI: "/v1/kv/never", Header: hd},
		{Method: http.MethodPut, URI: "/v1/kv/down%2Fh", Body: []byte("h"), Header: hd},
	}
	type want struct {
		status  int
		body    string
		version string
	}
	wants := []want{
		{http.StatusOK, "value of a", "2"},
		{http.StatusOK, "value of fail/b", "2"},
		{http.StatusOK, "value of hang/c", "2"},
		{http.StatusOK, "value of d", "2"},
		{http.StatusNotFound, "", ""},
		{http.StatusOK, "", "1"},
		{http.StatusOK, "", "1"},
		{http.StatusGatewayTimeout, "", ""},
		{http.StatusOK, "", "3"},
		{http.StatusOK, "", "1"}, // memService deletes what is absent too
		{http.StatusServiceUnavailable, "", ""},
	}
	start := time.Now()
	mr := httptest.NewRequest(http.MethodPost, "/v1/multi", bytes.NewReader(multiwire.AppendRequests(nil, reqs)))
	mr.Header.Set("Content-Type", multiwire.ContentType)
	mw := httptest.NewRecorder()
	h.ServeHTTP(mw, mr)
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("exchange took %v with requests that never finish and a 0.3 s timeout", took)
	}
	rr := multiwire.NewResponseReader(mw.Body, multiwire.DefaultLimits())
	seen := map[int]bool{}
	for range reqs {
		r, err := rr.Next(len(reqs))
		if err != nil {
			t.Fatalf("answer: %v (%d %s)", err, mw.Code, mw.Body)
		}
		if seen[r.Index] {
			t.Fatalf("request %d answered twice", r.Index)
		}
		seen[r.Index] = true
		w := wants[r.Index]
		if r.Status != w.status || (w.body != "" && string(r.Body) != w.body) || r.Header.Get(HeaderVersion) != w.version {
			t.Errorf("%s %s: %d %q version %q, want %d %q version %q", reqs[r.Index].Method, reqs[r.Index].URI, r.Status, r.Body, r.Header.Get(HeaderVersion), w.status, w.body, w.version)
		}
	}
	if _, err := rr.Next(len(reqs)); err == nil {
		t.Fatal("more answers than requests")
	}
	svc.wg.Wait()
	if svc.started != 10 || svc.fellBack != 2 {
		t.Fatalf("started %d requests (want 10), %d fell back from a failure where they started (want 2)", svc.started, svc.fellBack)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if string(m.vals["fail/f"]) != "f" || m.vers["fail/f"] != 1 {
		t.Errorf("the PUT that failed where it started and went to a worker: %q at version %d, want \"f\" written once (version 1)", m.vals["fail/f"], m.vers["fail/f"])
	}
	if _, ok := m.vals["hang/g"]; ok {
		t.Error("the PUT that never finished was written")
	}
}

func TestWriteResultJSON(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 1000 {
		res := server.WriteResult{Version: rng.Uint64() >> rng.IntN(64), VShard: rng.Uint32() >> rng.IntN(32), PrevVersion: rng.Uint64() >> rng.IntN(64)}
		var want bytes.Buffer
		json.NewEncoder(&want).Encode(res)
		if got := appendWriteResult(nil, res); !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("%+v: %q, encoding/json %q", res, got, want.Bytes())
		}
	}
}

// TestWorkBounds: requests with the same X-Nodedb-Timeout share one bound
// of work, each is bounded by its own value, and stop ends them all.
func TestWorkBounds(t *testing.T) {
	var reqs []multiwire.Request
	add := func(v string) {
		hd := http.Header{}
		if v != "" {
			hd.Set(HeaderTimeout, v)
		}
		reqs = append(reqs, multiwire.Request{Header: hd})
	}
	add("2s")
	add("2s")
	add("")
	add("bad")
	for i := range maxBounds + 2 {
		add(fmt.Sprintf("%ds", 10+i))
	}
	start := time.Now()
	ctxs, stop := workBounds(context.Background(), reqs)
	if ctxs[0] != ctxs[1] {
		t.Error("two requests with the same timeout got different contexts")
	}
	for i, want := range map[int]time.Duration{0: 2 * time.Second, 2: requestTimeout, 3: requestTimeout, 4: 10 * time.Second, len(reqs) - 1: time.Duration(10+maxBounds+1) * time.Second} {
		dl, ok := ctxs[i].Deadline()
		if !ok || dl.Sub(start) < want || dl.Sub(start) > want+time.Second {
			t.Errorf("request %d: deadline in %v, want %v", i, dl.Sub(start), want)
		}
	}
	stop()
	for i, ctx := range ctxs {
		if ctx.Err() == nil {
			t.Errorf("request %d: context not ended by stop", i)
		}
	}
}
