package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/vshard"
)

// Scripted nodes: unit tests of the retry and routing rules against
// answers a real cluster gives only in rare moments.

type seenRequest struct {
	node   int
	method string
	path   string
	header http.Header
}

type fakeCluster struct {
	t     *testing.T
	srvs  []*httptest.Server
	mu    sync.Mutex
	seen  []seenRequest
	loads int
	// status is GET /v1/cluster's answer; kv answers the rest.
	status func() map[string]any
	kv     func(node int, w http.ResponseWriter, r *http.Request)
}

// newFakeCluster starts n nodes (IDs 1..n). By default the cluster has 16
// vShards, every one in group 1 at epoch 1, led by node 1 with every node a
// voter.
func newFakeCluster(t *testing.T, n int) *fakeCluster {
	f := &fakeCluster{t: t}
	for i := range n {
		node := i + 1
		f.srvs = append(f.srvs, httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v1/cluster" {
				f.mu.Lock()
				f.loads++
				st := f.status()
				f.mu.Unlock()
				json.NewEncoder(w).Encode(st)
				return
			}
			f.mu.Lock()
			f.seen = append(f.seen, seenRequest{node: node, method: r.Method, path: r.URL.EscapedPath(), header: r.Header.Clone()})
			kv := f.kv
			f.mu.Unlock()
			kv(node, w, r)
		})))
	}
	t.Cleanup(func() {
		for _, s := range f.srvs {
			s.Close()
		}
	})
	f.status = func() map[string]any { return f.defaultStatus(1, 1) }
	return f
}

func (f *fakeCluster) addr(node int) string { return strings.TrimPrefix(f.srvs[node-1].URL, "http://") }

// defaultStatus: every vShard in group g (1 or 2) at epoch e; group 1 led
// by node 1, group 2 by node 2 (when there is one).
func (f *fakeCluster) defaultStatus(g, e uint64) map[string]any {
	var nodes []map[string]any
	var voters []uint64
	for i := range f.srvs {
		nodes = append(nodes, map[string]any{"id": i + 1, "state": "active", "api_addr": f.addr(i + 1)})
		voters = append(voters, uint64(i+1))
	}
	var vss []map[string]any
	for v := range 16 {
		vss = append(vss, map[string]any{"id": v, "group": g, "epoch": e})
	}
	groups := []map[string]any{{"id": 1, "voters": voters, "leader": 1}}
	if len(f.srvs) > 1 {
		groups = append(groups, map[string]any{"id": 2, "voters": voters, "leader": 2})
	}
	return map[string]any{"vshard_count": 16, "routing_version": 1, "nodes": nodes, "groups": groups, "vshards": vss}
}

func (f *fakeCluster) requests() []seenRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seenRequest(nil), f.seen...)
}

func (f *fakeCluster) loadCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.loads
}

func (f *fakeCluster) setKV(kv func(node int, w http.ResponseWriter, r *http.Request)) {
	f.mu.Lock()
	f.seen, f.loads, f.kv = nil, 0, kv
	f.mu.Unlock()
}

func (f *fakeCluster) client(t *testing.T) *Client {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := New(ctx, Config{Endpoints: []string{f.addr(1)}, RequestTimeout: time.Second, Logger: testLog(), DisableMulti: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func apiError(w http.ResponseWriter, status int, code string, hint map[string]any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"code": code, "message": "scripted", "hint": hint})
}

// neverDone answers every read unavailable and every write
// outcome_unknown: a cluster that never completes anything.
func neverDone(node int, w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet {
		apiError(w, 503, CodeUnavailable, nil)
		return
	}
	apiError(w, 504, CodeOutcomeUnknown, nil)
}

func writeOK(w http.ResponseWriter, version uint64) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"version": version, "vshard": 3})
}

// TestMovedHintIsFollowed: a moved answer names the owner and its epoch;
// the client reroutes at once, without reloading the routing table.
func TestMovedHintIsFollowed(t *testing.T) {
	f := newFakeCluster(t, 2)
	c := f.client(t)
	key := []byte("k")
	vs := vshard.ForKey(key, 16)
	f.setKV(func(node int, w http.ResponseWriter, r *http.Request) {
		switch {
		case node == 1 && r.Header.Get(headerEpoch) == "1":
			apiError(w, 421, CodeMoved, map[string]any{"vshard": vs, "group": 2, "epoch": 2})
		case node == 2 && r.Header.Get(headerEpoch) == "2" && r.Header.Get(headerNoForward) == "1":
			writeOK(w, 1)
		default:
			apiError(w, 400, CodeInvalidArgument, nil)
		}
	})
	if _, err := c.Put(context.Background(), key, []byte("v")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(context.Background(), key, []byte("v")); err != nil {
		t.Fatal(err)
	}
	reqs := f.requests()
	if len(reqs) != 3 || reqs[0].node != 1 || reqs[1].node != 2 || reqs[2].node != 2 || f.loadCount() != 0 {
		t.Fatalf("requests %+v, routing loads %d", reqs, f.loadCount())
	}
}

// TestRetriesKeepTheWriteIdentity: outcome_unknown, a lost connection and
// unavailable are retried with the same client ID and sequence; the next
// write has the next sequence, and acked-below never passes a write in
// flight.
func TestRetriesKeepTheWriteIdentity(t *testing.T) {
	f := newFakeCluster(t, 1)
	c := f.client(t)
	var mu sync.Mutex
	attempts := 0
	f.setKV(func(node int, w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		attempts++
		n := attempts
		mu.Unlock()
		switch n {
		case 1:
			apiError(w, 504, CodeOutcomeUnknown, nil)
		case 2:
			// A connection lost before the answer.
			hj, _ := w.(http.Hijacker)
			conn, _, _ := hj.Hijack()
			conn.Close()
		case 3:
			apiError(w, 503, CodeUnavailable, nil)
		default:
			writeOK(w, 7)
		}
	})
	w, err := c.Put(context.Background(), []byte("k"), []byte("v"))
	if err != nil || w.Version != 7 {
		t.Fatalf("put: %+v %v", w, err)
	}
	if _, err := c.Delete(context.Background(), []byte("k")); err != nil {
		t.Fatal(err)
	}
	reqs := f.requests()
	if len(reqs) != 5 {
		t.Fatalf("%d requests, want 5", len(reqs))
	}
	id := fmt.Sprint(c.ID())
	for i, r := range reqs {
		seq := "1"
		if i == 4 {
			seq = "2"
		}
		if r.header.Get(headerClientID) != id || r.header.Get(headerSeq) != seq || r.header.Get(headerAckedBelow) != seq || r.header.Get(headerIdempotencyKey) != "" {
			t.Fatalf("request %d: identity %s/%s acked below %s, want %s/%s acked below %s", i, r.header.Get(headerClientID), r.header.Get(headerSeq), r.header.Get(headerAckedBelow), id, seq, seq)
		}
		if d, err := time.ParseDuration(r.header.Get(headerTimeout)); err != nil || d <= 0 || d >= time.Second {
			t.Fatalf("request %d: timeout header %q", i, r.header.Get(headerTimeout))
		}
	}

	// Idempotency keys replace the identity.
	f.setKV(func(node int, w http.ResponseWriter, r *http.Request) { writeOK(w, 1) })
	if _, err := c.Put(context.Background(), []byte("k"), []byte("v"), WithIdempotencyKey("abc")); err != nil {
		t.Fatal(err)
	}
	if r := f.requests()[0]; r.header.Get(headerIdempotencyKey) != "abc" || r.header.Get(headerClientID) != "" || r.header.Get(headerSeq) != "" {
		t.Fatalf("idempotency key write headers: %v", r.header)
	}
}

// TestGivingUp: when the context ends, a write that may have been applied
// is outcome_unknown, anything else unavailable; both wrap the context's
// error. Errors that retrying cannot fix return at once.
func TestGivingUp(t *testing.T) {
	f := newFakeCluster(t, 1)
	c := f.client(t)
	f.setKV(neverDone)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := c.Put(ctx, []byte("k"), []byte("v"))
	if !errors.Is(err, ErrOutcomeUnknown) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("write: %v", err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	_, err = c.Get(ctx2, []byte("k"))
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("read: %v", err)
	}
	if n := len(f.requests()); n < 4 {
		t.Fatalf("only %d attempts in 400ms", n)
	}

	f.setKV(func(node int, w http.ResponseWriter, r *http.Request) { apiError(w, 500, CodeInternal, nil) })
	var e *Error
	if _, err := c.Get(context.Background(), []byte("k")); !errors.As(err, &e) || e.Code != CodeInternal || e.Status != 500 || len(f.requests()) != 1 {
		t.Fatalf("internal: %v after %d requests", err, len(f.requests()))
	}
	// A foreign answer (a proxy's) to a write: retried, then unknown.
	f.setKV(func(node int, w http.ResponseWriter, r *http.Request) {
		http.Error(w, "bad gateway", http.StatusBadGateway)
	})
	ctx3, cancel3 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel3()
	if _, err := c.Put(ctx3, []byte("k"), []byte("v")); !errors.Is(err, ErrOutcomeUnknown) || len(f.requests()) < 2 {
		t.Fatalf("write answered by a proxy: %v after %d requests", err, len(f.requests()))
	}
}

// TestWriteRetriesAreBoundedInAge: a write is retried for at most
// MaxRetryAge whatever its context allows (the cluster forgets the
// exactly-once records of idle clients, so a later retry could apply
// twice), and then fails as outcome_unknown, wrapping DeadlineExceeded.
// Reads are retried as long as the context allows.
func TestWriteRetriesAreBoundedInAge(t *testing.T) {
	f := newFakeCluster(t, 1)
	c := f.client(t)
	c.maxRetryAge = 300 * time.Millisecond
	f.setKV(neverDone)
	// The context would allow 10s: without the age bound the write ends
	// there, with the context's error.
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	start := time.Now()
	_, err := c.Put(wctx, []byte("k"), []byte("v"))
	if !errors.Is(err, ErrOutcomeUnknown) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "MaxRetryAge") {
		t.Fatalf("write retried past its age bound: %v", err)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 5*time.Second {
		t.Fatalf("write gave up after %v, want about 300ms", d)
	}
	if n := len(f.requests()); n < 2 {
		t.Fatalf("only %d attempts", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	start = time.Now()
	if _, err := c.Get(ctx, []byte("k")); !errors.Is(err, ErrUnavailable) || time.Since(start) < 700*time.Millisecond {
		t.Fatalf("read gave up after %v: %v", time.Since(start), err)
	}
}

// TestHintsOutsideTheClusterAreIgnored: a not_leader hint naming a node
// the cluster does not list is never followed.
func TestHintsOutsideTheClusterAreIgnored(t *testing.T) {
	f := newFakeCluster(t, 1)
	c := f.client(t)
	rogue := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("request to a node outside the cluster: %s %s", r.Method, r.URL)
	}))
	defer rogue.Close()
	f.setKV(func(node int, w http.ResponseWriter, r *http.Request) {
		apiError(w, 421, CodeNotLeader, map[string]any{"leader": 9, "leader_api": strings.TrimPrefix(rogue.URL, "http://")})
	})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := c.Get(ctx, []byte("k")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("get: %v", err)
	}
	if f.loadCount() == 0 {
		t.Fatal("an unknown leader did not reload the routing table")
	}
}

// TestRedirectsAreNotFollowed: a redirect would replay a write as a GET.
func TestRedirectsAreNotFollowed(t *testing.T) {
	f := newFakeCluster(t, 1)
	c := f.client(t)
	f.setKV(func(node int, w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/v1/kv/elsewhere", http.StatusMovedPermanently)
	})
	if _, err := c.Put(context.Background(), []byte("k"), []byte("v")); !errors.Is(err, ErrInvalidArgument) || len(f.requests()) != 1 {
		t.Fatalf("put answered with a redirect: %v after %d requests", err, len(f.requests()))
	}
}

// TestStaleReadsSpreadOverVoters: stale reads go round-robin to every
// voter, without No-Forward; linearizable ones to the leader only.
func TestStaleReadsSpreadOverVoters(t *testing.T) {
	f := newFakeCluster(t, 3)
	c := f.client(t)
	f.setKV(func(node int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set(headerVersion, "1")
		w.Header().Set(headerVShard, "3")
		fmt.Fprintf(w, "from %d", node)
	})
	for range 9 {
		if _, err := c.Get(context.Background(), []byte("k"), WithStale(time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	per := map[int]int{}
	for _, r := range f.requests() {
		per[r.node]++
		if r.header.Get(headerNoForward) != "" {
			t.Fatalf("stale read with No-Forward")
		}
	}
	if per[1] != 3 || per[2] != 3 || per[3] != 3 {
		t.Fatalf("stale reads per node %v", per)
	}
	f.mu.Lock()
	kv := f.kv
	f.mu.Unlock()
	f.setKV(kv)
	for range 3 {
		if g, err := c.Get(context.Background(), []byte("k")); err != nil || string(g.Value) != "from 1" {
			t.Fatalf("linearizable read: %q %v", g.Value, err)
		}
	}
	for _, r := range f.requests() {
		if r.node != 1 || r.header.Get(headerNoForward) != "1" || !strings.Contains(r.path, "/v1/kv/k") {
			t.Fatalf("linearizable read %+v", r)
		}
	}
}
