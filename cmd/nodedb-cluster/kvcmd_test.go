package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/nodedb/nodedb-cluster/internal/devcluster"
)

// TestKVAndListCommands runs the client commands as a user does, against a
// dev cluster's APIs.
func TestKVAndListCommands(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := devcluster.Start(ctx, t.TempDir(), devcluster.Shape{Nodes: 3, Groups: 4, VShards: 64, RF: 3}, 0, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	eps := strings.Join(c.APIs, ",")
	run := func(wantErr bool, cmd *cobra.Command, args ...string) string {
		t.Helper()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(append(args, "--endpoints", eps))
		err := cmd.ExecuteContext(ctx)
		if (err != nil) != wantErr {
			t.Fatalf("%v: err %v, output %s", args, err, out.String())
		}
		if err != nil {
			return err.Error()
		}
		return out.String()
	}
	if out := run(false, newKVCommand(), "put", "greeting", "hello"); !strings.Contains(out, "version 1") {
		t.Fatalf("put: %s", out)
	}
	if out := run(false, newKVCommand(), "get", "greeting"); out != "hello\n" {
		t.Fatalf("get: %q", out)
	}
	if out := run(true, newKVCommand(), "put", "greeting", "x", "--if-version", "5"); !strings.Contains(out, "conflict") {
		t.Fatalf("CAS: %s", out)
	}
	run(false, newKVCommand(), "put", "{t}one", "1")
	run(false, newKVCommand(), "put", "{t}two", "2")
	if out := run(false, newKVCommand(), "scan", "{t}"); !strings.Contains(out, "{t}one") || !strings.Contains(out, "{t}two") || !strings.Contains(out, "2 keys") {
		t.Fatalf("scan: %s", out)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(run(false, newKVCommand(), "get", "greeting", "--json", "--consistency", "stale")), &got); err != nil || got["value"] != "hello" || got["version"] != float64(1) {
		t.Fatalf("get --json: %v %v", got, err)
	}
	// A binary value from standard input comes back byte for byte with
	// --raw, and as value_base64 with --json.
	blob := []byte{0, 1, 0xff, 0xfe, '\n', 'x'}
	stdin := func(r io.Reader) *cobra.Command {
		c := newKVCommand()
		c.SetIn(r)
		return c
	}
	run(false, stdin(bytes.NewReader(blob)), "put", "blob")
	if out := run(false, newKVCommand(), "get", "blob", "--raw"); out != string(blob) {
		t.Fatalf("get --raw: %q, want %q", out, blob)
	}
	var item struct {
		Value       *string `json:"value"`
		ValueBase64 []byte  `json:"value_base64"`
	}
	if err := json.Unmarshal([]byte(run(false, newKVCommand(), "get", "blob", "--json")), &item); err != nil || item.Value != nil || !bytes.Equal(item.ValueBase64, blob) {
		t.Fatalf("get --json of a binary value: %+v %v", item, err)
	}
	run(false, stdin(strings.NewReader("")), "put", "empty")
	if out := run(false, newKVCommand(), "get", "empty", "--raw"); out != "" {
		t.Fatalf("empty value from stdin: %q", out)
	}
	if out := run(true, stdin(io.LimitReader(zeros{}, maxStdinValue+1)), "put", "huge"); !strings.Contains(out, "over 64 MiB") {
		t.Fatalf("value over the stdin bound: %s", out)
	}
	if out := run(true, stdin(io.LimitReader(zeros{}, 2<<20)), "put", "big"); !strings.Contains(out, "too_large") {
		t.Fatalf("value over the node's limit: %s", out)
	}
	if out := run(false, newKVCommand(), "del", "greeting"); !strings.Contains(out, "deleted") {
		t.Fatalf("del: %s", out)
	}
	if out := run(true, newKVCommand(), "get", "greeting"); !strings.Contains(out, "not_found") {
		t.Fatalf("get after del: %s", out)
	}
	if out := run(false, newNodesCommand()); strings.Count(out, "active") != 3 {
		t.Fatalf("nodes: %s", out)
	}
	if out := run(false, newGroupsCommand()); !strings.Contains(out, "0 (meta)") {
		t.Fatalf("groups: %s", out)
	}
	var vs []map[string]any
	if err := json.Unmarshal([]byte(run(false, newVShardsCommand(), "--json")), &vs); err != nil || len(vs) != 64 {
		t.Fatalf("vshards --json: %d entries, %v", len(vs), err)
	}
	if out := run(false, newStatusCommand()); !strings.Contains(out, "64 vShards, RF 3") {
		t.Fatalf("status: %s", out)
	}
	for _, w := range []string{"put", "mixed"} {
		var rep benchReport
		out := run(false, newBenchCommand(), "--workload", w, "--clients", "4", "--duration", "500ms", "--warmup", "0s", "--keys", "20", "--value-size", "64", "--json")
		if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Ops == 0 || rep.Errors != 0 || rep.OpsPerSec <= 0 || rep.P99ms < rep.P50ms {
			t.Fatalf("bench %s: %+v (%v) from %s", w, rep, err, out)
		}
	}
}

// zeros is an endless reader of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
