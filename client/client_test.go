package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSeqTracker(t *testing.T) {
	var s seqTracker
	s.init()
	a, b, c := s.begin(), s.begin(), s.begin()
	if a != 1 || b != 2 || c != 3 || s.ackedBelow() != 1 {
		t.Fatalf("begin: %d %d %d, acked below %d", a, b, c, s.ackedBelow())
	}
	s.end(b)
	if s.ackedBelow() != 1 {
		t.Fatalf("after ending 2 of 1..3: acked below %d, want 1", s.ackedBelow())
	}
	s.end(a)
	if s.ackedBelow() != 3 {
		t.Fatalf("after ending 1 and 2: acked below %d, want 3", s.ackedBelow())
	}
	s.end(c)
	if d := s.begin(); d != 4 || s.ackedBelow() != 4 || len(s.finished) != 0 {
		t.Fatalf("after ending all: next %d acked below %d finished %v", d, s.ackedBelow(), s.finished)
	}
}

func TestKeyPath(t *testing.T) {
	for key, want := range map[string]string{
		"k":        "/v1/kv/k",
		"a/b":      "/v1/kv/a%2Fb",
		"a.b":      "/v1/kv/a.b",
		".":        "/v1/kv/%2E",
		"..":       "/v1/kv/%2E%2E",
		"{t}x y":   "/v1/kv/%7Bt%7Dx%20y",
		"\x00\xff": "/v1/kv/%00%FF",
	} {
		if got, err := keyPath([]byte(key)); err != nil || got != want {
			t.Errorf("keyPath(%q) = %q, %v; want %q", key, got, err, want)
		}
	}
	if _, err := keyPath(nil); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("empty key: %v", err)
	}
}

func TestNewClientID(t *testing.T) {
	for range 1000 {
		if id := newClientID(); id == 0 || id>>63 != 0 {
			t.Fatalf("client ID %x: want non-zero with the top bit clear", id)
		}
	}
}

// TestBasic covers the operations end to end on three nodes.
func TestBasic(t *testing.T) {
	c := startCluster(t, 3, 20*time.Millisecond)
	cl := c.newClient(t, Config{Endpoints: c.addrs[1:2]}) // one endpoint is enough
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	w, err := cl.Put(ctx, []byte("k"), []byte("v1"))
	if err != nil || w.Version != 1 || w.PrevVersion != 0 {
		t.Fatalf("put: %+v %v", w, err)
	}
	g, err := cl.Get(ctx, []byte("k"))
	if err != nil || string(g.Value) != "v1" || g.Version != 1 || g.VShard != w.VShard {
		t.Fatalf("get: %+v %v (put %+v)", g, err, w)
	}
	if w, err := cl.Put(ctx, []byte("k"), []byte("v2")); err != nil || w.Version != 2 || w.PrevVersion != 1 {
		t.Fatalf("second put: %+v %v", w, err)
	}

	// Compare-and-set.
	_, err = cl.Put(ctx, []byte("k"), []byte("stale"), WithIfVersion(1))
	var e *Error
	if !errors.Is(err, ErrConflict) || !errors.As(err, &e) || e.Status != http.StatusConflict {
		t.Fatalf("CAS with a stale version: %v", err)
	}
	if cur, ok := CurrentVersion(err); !ok || cur != 2 {
		t.Fatalf("conflict's current version: %d %v (%v)", cur, ok, e.Hint)
	}
	if w, err := cl.Put(ctx, []byte("k"), []byte("v3"), WithIfVersion(2)); err != nil || w.Version != 3 {
		t.Fatalf("CAS with the current version: %+v %v", w, err)
	}
	if _, err := cl.Put(ctx, []byte("k"), []byte("x"), WithIfVersion(0)); !errors.Is(err, ErrConflict) {
		t.Fatalf("if_version 0 on an existing key: %v", err)
	}
	if w, err := cl.Put(ctx, []byte("fresh"), []byte("x"), WithIfVersion(0)); err != nil || w.Version != 1 {
		t.Fatalf("if_version 0 on an absent key: %+v %v", w, err)
	}
	if _, err := cl.Delete(ctx, []byte("fresh"), WithIfVersion(7)); !errors.Is(err, ErrConflict) {
		t.Fatalf("conditional delete with a wrong version: %v", err)
	}
	if cur, ok := CurrentVersion(nil); ok {
		t.Fatalf("CurrentVersion of a nil error: %d", cur)
	}

	// Delete, then not found.
	if w, err := cl.Delete(ctx, []byte("fresh")); err != nil || w.Version != 0 || w.PrevVersion != 1 {
		t.Fatalf("delete: %+v %v", w, err)
	}
	if _, err := cl.Delete(ctx, []byte("fresh")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete of an absent key: %v", err)
	}
	if _, err := cl.Get(ctx, []byte("fresh")); !errors.Is(err, ErrNotFound) || errors.Is(err, ErrConflict) {
		t.Fatalf("get of a deleted key: %v", err)
	}
	if _, err := cl.Get(ctx, []byte("fresh"), WithStale(time.Second)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("stale get of a deleted key: %v", err)
	}

	// Keys that need escaping, and empty values.
	for _, k := range []string{"a/b", "a//b", ".", "..", "sp ace?#&=", "\x00\xff", "{tag}x", "ünï"} {
		if _, err := cl.Put(ctx, []byte(k), []byte("val-"+k)); err != nil {
			t.Fatalf("put %q: %v", k, err)
		}
		if g, err := cl.Get(ctx, []byte(k)); err != nil || string(g.Value) != "val-"+k {
			t.Fatalf("get %q: %q %v", k, g.Value, err)
		}
	}
	if _, err := cl.Put(ctx, []byte("empty"), nil); err != nil {
		t.Fatal(err)
	}
	if g, err := cl.Get(ctx, []byte("empty")); err != nil || len(g.Value) != 0 || g.Version != 1 {
		t.Fatalf("empty value: %+v %v", g, err)
	}
	if _, err := cl.Put(ctx, nil, []byte("v")); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("empty key: %v", err)
	}

	// Limits: nothing written.
	if _, err := cl.Put(ctx, []byte("big"), bytes.Repeat([]byte("x"), 64<<10+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("value over the limit: %v", err)
	}
	if _, err := cl.Put(ctx, bytes.Repeat([]byte("k"), 4097), []byte("v")); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("key over the limit: %v", err)
	}
	if _, err := cl.Get(ctx, []byte("big")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a refused value was stored: %v", err)
	}
	if _, err := cl.Get(ctx, []byte("k"), WithStale(time.Microsecond)); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("stale bound under 1ms: %v", err)
	}

	// Idempotency-Key: the replay gets the first result, applies nothing.
	first, err := cl.Put(ctx, []byte("idem"), []byte("one"), WithIdempotencyKey("req-1"))
	if err != nil {
		t.Fatal(err)
	}
	cl2 := c.newClient(t, Config{})
	replay, err := cl2.Put(ctx, []byte("idem"), []byte("two"), WithIdempotencyKey("req-1"))
	if err != nil || replay != first {
		t.Fatalf("replay: %+v %v, first %+v", replay, err, first)
	}
	if g, err := cl.Get(ctx, []byte("idem")); err != nil || string(g.Value) != "one" || g.Version != 1 {
		t.Fatalf("after the replay: %+v %v", g, err)
	}
	if w, err := cl.Put(ctx, []byte("idem"), []byte("three"), WithIdempotencyKey("req-2")); err != nil || w.Version != 2 {
		t.Fatalf("a new idempotency key applies: %+v %v", w, err)
	}
	if _, err := cl.Delete(ctx, []byte("idem"), WithIdempotencyKey(strings.Repeat("x", 257))); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("idempotency key over 256 bytes: %v", err)
	}

	// Scans over every vShard, page by page, and within one hash tag.
	want := map[string]string{}
	for i := range 30 {
		k := fmt.Sprintf("scan/%02d", i)
		if i%3 == 0 {
			k = fmt.Sprintf("scan/{t}%02d", i)
		}
		want[k] = "value of " + k
		if _, err := cl.Put(ctx, []byte(k), []byte(want[k])); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cl.Put(ctx, []byte("scan-not"), []byte("x")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		prefix string
		page   int
		opts   []ReadOption
	}{{"scan/", 4, nil}, {"scan/", 0, nil}, {"scan/", 7, []ReadOption{WithStale(2 * time.Second)}}, {"scan/{t}", 3, nil}} {
		got := map[string]bool{}
		for it, err := range cl.Scan(ctx, []byte(tc.prefix), tc.page, tc.opts...) {
			if err != nil {
				t.Fatalf("scan %q: %v", tc.prefix, err)
			}
			k := string(it.Key)
			if got[k] || want[k] != string(it.Value) || !strings.HasPrefix(k, tc.prefix) || it.Version != 1 {
				t.Fatalf("scan %q: item %q=%q v%d (seen before: %v)", tc.prefix, k, it.Value, it.Version, got[k])
			}
			got[k] = true
		}
		n := 0
		for k := range want {
			if strings.HasPrefix(k, tc.prefix) {
				n++
			}
		}
		if len(got) != n {
			t.Fatalf("scan %q page %d: %d keys, want %d", tc.prefix, tc.page, len(got), n)
		}
	}
	page, err := cl.ScanPage(ctx, []byte("scan/"), "", 4)
	if err != nil || len(page.Items) != 4 || page.Cursor == "" {
		t.Fatalf("first page: %d items, cursor %q, %v", len(page.Items), page.Cursor, err)
	}
	for range cl.Scan(ctx, []byte("scan/"), 2) {
		break // stopping early is fine
	}
	if _, err := cl.ScanPage(ctx, []byte("scan/"), "bogus", 4); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("bad cursor: %v", err)
	}

	// Contexts and Close.
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	if _, err := cl.Get(cctx, []byte("k")); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled context: %v", err)
	}
	cl2.Close()
	if _, err := cl2.Get(ctx, []byte("k")); !errors.Is(err, ErrClosed) {
		t.Fatalf("closed client: %v", err)
	}
	if _, err := New(ctx, Config{}); err == nil {
		t.Fatal("New without endpoints")
	}
}

// TestExample runs examples/kv against a test cluster.
func TestExample(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the example")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool")
	}
	bin := filepath.Join(t.TempDir(), "kv")
	if out, err := exec.Command(goTool, "build", "-o", bin, "../examples/kv").CombinedOutput(); err != nil {
		t.Fatalf("build the example: %v\n%s", err, out)
	}
	c := startCluster(t, 3, 20*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--endpoints", strings.Join(c.addrs, ",")).CombinedOutput()
	if err != nil {
		t.Fatalf("example: %v\n%s", err, out)
	}
	for _, want := range []string{"put example/greeting", "get example/greeting = \"hello\"", "conflict", "scan"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("example output lacks %q:\n%s", want, out)
		}
	}
}

// TestDecodeWriteResult: a node's write answer is read without reflection,
// and any other JSON of the same fields is still read (encoding/json).
func TestDecodeWriteResult(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for range 1000 {
		want := WriteResult{Version: rng.Uint64() >> rng.IntN(64), VShard: rng.Uint32() >> rng.IntN(32), PrevVersion: rng.Uint64() >> rng.IntN(64)}
		// As a node writes it (encoding/json's output for its struct).
		b := fmt.Appendf(nil, "{\"version\":%d,\"vshard\":%d,\"prev_version\":%d}\n", want.Version, want.VShard, want.PrevVersion)
		if got, err := decodeWriteResult(b); err != nil || got != want {
			t.Fatalf("%s: %+v %v", b, got, err)
		}
		// Another order, spaces, an extra field.
		b = fmt.Appendf(nil, "{ \"vshard\": %d, \"prev_version\": %d, \"x\": 1, \"version\": %d }", want.VShard, want.PrevVersion, want.Version)
		if got, err := decodeWriteResult(b); err != nil || got != want {
			t.Fatalf("%s: %+v %v", b, got, err)
		}
	}
	for _, bad := range []string{``, `{`, `{"version":1,"vshard":99999999999,"prev_version":0}`, `{"version":-1}`, `[1]`} {
		if got, err := decodeWriteResult([]byte(bad)); err == nil {
			t.Errorf("%q decoded as %+v", bad, got)
		}
	}
}
