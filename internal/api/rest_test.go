package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/api"
	"github.com/nodedb/nodedb-cluster/internal/apitest"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/meta"
)

// restCluster is real nodes (QUIC between them) with their APIs
// (internal/apitest).
type restCluster struct {
	*apitest.Cluster
	urls []string
}

func startRESTCluster(t *testing.T, n int, tick time.Duration) *restCluster {
	c := &restCluster{Cluster: apitest.Start(t, n, tick)}
	for _, a := range c.Addrs {
		c.urls = append(c.urls, "http://"+a)
	}
	return c
}

// answer is an HTTP answer read in full.
type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(a.body, v); err != nil {
		t.Fatalf("answer %d %q: %v", a.status, a.body, err)
	}
}

func (a answer) errCode(t *testing.T) api.ErrorBody {
	t.Helper()
	var e api.ErrorBody
	a.json(t, &e)
	return e
}

func call(t *testing.T, method, url string, body []byte, hdr ...string) answer {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: b}
}

type writeAnswer struct {
	Version     uint64 `json:"version"`
	VShard      uint32 `json:"vshard"`
	PrevVersion uint64 `json:"prev_version"`
}

// TestRESTThroughEveryNode covers the REST contract end to end on three
// nodes: writes and reads through every node (forwarding), versions,
// compare-and-set, deletes, idempotency keys, scans with pagination,
// limits and errors.
func TestRESTThroughEveryNode(t *testing.T) {
	c := startRESTCluster(t, 3, 20*time.Millisecond)

	// Put through each node, read back through every node.
	for i := range 3 {
		key := fmt.Sprintf("k%d", i)
		a := call(t, "PUT", c.urls[i]+"/v1/kv/"+key, []byte("v"+key))
		var w writeAnswer
		a.json(t, &w)
		if a.status != 200 || w.Version != 1 || a.header.Get(api.HeaderVersion) != "1" {
			t.Fatalf("put %s through node %d: %d %s", key, i+1, a.status, a.body)
		}
		for j := range 3 {
			g := call(t, "GET", c.urls[j]+"/v1/kv/"+key, nil)
			if g.status != 200 || string(g.body) != "v"+key || g.header.Get(api.HeaderVersion) != "1" || g.header.Get(api.HeaderVShard) != fmt.Sprint(w.VShard) {
				t.Fatalf("get %s through node %d: %d %q %v", key, j+1, g.status, g.body, g.header)
			}
		}
	}
	// Versions grow by one per write.
	a := call(t, "PUT", c.urls[1]+"/v1/kv/k0", []byte("second"))
	var w writeAnswer
	a.json(t, &w)
	if w.Version != 2 || w.PrevVersion != 1 {
		t.Fatalf("second write: %s", a.body)
	}

	// Compare-and-set.
	if a := call(t, "PUT", c.urls[2]+"/v1/kv/k0?if_version=1", []byte("stale")); a.status != 409 || a.errCode(t).Code != "conflict" || a.errCode(t).Hint["current_version"] != float64(2) {
		t.Fatalf("CAS with a stale version: %d %s", a.status, a.body)
	}
	if a := call(t, "PUT", c.urls[2]+"/v1/kv/k0?if_version=2", []byte("third")); a.status != 200 {
		t.Fatalf("CAS with the current version: %d %s", a.status, a.body)
	}
	if a := call(t, "PUT", c.urls[0]+"/v1/kv/k0?if_version=0", []byte("x")); a.status != 409 {
		t.Fatalf("if_version=0 on an existing key: %d %s", a.status, a.body)
	}
	if a := call(t, "PUT", c.urls[0]+"/v1/kv/fresh?if_version=0", []byte("x")); a.status != 200 {
		t.Fatalf("if_version=0 on an absent key: %d %s", a.status, a.body)
	}
	if g := call(t, "GET", c.urls[1]+"/v1/kv/k0", nil); string(g.body) != "third" {
		t.Fatalf("after CAS: %q", g.body)
	}

	// Idempotency-Key: the replay gets the first result and applies nothing.
	first := call(t, "PUT", c.urls[0]+"/v1/kv/idem", []byte("one"), api.HeaderIdempotencyKey, "req-1")
	replay := call(t, "PUT", c.urls[1]+"/v1/kv/idem", []byte("two"), api.HeaderIdempotencyKey, "req-1")
	if first.status != 200 || replay.status != 200 || string(first.body) != string(replay.body) {
		t.Fatalf("replay: first %d %s, replay %d %s", first.status, first.body, replay.status, replay.body)
	}
	if g := call(t, "GET", c.urls[2]+"/v1/kv/idem", nil); string(g.body) != "one" || g.header.Get(api.HeaderVersion) != "1" {
		t.Fatalf("after the replay: %q version %s", g.body, g.header.Get(api.HeaderVersion))
	}
	if a := call(t, "PUT", c.urls[1]+"/v1/kv/idem", []byte("three"), api.HeaderIdempotencyKey, "req-2"); a.status != 200 {
		t.Fatalf("a new key applies: %d %s", a.status, a.body)
	}

	// Delete, then not found.
	if a := call(t, "DELETE", c.urls[2]+"/v1/kv/fresh", nil); a.status != 200 {
		t.Fatalf("delete: %d %s", a.status, a.body)
	}
	if a := call(t, "DELETE", c.urls[0]+"/v1/kv/fresh", nil); a.status != 404 || a.errCode(t).Code != "not_found" {
		t.Fatalf("delete of an absent key: %d %s", a.status, a.body)
	}
	if a := call(t, "GET", c.urls[1]+"/v1/kv/fresh", nil); a.status != 404 || a.errCode(t).Code != "not_found" {
		t.Fatalf("get of a deleted key: %d %s", a.status, a.body)
	}

	// Scan with pagination over all vShards.
	want := map[string]bool{}
	for i := range 25 {
		key := fmt.Sprintf("scan/%02d", i)
		want[key] = true
		if a := call(t, "PUT", c.urls[i%3]+"/v1/kv/"+strings.ReplaceAll(key, "/", "%2F"), []byte(key)); a.status != 200 {
			t.Fatalf("put %s: %d %s", key, a.status, a.body)
		}
	}
	got := map[string]bool{}
	cursor := ""
	for pages := 0; ; pages++ {
		a := call(t, "GET", c.urls[pages%3]+"/v1/kv?prefix=scan%2F&limit=4&cursor="+cursor, nil)
		var page api.ScanAnswer
		a.json(t, &page)
		if a.status != 200 || len(page.Items) > 4 {
			t.Fatalf("scan page: %d %s", a.status, a.body)
		}
		for _, it := range page.Items {
			if got[it.Key] || !want[it.Key] || it.Value != it.Key {
				t.Fatalf("scan item %+v (seen %v)", it, got[it.Key])
			}
			got[it.Key] = true
		}
		if page.Cursor == "" {
			break
		}
		cursor = page.Cursor
		if pages > 50 {
			t.Fatal("scan does not end")
		}
	}
	if len(got) != len(want) {
		t.Fatalf("scan returned %d of %d keys", len(got), len(want))
	}

	// Stale reads.
	if g := call(t, "GET", c.urls[2]+"/v1/kv/k1?consistency=stale&max_staleness=2s", nil); g.status != 200 || string(g.body) != "vk1" {
		t.Fatalf("stale read: %d %q", g.status, g.body)
	}

	// Bad input: typed errors, nothing written.
	big := bytes.Repeat([]byte("x"), 64<<10+1)
	for _, tc := range []struct {
		method, path string
		body         []byte
		status       int
		code         string
	}{
		{"PUT", "/v1/kv/big", big, 413, "too_large"},
		{"PUT", "/v1/kv/" + strings.Repeat("k", 4097), []byte("v"), 413, "too_large"},
		{"PUT", "/v1/kv/k0?if_version=minus", []byte("v"), 400, "invalid_argument"},
		{"GET", "/v1/kv/k0?consistency=eventual", nil, 400, "invalid_argument"},
		{"GET", "/v1/kv/k0?consistency=stale", nil, 400, "invalid_argument"},
		{"GET", "/v1/kv?cursor=zz", nil, 400, "invalid_argument"},
		{"GET", "/v1/kv?limit=-1", nil, 400, "invalid_argument"},
		// Requests no route takes answer in the same JSON shape, and
		// never as not_found, which means "no such key".
		{"PUT", "/v1/kv/", []byte("v"), 400, "invalid_argument"},
		{"GET", "/v1/kv/", nil, 400, "invalid_argument"},
		{"POST", "/v1/kv/k0", []byte("v"), 405, "invalid_argument"},
		{"GET", "/v2/kv/k0", nil, 404, "invalid_argument"},
		{"DELETE", "/v1/cluster", nil, 405, "invalid_argument"},
		{"GET", "/v1/admin/nothing", nil, 404, "invalid_argument"},
		{"PUT", "/v1/admin/migrations", nil, 405, "invalid_argument"},
	} {
		a := call(t, tc.method, c.urls[0]+tc.path, tc.body)
		if a.status != tc.status || a.errCode(t).Code != tc.code {
			t.Fatalf("%s %.60s: %d %s, want %d %s", tc.method, tc.path, a.status, a.body, tc.status, tc.code)
		}
	}
	if a := call(t, "POST", c.urls[0]+"/v1/kv/k0", nil); a.header.Get("Allow") != "DELETE, GET, HEAD, PUT" {
		t.Fatalf("POST of a key: Allow %q", a.header.Get("Allow"))
	}
	if a := call(t, "PUT", c.urls[0]+"/v1/kv/both", []byte("v"), api.HeaderIdempotencyKey, "x", api.HeaderClientID, "5", api.HeaderSeq, "1"); a.status != 400 {
		t.Fatalf("idempotency key with a client ID: %d %s", a.status, a.body)
	}
	if a := call(t, "GET", c.urls[1]+"/v1/kv/big", nil); a.status != 404 {
		t.Fatalf("a refused value was stored: %d %s", a.status, a.body)
	}

	// A client routing with an older epoch is told the vShard moved; one
	// ahead of this node's metadata is told to retry.
	if a := call(t, "GET", c.urls[0]+"/v1/kv/k1", nil, api.HeaderEpoch, "0"); a.status != 200 {
		t.Fatalf("no epoch: %d %s", a.status, a.body)
	}
	if a := call(t, "PUT", c.urls[0]+"/v1/kv/k1", []byte("x"), api.HeaderEpoch, "2"); a.status != 503 || a.errCode(t).Code != "unavailable" {
		t.Fatalf("epoch ahead: %d %s", a.status, a.body)
	}
	// Bump k1's vShard epoch in the metadata (a move to the same group).
	vs, g := c.Node(0).Route([]byte("k1"))
	if _, err := c.Node(1).ProposeMeta(context.Background(), meta.NewSetRoute(vs, uint64(g), 2)); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if st, err := c.Node(0).ClusterStatus(); err == nil && st.VShards[vs].Epoch == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the new epoch never reached node 1")
		}
	}
	if a := call(t, "GET", c.urls[0]+"/v1/kv/k1", nil, api.HeaderEpoch, "1"); a.status != 421 || a.errCode(t).Code != "moved" || a.errCode(t).Hint["epoch"] != float64(2) {
		t.Fatalf("stale epoch: %d %s", a.status, a.body)
	}

	// Health, cluster, metrics.
	for _, p := range []string{"/livez", "/readyz", "/v1/cluster", "/metrics"} {
		if a := call(t, "GET", c.urls[1]+p, nil); a.status != 200 {
			t.Fatalf("%s: %d %s", p, a.status, a.body)
		}
	}
}

// TestRESTNoForwardAnswersNotLeader: a smart client that asks a node not to
// forward gets not_leader with the leader's API address from a follower.
func TestRESTNoForwardAnswersNotLeader(t *testing.T) {
	c := startRESTCluster(t, 3, 20*time.Millisecond)
	key := []byte("nf")
	_, g := c.Node(0).Route(key)
	for i := range c.urls {
		s := c.Node(i)
		a := call(t, "PUT", c.urls[i]+"/v1/kv/nf", []byte("v"), api.HeaderNoForward, "1")
		if s.Node().IsLeader(g) {
			if a.status != 200 {
				t.Fatalf("leader node %d: %d %s", i+1, a.status, a.body)
			}
			continue
		}
		e := a.errCode(t)
		if a.status != 421 || e.Code != "not_leader" {
			t.Fatalf("follower node %d: %d %s", i+1, a.status, a.body)
		}
		leader, _ := e.Hint["leader"].(float64)
		if l := int(leader); l < 1 || l > 3 || !c.Node(l-1).Node().IsLeader(g) || "http://"+e.Hint["leader_api"].(string) != c.urls[l-1] {
			t.Fatalf("follower node %d: hint %v does not name the leader's API", i+1, e.Hint)
		}
	}
}

// TestRESTUnavailableAndOutcomeUnknown: with two of three nodes gone, a
// write to the survivor's group leader may be in its log but can never
// commit: outcome_unknown; once it stepped down, requests are unavailable.
func TestRESTUnavailableAndOutcomeUnknown(t *testing.T) {
	// Elections after 2.5-5 s: the leader must still lead when the write
	// arrives, after two nodes have stopped (CheckQuorum makes it step down
	// one election timeout after it last heard from a quorum).
	c := startRESTCluster(t, 3, 250*time.Millisecond)
	survivor := 0
	key := ""
	var group ids.GroupID
	for i := 0; key == ""; i++ {
		k := fmt.Sprintf("u%d", i)
		if _, g := c.Node(0).Route([]byte(k)); c.Node(survivor).Node().IsLeader(g) {
			key, group = k, g
		}
		if i > 10000 {
			t.Skip("node 1 leads no group")
		}
	}
	var stopping sync.WaitGroup
	for _, i := range []int{1, 2} {
		stopping.Go(func() { c.StopNode(i) })
	}
	stopping.Wait()
	leads := c.Node(survivor).Node().IsLeader(group)
	a := call(t, "PUT", c.urls[0]+"/v1/kv/"+key, []byte("v"), api.HeaderTimeout, "300ms")
	switch {
	case leads && a.status == 504 && a.errCode(t).Code == "outcome_unknown" && a.header.Get("Retry-After") != "":
		// Proposed by a leader that cannot commit: it may still apply.
	case !leads && a.status == 503 && a.errCode(t).Code == "unavailable" && a.header.Get("Retry-After") != "":
		// The stops outlasted an election timeout and the leader stepped
		// down first: nothing was proposed, so the answer says so.
		t.Logf("the leader stepped down before the write: %s", a.body)
	default:
		t.Fatalf("write without a quorum (leader before the write: %v): %d %s", leads, a.status, a.body)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		a := call(t, "GET", c.urls[0]+"/v1/kv/"+key, nil, api.HeaderTimeout, "300ms")
		if a.status == 503 && a.errCode(t).Code == "unavailable" && a.header.Get("Retry-After") != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("read without a quorum: %d %s", a.status, a.body)
		}
	}
	for {
		a := call(t, "GET", c.urls[0]+"/readyz", nil)
		if a.status == 503 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("readyz without a quorum: %d %s", a.status, a.body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
