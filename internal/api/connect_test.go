package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	kvv1 "github.com/nodedb/nodedb-cluster/api/kv/v1"
	"github.com/nodedb/nodedb-cluster/api/kv/v1/kvv1connect"
	"github.com/nodedb/nodedb-cluster/internal/freeport"
	"github.com/nodedb/nodedb-cluster/internal/kv"
	"github.com/nodedb/nodedb-cluster/internal/server"
	"github.com/nodedb/nodedb-cluster/internal/testwatch"
	"github.com/nodedb/nodedb-cluster/vshard"
)

func TestMain(m *testing.M) { testwatch.Main(m) }

const connectVShards = 16

func connectFreeUDP(t *testing.T) string {
	t.Helper()
	addr, err := freeport.UDP()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// connectTestLog logs to stderr when NODEDB_TEST_LOG is set.
func connectTestLog() *slog.Logger {
	if os.Getenv("NODEDB_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startConnectNode starts one bootstrapped node and waits until it serves; the
// node stops when the test ends.
func startConnectNode(t *testing.T) *server.Server {
	t.Helper()
	s, err := server.Start(context.Background(), server.Config{
		Dir:             t.TempDir(),
		Listen:          connectFreeUDP(t),
		Bootstrap:       true,
		Settings:        server.Settings{VShards: connectVShards, Groups: 2, RF: 1},
		TickInterval:    20 * time.Millisecond,
		ControlInterval: 100 * time.Millisecond,
		Logger:          connectTestLog(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := s.Ready()
		if err == nil {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("node not ready: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type connectProtoClient struct {
	name string
	kv   kvv1connect.KVClient
}

// connectClients serves ConnectHandler(svc) twice: over HTTP/1.1 for the Connect
// protocol, and over TLS with HTTP/2 for gRPC (every request is checked to
// be HTTP/2) and gRPC-Web.
func connectClients(t *testing.T, svc Service) []connectProtoClient {
	t.Helper()
	path, h := ConnectHandler(svc)
	if path != "/nodedb.kv.v1.KV/" {
		t.Fatalf("path %q", path)
	}
	mux := http.NewServeMux()
	mux.Handle(path, h)

	plain := httptest.NewServer(mux)
	t.Cleanup(plain.Close)
	t.Cleanup(plain.Client().CloseIdleConnections)

	h2 := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 {
			http.Error(w, "want HTTP/2", http.StatusHTTPVersionNotSupported)
			return
		}
		mux.ServeHTTP(w, r)
	}))
	h2.EnableHTTP2 = true
	h2.StartTLS()
	t.Cleanup(h2.Close)
	t.Cleanup(h2.Client().CloseIdleConnections)

	return []connectProtoClient{
		{"connect", kvv1connect.NewKVClient(plain.Client(), plain.URL)},
		{"grpc", kvv1connect.NewKVClient(h2.Client(), h2.URL, connect.WithGRPC())},
		{"grpcweb", kvv1connect.NewKVClient(h2.Client(), h2.URL, connect.WithGRPCWeb())},
	}
}

func connectCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func connectU64(v uint64) *uint64 { return &v }

// wantConnectErr checks err's connect code, its nodedb-code metadata and its
// ErrorDetail, and returns the detail's hint.
func wantConnectErr(t *testing.T, err error, code connect.Code, nodedb string) map[string]any {
	t.Helper()
	var cerr *connect.Error
	if !errors.As(err, &cerr) {
		t.Fatalf("error %v (%T), want a connect error %v/%s", err, err, code, nodedb)
	}
	if cerr.Code() != code {
		t.Fatalf("code %v (%v), want %v", cerr.Code(), err, code)
	}
	if nodedb == "" {
		return nil
	}
	if got := cerr.Meta().Get(MetaCode); got != nodedb {
		t.Fatalf("%s = %q (%v), want %q", MetaCode, got, err, nodedb)
	}
	if !strings.HasPrefix(cerr.Message(), nodedb+": ") {
		t.Fatalf("message %q does not start with the code %q", cerr.Message(), nodedb)
	}
	detail := connectDetail(t, err)
	if detail == nil || detail.GetCode() != nodedb {
		t.Fatalf("error detail %v, want code %q", detail, nodedb)
	}
	if detail.GetHintJson() != cerr.Meta().Get(MetaHint) {
		t.Fatalf("detail hint %q, metadata hint %q", detail.GetHintJson(), cerr.Meta().Get(MetaHint))
	}
	var hint map[string]any
	if detail.GetHintJson() != "" {
		if err := json.Unmarshal([]byte(detail.GetHintJson()), &hint); err != nil {
			t.Fatalf("hint %q: %v", detail.GetHintJson(), err)
		}
	}
	return hint
}

// connectDetail returns err's ErrorDetail, or nil.
func connectDetail(t *testing.T, err error) *kvv1.ErrorDetail {
	t.Helper()
	var cerr *connect.Error
	if !errors.As(err, &cerr) {
		return nil
	}
	for _, d := range cerr.Details() {
		v, err := d.Value()
		if err != nil {
			t.Fatalf("detail: %v", err)
		}
		if ed, ok := v.(*kvv1.ErrorDetail); ok {
			return ed
		}
	}
	return nil
}

func connectPut(t *testing.T, c kvv1connect.KVClient, key, value string, ifVersion *uint64) *kvv1.PutResponse {
	t.Helper()
	res, err := c.Put(connectCtx(t), connect.NewRequest(&kvv1.PutRequest{Key: []byte(key), Value: []byte(value), IfVersion: ifVersion}))
	if err != nil {
		t.Fatalf("put %q: %v", key, err)
	}
	return res.Msg
}

func connectGet(t *testing.T, c kvv1connect.KVClient, key string) *kvv1.GetResponse {
	t.Helper()
	res, err := c.Get(connectCtx(t), connect.NewRequest(&kvv1.GetRequest{Key: []byte(key)}))
	if err != nil {
		t.Fatalf("get %q: %v", key, err)
	}
	return res.Msg
}

// connectKeysInOtherVShards returns two keys with prefix p in different vShards.
func connectKeysInOtherVShards(p string) (string, string) {
	a := p + "0"
	for i := 1; ; i++ {
		b := fmt.Sprintf("%s%d", p, i)
		if vshard.ForKey([]byte(b), connectVShards) != vshard.ForKey([]byte(a), connectVShards) {
			return a, b
		}
	}
}

func TestConnect(t *testing.T) {
	s := startConnectNode(t)
	for _, pc := range connectClients(t, s) {
		c, p := pc.kv, pc.name+"/"
		t.Run(pc.name, func(t *testing.T) {
			t.Run("RoundTrip", func(t *testing.T) { testConnectRoundTrip(t, s, c, p) })
			t.Run("IfVersion", func(t *testing.T) { testConnectIfVersion(t, c, p) })
			t.Run("Idempotency", func(t *testing.T) { testConnectIdempotency(t, c, p) })
			t.Run("Batch", func(t *testing.T) { testConnectBatch(t, c, p) })
			t.Run("BatchAcrossVShards", func(t *testing.T) { testConnectBatchAcrossVShards(t, c, p) })
			t.Run("Scan", func(t *testing.T) { testConnectScan(t, c, p) })
			t.Run("TooLarge", func(t *testing.T) { testConnectTooLarge(t, s, c, p) })
			t.Run("StaleRead", func(t *testing.T) { testConnectStaleRead(t, c, p) })
			t.Run("Cluster", func(t *testing.T) { testConnectCluster(t, s, c) })
			t.Run("InvalidArgument", func(t *testing.T) { testConnectInvalid(t, c, p) })
		})
	}
	t.Run("MalformedProtobuf", func(t *testing.T) { testConnectMalformed(t, s) })
	t.Run("Endpoint", func(t *testing.T) { testConnectEndpoint(t, s) })
}

// testConnectEndpoint calls the service through the node's API endpoint
// (Listen): gRPC over HTTP/2 cleartext, and the Connect protocol over
// HTTP/1.1, next to REST on the same port.
func testConnectEndpoint(t *testing.T, s *server.Server) {
	e, err := Listen(Config{Addr: "127.0.0.1:0"}, s)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := e.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}()
	base := "http://" + e.Addr().String()
	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	grpcHTTP := &http.Client{Transport: &http.Transport{Protocols: &h2c}}
	defer grpcHTTP.CloseIdleConnections()
	plainHTTP := &http.Client{Transport: &http.Transport{}}
	defer plainHTTP.CloseIdleConnections()

	g := kvv1connect.NewKVClient(grpcHTTP, base, connect.WithGRPC())
	if r := connectPut(t, g, "endpoint/k", "v", nil); r.GetVersion() != 1 {
		t.Fatalf("put: %v", r)
	}
	c := kvv1connect.NewKVClient(plainHTTP, base)
	if r := connectGet(t, c, "endpoint/k"); string(r.GetValue()) != "v" || r.GetVersion() != 1 {
		t.Fatalf("get: %v", r)
	}
	// The Connect protocol with JSON, as curl sends it (docs/api.md).
	jr, err := plainHTTP.Post(base+"/nodedb.kv.v1.KV/Get", "application/json", strings.NewReader(`{"key": "ZW5kcG9pbnQvaw=="}`))
	if err != nil {
		t.Fatal(err)
	}
	defer jr.Body.Close()
	var got struct {
		Found   bool
		Value   []byte
		Version string
	}
	if err := json.NewDecoder(jr.Body).Decode(&got); err != nil || jr.StatusCode != http.StatusOK || !got.Found || string(got.Value) != "v" || got.Version != "1" {
		t.Fatalf("JSON get: %d %+v %v", jr.StatusCode, got, err)
	}
	resp, err := plainHTTP.Get(base + "/v1/kv/endpoint%2Fk")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if b, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusOK || string(b) != "v" {
		t.Fatalf("REST get: %d %q", resp.StatusCode, b)
	}
}

func testConnectRoundTrip(t *testing.T, s *server.Server, c kvv1connect.KVClient, p string) {
	key := p + "rt"
	wantVS, _ := s.Route([]byte(key))
	if r := connectPut(t, c, key, "one", nil); r.GetVersion() != 1 || r.GetPrevVersion() != 0 || r.GetVshard() != wantVS {
		t.Fatalf("first put: %v, want version 1 in vShard %d", r, wantVS)
	}
	if r := connectPut(t, c, key, "two", nil); r.GetVersion() != 2 || r.GetPrevVersion() != 1 {
		t.Fatalf("second put: %v, want version 2 after 1", r)
	}
	if g := connectGet(t, c, key); !g.GetFound() || string(g.GetValue()) != "two" || g.GetVersion() != 2 || g.GetVshard() != wantVS {
		t.Fatalf("get: %v", g)
	}
	d, err := c.Delete(connectCtx(t), connect.NewRequest(&kvv1.DeleteRequest{Key: []byte(key)}))
	if err != nil {
		t.Fatal(err)
	}
	if d.Msg.GetVersion() != 0 || d.Msg.GetPrevVersion() != 2 || d.Msg.GetVshard() != wantVS {
		t.Fatalf("delete: %v", d.Msg)
	}
	if g := connectGet(t, c, key); g.GetFound() || g.GetVersion() != 0 || len(g.GetValue()) != 0 {
		t.Fatalf("get after delete: %v", g)
	}
	_, err = c.Delete(connectCtx(t), connect.NewRequest(&kvv1.DeleteRequest{Key: []byte(key)}))
	wantConnectErr(t, err, connect.CodeNotFound, server.CodeNotFound)
	if r := connectPut(t, c, key, "three", nil); r.GetVersion() != 1 {
		t.Fatalf("put after delete: %v, want version 1", r)
	}
	// Binary keys and values are bytes, not strings.
	bin := p + "bin\x00\xff"
	connectPut(t, c, bin, "\x00\x01\xfe", nil)
	if g := connectGet(t, c, bin); string(g.GetValue()) != "\x00\x01\xfe" {
		t.Fatalf("binary value: %q", g.GetValue())
	}
}

func testConnectIfVersion(t *testing.T, c kvv1connect.KVClient, p string) {
	key := p + "cas"
	if r := connectPut(t, c, key, "a", connectU64(0)); r.GetVersion() != 1 {
		t.Fatalf("put if absent: %v", r)
	}
	_, err := c.Put(connectCtx(t), connect.NewRequest(&kvv1.PutRequest{Key: []byte(key), Value: []byte("b"), IfVersion: connectU64(0)}))
	hint := wantConnectErr(t, err, connect.CodeAborted, server.CodeConflict)
	if hint["current_version"] != float64(1) {
		t.Fatalf("conflict hint %v, want current_version 1", hint)
	}
	_, err = c.Put(connectCtx(t), connect.NewRequest(&kvv1.PutRequest{Key: []byte(key), Value: []byte("b"), IfVersion: connectU64(5)}))
	wantConnectErr(t, err, connect.CodeAborted, server.CodeConflict)
	if r := connectPut(t, c, key, "c", connectU64(1)); r.GetVersion() != 2 {
		t.Fatalf("put if_version=1: %v", r)
	}
	_, err = c.Delete(connectCtx(t), connect.NewRequest(&kvv1.DeleteRequest{Key: []byte(key), IfVersion: connectU64(1)}))
	wantConnectErr(t, err, connect.CodeAborted, server.CodeConflict)
	if g := connectGet(t, c, key); string(g.GetValue()) != "c" || g.GetVersion() != 2 {
		t.Fatalf("after failed conditions: %v", g)
	}
	if _, err := c.Delete(connectCtx(t), connect.NewRequest(&kvv1.DeleteRequest{Key: []byte(key), IfVersion: connectU64(2)})); err != nil {
		t.Fatal(err)
	}
}

func testConnectIdempotency(t *testing.T, c kvv1connect.KVClient, p string) {
	key := p + "idem"
	req := func(v string) *connect.Request[kvv1.PutRequest] {
		return connect.NewRequest(&kvv1.PutRequest{Key: []byte(key), Value: []byte(v), IdempotencyKey: p + "op-1"})
	}
	first, err := c.Put(connectCtx(t), req("first"))
	if err != nil {
		t.Fatal(err)
	}
	if first.Msg.GetVersion() != 1 {
		t.Fatalf("first: %v", first.Msg)
	}
	// A retry (here with another value, to see which one applied) gets the
	// first result and applies nothing.
	for range 2 {
		again, err := c.Put(connectCtx(t), req("second"))
		if err != nil {
			t.Fatal(err)
		}
		if again.Msg.GetVersion() != 1 || again.Msg.GetVshard() != first.Msg.GetVshard() {
			t.Fatalf("retry: %v, want the first result %v", again.Msg, first.Msg)
		}
	}
	if g := connectGet(t, c, key); string(g.GetValue()) != "first" || g.GetVersion() != 1 {
		t.Fatalf("after retries: %v", g)
	}

	// The Go client's form: client ID and sequence.
	sreq := func(v string) *connect.Request[kvv1.PutRequest] {
		return connect.NewRequest(&kvv1.PutRequest{Key: []byte(key), Value: []byte(v), ClientId: 42, Seq: 7})
	}
	r1, err := c.Put(connectCtx(t), sreq("x"))
	if err != nil {
		t.Fatal(err)
	}
	r2, err := c.Put(connectCtx(t), sreq("y"))
	if err != nil {
		t.Fatal(err)
	}
	if r1.Msg.GetVersion() != 2 || r2.Msg.GetVersion() != 2 {
		t.Fatalf("seq retry: %v then %v, want version 2 twice", r1.Msg, r2.Msg)
	}
	if g := connectGet(t, c, key); string(g.GetValue()) != "x" || g.GetVersion() != 2 {
		t.Fatalf("after seq retry: %v", g)
	}

	// Both forms at once are refused.
	_, err = c.Put(connectCtx(t), connect.NewRequest(&kvv1.PutRequest{Key: []byte(key), Value: []byte("z"), IdempotencyKey: "k", ClientId: 1, Seq: 1}))
	wantConnectErr(t, err, connect.CodeInvalidArgument, server.CodeInvalidArgument)
}

func testConnectBatch(t *testing.T, c kvv1connect.KVClient, p string) {
	a, b := p+"{u1}.a", p+"{u1}.b"
	res, err := c.Batch(connectCtx(t), connect.NewRequest(&kvv1.BatchRequest{Ops: []*kvv1.Op{
		{Kind: kvv1.Op_KIND_PUT, Key: []byte(a), Value: []byte("A1")},
		{Kind: kvv1.Op_KIND_PUT, Key: []byte(b), Value: []byte("B1"), IfVersion: connectU64(0)},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	rs := res.Msg.GetResults()
	if len(rs) != 2 || rs[0].GetVersion() != 1 || rs[1].GetVersion() != 1 || rs[0].GetVshard() != rs[1].GetVshard() {
		t.Fatalf("batch results %v", rs)
	}
	// The second op's condition fails: nothing applies, the first op
	// included.
	_, err = c.Batch(connectCtx(t), connect.NewRequest(&kvv1.BatchRequest{Ops: []*kvv1.Op{
		{Kind: kvv1.Op_KIND_PUT, Key: []byte(a), Value: []byte("A2"), IfVersion: connectU64(1)},
		{Kind: kvv1.Op_KIND_DELETE, Key: []byte(b), IfVersion: connectU64(7)},
	}}))
	hint := wantConnectErr(t, err, connect.CodeAborted, server.CodeConflict)
	if hint["failed_op"] != float64(1) || hint["current_version"] != float64(1) {
		t.Fatalf("conflict hint %v, want failed_op 1, current_version 1", hint)
	}
	if g := connectGet(t, c, a); string(g.GetValue()) != "A1" || g.GetVersion() != 1 {
		t.Fatalf("after failed batch: %s = %v", a, g)
	}
	if g := connectGet(t, c, b); string(g.GetValue()) != "B1" || g.GetVersion() != 1 {
		t.Fatalf("after failed batch: %s = %v", b, g)
	}
	// Put and delete in one batch, with an idempotency key: a retry gets
	// the first results.
	req := func() *connect.Request[kvv1.BatchRequest] {
		return connect.NewRequest(&kvv1.BatchRequest{IdempotencyKey: p + "batch-1", Ops: []*kvv1.Op{
			{Kind: kvv1.Op_KIND_PUT, Key: []byte(a), Value: []byte("A2"), IfVersion: connectU64(1)},
			{Kind: kvv1.Op_KIND_DELETE, Key: []byte(b)},
		}})
	}
	for range 2 {
		res, err := c.Batch(connectCtx(t), req())
		if err != nil {
			t.Fatal(err)
		}
		rs := res.Msg.GetResults()
		if len(rs) != 2 || rs[0].GetVersion() != 2 || rs[1].GetVersion() != 0 || rs[1].GetPrevVersion() != 1 {
			t.Fatalf("batch results %v", rs)
		}
	}
	if g := connectGet(t, c, a); g.GetVersion() != 2 {
		t.Fatalf("%s = %v", a, g)
	}
	if g := connectGet(t, c, b); g.GetFound() {
		t.Fatalf("%s = %v, want deleted", b, g)
	}
	// A delete carrying a value and an unknown kind are invalid.
	for _, op := range []*kvv1.Op{
		{Kind: kvv1.Op_KIND_DELETE, Key: []byte(a), Value: []byte("x")},
		{Kind: kvv1.Op_Kind(9), Key: []byte(a)},
	} {
		_, err = c.Batch(connectCtx(t), connect.NewRequest(&kvv1.BatchRequest{Ops: []*kvv1.Op{op}}))
		wantConnectErr(t, err, connect.CodeInvalidArgument, server.CodeInvalidArgument)
	}
	_, err = c.Batch(connectCtx(t), connect.NewRequest(&kvv1.BatchRequest{}))
	wantConnectErr(t, err, connect.CodeInvalidArgument, server.CodeInvalidArgument)
}

func testConnectBatchAcrossVShards(t *testing.T, c kvv1connect.KVClient, p string) {
	a, b := connectKeysInOtherVShards(p + "x")
	_, err := c.Batch(connectCtx(t), connect.NewRequest(&kvv1.BatchRequest{Ops: []*kvv1.Op{
		{Kind: kvv1.Op_KIND_PUT, Key: []byte(a), Value: []byte("1")},
		{Kind: kvv1.Op_KIND_PUT, Key: []byte(b), Value: []byte("2")},
	}}))
	wantConnectErr(t, err, connect.CodeInvalidArgument, server.CodeInvalidArgument)
	for _, k := range []string{a, b} {
		if g := connectGet(t, c, k); g.GetFound() {
			t.Fatalf("%s = %v after a refused batch", k, g)
		}
	}
}

func testConnectScan(t *testing.T, c kvv1connect.KVClient, p string) {
	prefix := p + "scan/"
	const n = 37
	want := map[string]bool{}
	vshards := map[uint32]bool{}
	for i := range n {
		k := fmt.Sprintf("%s%02d", prefix, i)
		r := connectPut(t, c, k, "v"+k, nil)
		want[k] = true
		vshards[r.GetVshard()] = true
	}
	if len(vshards) < 2 {
		t.Fatalf("keys in %d vShards, want several", len(vshards))
	}
	// A key outside the prefix is not returned.
	connectPut(t, c, p+"scan", "outside", nil)

	seen := map[string]int{}
	cursor, pages := "", 0
	for {
		res, err := c.Scan(connectCtx(t), connect.NewRequest(&kvv1.ScanRequest{Prefix: []byte(prefix), Cursor: cursor, Limit: 5}))
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if len(res.Msg.GetItems()) > 5 {
			t.Fatalf("page of %d items, limit 5", len(res.Msg.GetItems()))
		}
		for _, it := range res.Msg.GetItems() {
			k := string(it.GetKey())
			seen[k]++
			if string(it.GetValue()) != "v"+k || it.GetVersion() != 1 || it.GetVshard() != vshard.ForKey(it.GetKey(), connectVShards) {
				t.Fatalf("item %v", it)
			}
		}
		if cursor = res.Msg.GetCursor(); cursor == "" {
			break
		}
		if pages > 100 {
			t.Fatal("scan does not end")
		}
	}
	if pages < n/5 {
		t.Fatalf("%d pages for %d keys with limit 5", pages, n)
	}
	for k := range want {
		if seen[k] != 1 {
			t.Errorf("key %q seen %d times", k, seen[k])
		}
	}
	for k, c := range seen {
		if !want[k] {
			t.Errorf("unexpected key %q (%d times)", k, c)
		}
	}
	// A bad cursor is invalid.
	_, err := c.Scan(connectCtx(t), connect.NewRequest(&kvv1.ScanRequest{Prefix: []byte(prefix), Cursor: "not a cursor"}))
	wantConnectErr(t, err, connect.CodeInvalidArgument, server.CodeInvalidArgument)
}

func testConnectTooLarge(t *testing.T, s *server.Server, c kvv1connect.KVClient, p string) {
	lim := s.Limits().MaxValueSize
	if lim <= 0 {
		lim = kv.DefaultMaxValueSize
	}
	key := p + "big"
	// Over the value limit, within the message bound: the service refuses.
	_, err := c.Put(connectCtx(t), connect.NewRequest(&kvv1.PutRequest{Key: []byte(key), Value: make([]byte, lim+1)}))
	wantConnectErr(t, err, connect.CodeResourceExhausted, server.CodeTooLarge)
	// Over the message bound: connect refuses before decoding.
	_, err = c.Put(connectCtx(t), connect.NewRequest(&kvv1.PutRequest{Key: []byte(key), Value: make([]byte, 2*lim)}))
	wantConnectErr(t, err, connect.CodeResourceExhausted, "")
	// A batch over its bound.
	big := make([]byte, lim)
	var ops []*kvv1.Op
	for i := 0; len(ops)*lim <= connectMaxBatchBytes; i++ {
		ops = append(ops, &kvv1.Op{Kind: kvv1.Op_KIND_PUT, Key: fmt.Appendf(nil, "%s{big}%d", p, i), Value: big})
	}
	_, err = c.Batch(connectCtx(t), connect.NewRequest(&kvv1.BatchRequest{Ops: ops}))
	wantConnectErr(t, err, connect.CodeResourceExhausted, "")
	if g := connectGet(t, c, key); g.GetFound() {
		t.Fatalf("%s stored: version %d", key, g.GetVersion())
	}
	if g := connectGet(t, c, string(ops[0].GetKey())); g.GetFound() {
		t.Fatalf("%s stored: version %d", ops[0].GetKey(), g.GetVersion())
	}
	// Exactly at the limit is fine.
	if r := connectPut(t, c, key, string(make([]byte, lim)), nil); r.GetVersion() != 1 {
		t.Fatalf("put at the limit: %v", r)
	}
	// An over-long key.
	_, err = c.Put(connectCtx(t), connect.NewRequest(&kvv1.PutRequest{Key: bytes.Repeat([]byte("k"), kv.DefaultMaxKeySize+1), Value: []byte("v")}))
	wantConnectErr(t, err, connect.CodeResourceExhausted, server.CodeTooLarge)
}

func testConnectStaleRead(t *testing.T, c kvv1connect.KVClient, p string) {
	key := p + "stale"
	connectPut(t, c, key, "s1", nil)
	// The write was acknowledged more than max_staleness ago: a stale read
	// must reflect it.
	time.Sleep(60 * time.Millisecond)
	for _, ms := range []int{50, 5000} {
		res, err := c.Get(connectCtx(t), connect.NewRequest(&kvv1.GetRequest{
			Key:          []byte(key),
			Consistency:  kvv1.Consistency_CONSISTENCY_STALE,
			MaxStaleness: durationpb.New(time.Duration(ms) * time.Millisecond),
		}))
		if ms == 50 {
			if err != nil {
				t.Fatalf("stale get: %v", err)
			}
			if !res.Msg.GetFound() || string(res.Msg.GetValue()) != "s1" || res.Msg.GetVersion() != 1 {
				t.Fatalf("stale get: %v", res.Msg)
			}
		} else if err != nil {
			t.Fatalf("stale get, 5s: %v", err)
		}
	}
	res, err := c.Scan(connectCtx(t), connect.NewRequest(&kvv1.ScanRequest{
		Prefix:       []byte(key),
		Consistency:  kvv1.Consistency_CONSISTENCY_STALE,
		MaxStaleness: durationpb.New(50 * time.Millisecond),
	}))
	if err != nil {
		t.Fatalf("stale scan: %v", err)
	}
	if items := res.Msg.GetItems(); len(items) != 1 || string(items[0].GetKey()) != key {
		t.Fatalf("stale scan: %v", res.Msg)
	}
	for _, req := range []*kvv1.GetRequest{
		{Key: []byte(key), Consistency: kvv1.Consistency_CONSISTENCY_STALE},
		{Key: []byte(key), Consistency: kvv1.Consistency_CONSISTENCY_STALE, MaxStaleness: durationpb.New(time.Microsecond)},
		{Key: []byte(key), MaxStaleness: durationpb.New(time.Second)},
		{Key: []byte(key), Consistency: kvv1.Consistency(7)},
	} {
		_, err := c.Get(connectCtx(t), connect.NewRequest(req))
		wantConnectErr(t, err, connect.CodeInvalidArgument, server.CodeInvalidArgument)
	}
}

func testConnectCluster(t *testing.T, s *server.Server, c kvv1connect.KVClient) {
	res, err := c.Cluster(connectCtx(t), connect.NewRequest(&kvv1.ClusterRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	var st server.ClusterStatus
	if err := json.Unmarshal([]byte(res.Msg.GetStatusJson()), &st); err != nil {
		t.Fatalf("status_json: %v", err)
	}
	if st.ClusterID != s.ClusterID() || st.VShardCount != connectVShards || len(st.Nodes) != 1 || st.Node != uint64(s.ID()) {
		t.Fatalf("status: %+v", st)
	}
	if n := len(st.Groups); n != 3 { // the metadata group and 2 data groups
		t.Fatalf("%d groups: %+v", n, st.Groups)
	}
}

func testConnectInvalid(t *testing.T, c kvv1connect.KVClient, p string) {
	_, err := c.Put(connectCtx(t), connect.NewRequest(&kvv1.PutRequest{Value: []byte("v")}))
	wantConnectErr(t, err, connect.CodeInvalidArgument, server.CodeInvalidArgument)
	_, err = c.Get(connectCtx(t), connect.NewRequest(&kvv1.GetRequest{}))
	wantConnectErr(t, err, connect.CodeInvalidArgument, server.CodeInvalidArgument)
	_, err = c.Delete(connectCtx(t), connect.NewRequest(&kvv1.DeleteRequest{Key: []byte(p + "k"), ClientId: 1}))
	wantConnectErr(t, err, connect.CodeInvalidArgument, server.CodeInvalidArgument)
}

// testConnectMalformed posts bytes that are not a PutRequest: connect answers
// invalid_argument and nothing is written.
func testConnectMalformed(t *testing.T, s *server.Server) {
	path, h := ConnectHandler(s)
	mux := http.NewServeMux()
	mux.Handle(path, h)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	defer srv.Client().CloseIdleConnections()
	resp, err := srv.Client().Post(srv.URL+kvv1connect.KVPutProcedure, "application/proto", strings.NewReader("\xff\xff\xff\xff"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct{ Code string }
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusBadRequest || body.Code != "invalid_argument" {
		t.Fatalf("status %d, code %q", resp.StatusCode, body.Code)
	}
}

// TestConnectErrorMapping checks every docs/api.md code's connect code,
// metadata and detail (not_leader and moved cannot happen on one node).
func TestConnectErrorMapping(t *testing.T) {
	for code, want := range map[string]connect.Code{
		server.CodeInvalidArgument: connect.CodeInvalidArgument,
		server.CodeUnauthenticated: connect.CodeUnauthenticated,
		server.CodeNotFound:        connect.CodeNotFound,
		server.CodeConflict:        connect.CodeAborted,
		server.CodeTooLarge:        connect.CodeResourceExhausted,
		server.CodeNotLeader:       connect.CodeFailedPrecondition,
		server.CodeMoved:           connect.CodeFailedPrecondition,
		server.CodeFrozen:          connect.CodeUnavailable,
		server.CodeUnavailable:     connect.CodeUnavailable,
		server.CodeOutcomeUnknown:  connect.CodeDeadlineExceeded,
		server.CodeInternal:        connect.CodeInternal,
	} {
		err := connectError(&server.APIError{Code: code, Message: "m"})
		wantConnectErr(t, err, want, code)
	}
	err := connectError(fmt.Errorf("wrapped: %w", &server.APIError{Code: server.CodeNotLeader, Message: "m",
		Hint: map[string]any{"leader": uint64(2), "leader_api": "127.0.0.1:8402"}}))
	hint := wantConnectErr(t, err, connect.CodeFailedPrecondition, server.CodeNotLeader)
	if hint["leader"] != float64(2) || hint["leader_api"] != "127.0.0.1:8402" {
		t.Fatalf("hint %v", hint)
	}
	var cerr *connect.Error
	errors.As(err, &cerr)
	if d := cerr.Details(); len(d) != 1 {
		t.Fatalf("%d details", len(d))
	} else if v, _ := d[0].Value(); v.(*kvv1.ErrorDetail).GetRetryable() {
		t.Fatalf("not_leader retryable as is: %v", v)
	}
	if err := connectError(&server.APIError{Code: server.CodeFrozen}); !connectDetail(t, err).GetRetryable() {
		t.Fatal("frozen not retryable")
	}
	wantConnectErr(t, connectError(errors.New("boom")), connect.CodeInternal, server.CodeInternal)
	wantConnectErr(t, connectError(context.Canceled), connect.CodeCanceled, "")
}
