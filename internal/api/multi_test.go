package api_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/api"
	"github.com/nodedb/nodedb-cluster/internal/multiwire"
)

// postMulti sends reqs in one POST /v1/multi and returns the answers by
// request index.
func postMulti(t *testing.T, url string, reqs []multiwire.Request) []multiwire.Response {
	t.Helper()
	a := call(t, "POST", url+"/v1/multi", multiwire.AppendRequests(nil, reqs), "Content-Type", multiwire.ContentType)
	if a.status != 200 || a.header.Get("Content-Type") != multiwire.ContentType {
		t.Fatalf("multi: %d %s", a.status, a.body)
	}
	rr := multiwire.NewResponseReader(bytes.NewReader(a.body), multiwire.DefaultLimits())
	out := make([]multiwire.Response, len(reqs))
	seen := make([]bool, len(reqs))
	for {
		r, err := rr.Next(len(reqs))
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if seen[r.Index] {
			t.Fatalf("two answers to request %d", r.Index)
		}
		seen[r.Index] = true
		out[r.Index] = r
	}
	for i, ok := range seen {
		if !ok {
			t.Fatalf("no answer to request %d", i)
		}
	}
	return out
}

// TestMulti: requests carried in one exchange behave exactly as they do
// alone (versions, CAS, exactly-once identities, forwarding, errors), and
// what they may carry is limited to single-key KV requests.
func TestMulti(t *testing.T) {
	c := startRESTCluster(t, 3, 20*time.Millisecond)
	h := func(kv ...string) http.Header {
		hd := http.Header{}
		for i := 0; i+1 < len(kv); i += 2 {
			hd.Set(kv[i], kv[i+1])
		}
		return hd
	}
	// 40 keys over every group, written through node 2 (forwarded where
	// it does not lead), then read back through node 3.
	var puts []multiwire.Request
	for i := range 40 {
		puts = append(puts, multiwire.Request{Method: "PUT", URI: fmt.Sprintf("/v1/kv/m%d", i), Header: h(), Body: []byte(fmt.Sprintf("v%d", i))})
	}
	for i, a := range postMulti(t, c.urls[1], puts) {
		if a.Status != 200 || a.Header.Get(api.HeaderVersion) != "1" {
			t.Fatalf("put m%d: %d %s", i, a.Status, a.Body)
		}
	}
	var gets []multiwire.Request
	for i := range 40 {
		gets = append(gets, multiwire.Request{Method: "GET", URI: fmt.Sprintf("/v1/kv/m%d", i), Header: h()})
	}
	for i, a := range postMulti(t, c.urls[2], gets) {
		if a.Status != 200 || string(a.Body) != fmt.Sprintf("v%d", i) {
			t.Fatalf("get m%d: %d %q", i, a.Status, a.Body)
		}
	}

	ans := postMulti(t, c.urls[0], []multiwire.Request{
		// CAS against the current version and a stale one.
		{Method: "PUT", URI: "/v1/kv/m0?if_version=1", Header: h(), Body: []byte("cas")},
		{Method: "PUT", URI: "/v1/kv/m1?if_version=7", Header: h(), Body: []byte("stale")},
		// An exactly-once identity, carried twice: applied once.
		{Method: "PUT", URI: "/v1/kv/once", Header: h(api.HeaderClientID, "77", api.HeaderSeq, "1", api.HeaderAckedBelow, "1"), Body: []byte("a")},
		{Method: "DELETE", URI: "/v1/kv/m2", Header: h()},
		// Refused: not a single-key KV request.
		{Method: "POST", URI: "/v1/multi", Header: h(), Body: []byte{multiwire.Version, 0}},
		{Method: "GET", URI: "/v1/cluster", Header: h()},
		{Method: "GET", URI: "/v1/kv?prefix=m", Header: h()},
		{Method: "GET", URI: "/debug/pprof/", Header: h()},
		// Bad input inside a carried request.
		{Method: "PUT", URI: "/v1/kv/m3?if_version=x", Header: h(), Body: []byte("x")},
		{Method: "PUT", URI: "/v1/kv/" + strings.Repeat("k", 5000), Header: h(), Body: []byte("x")},
	})
	want := []struct {
		status int
		code   string
	}{{200, ""}, {409, "conflict"}, {200, ""}, {200, ""}, {400, "invalid_argument"}, {400, "invalid_argument"}, {400, "invalid_argument"}, {400, "invalid_argument"}, {400, "invalid_argument"}, {413, "too_large"}}
	for i, w := range want {
		a := ans[i]
		if a.Status != w.status || (w.code != "" && !strings.Contains(string(a.Body), `"code":"`+w.code+`"`)) {
			t.Errorf("request %d: %d %s, want %d %s", i, a.Status, a.Body, w.status, w.code)
		}
	}
	again := postMulti(t, c.urls[2], []multiwire.Request{
		{Method: "PUT", URI: "/v1/kv/once", Header: h(api.HeaderClientID, "77", api.HeaderSeq, "1", api.HeaderAckedBelow, "1"), Body: []byte("a")},
	})
	if again[0].Status != 200 || again[0].Header.Get(api.HeaderVersion) != "1" {
		t.Fatalf("replayed write: %d %s %v, want the first result (version 1)", again[0].Status, again[0].Body, again[0].Header)
	}
	if g := call(t, "GET", c.urls[0]+"/v1/kv/m2", nil); g.status != 404 {
		t.Fatalf("deleted key: %d %s", g.status, g.body)
	}

	// A malformed exchange as a whole: invalid_argument, nothing stored.
	for name, body := range map[string][]byte{
		"empty":       nil,
		"bad version": {7, 1},
		"truncated":   multiwire.AppendRequests(nil, []multiwire.Request{{Method: "PUT", URI: "/v1/kv/never", Body: []byte("x")}})[:12],
	} {
		a := call(t, "POST", c.urls[0]+"/v1/multi", body)
		if a.status != 400 || a.errCode(t).Code != "invalid_argument" {
			t.Errorf("%s: %d %s", name, a.status, a.body)
		}
	}
	if g := call(t, "GET", c.urls[0]+"/v1/kv/never", nil); g.status != 404 {
		t.Fatalf("a malformed exchange stored something: %d %s", g.status, g.body)
	}
}
