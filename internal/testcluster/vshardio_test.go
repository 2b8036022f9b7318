package testcluster

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/cluster"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/kv"
	"github.com/nodedb/nodedb-cluster/internal/raftstore"
)

// TestVShardExportImport snapshots one vShard of group 1 and restores it
// into group 2: every replica of group 2 must end with exactly the vShard's
// state (data and exactly-once records), readable through group 2.
func TestVShardExportImport(t *testing.T) {
	c := New(t, Options{Nodes: 3, Groups: 2, VShards: 16})
	ctx := testCtx(t, 60*time.Second)
	if err := c.WaitAllLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	// Keys sharing a hash tag share a vShard.
	var keys [][]byte
	for i := range 300 {
		keys = append(keys, []byte(fmt.Sprintf("{tag}/%d", i)))
	}
	vs, src := c.Route(keys[0])
	var dst ids.GroupID = 1
	if src == 1 {
		dst = 2
	}
	cl := c.NewClient(5)
	for i, k := range keys {
		if _, err := cl.Put(ctx, k, bytes.Repeat([]byte{byte(i)}, 2000), nil); err != nil {
			t.Fatal(err)
		}
	}
	// A key of another vShard must not travel.
	var other []byte
	for i := 0; ; i++ {
		other = []byte(fmt.Sprintf("other-%d", i))
		if ovs, og := c.Route(other); og == src && ovs != vs {
			break
		}
	}
	if _, err := cl.Put(ctx, other, []byte("stay"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitConverged(ctx, src); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := c.Leader(src).ExportVShard(src, vs, &buf); err != nil {
		t.Fatal(err)
	}
	export := buf.Bytes()
	_, srcHash, err := c.Leader(src).VShardHash(src, vs)
	if err != nil {
		t.Fatal(err)
	}

	// A corrupt export is refused before anything is proposed.
	bad := append([]byte(nil), export...)
	bad[len(bad)/2] ^= 0xff
	dl, err := c.WaitLeader(ctx, dst)
	if err != nil {
		t.Fatal(err)
	}
	if err := dl.ImportVShard(ctx, dst, vs, bytes.NewReader(bad)); !errors.Is(err, raftstore.ErrBadSnapshot) {
		t.Fatalf("corrupt import: %v, want ErrBadSnapshot", err)
	}
	_, empty, _ := dl.VShardHash(dst, vs)
	// Reads at the destination before the import find nothing, and each
	// node's read cache remembers that; the import must drop it.
	q7, _ := kv.EncodeGet(keys[7], kv.DefaultLimits())
	for _, n := range c.Live() {
		for range 2 {
			res, err := n.ReadLocal(dst, vs, q7)
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := kv.DecodeGetResponse(res); got.Found {
				t.Fatalf("%s: key found at the destination before the import", n.ID())
			}
		}
	}

	if err := dl.ImportVShard(ctx, dst, vs, bytes.NewReader(export)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitConverged(ctx, dst); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Live() {
		_, h, err := n.VShardHash(dst, vs)
		if err != nil {
			t.Fatal(err)
		}
		if h != srcHash {
			t.Fatalf("%s: imported vShard differs from the source", n.ID())
		}
		if h == empty {
			t.Fatal("import changed nothing")
		}
		res, err := n.ReadLocal(dst, vs, q7)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := kv.DecodeGetResponse(res); !got.Found || !bytes.Equal(got.Value, bytes.Repeat([]byte{7}, 2000)) {
			t.Fatalf("%s: read after the import: %+v", n.ID(), got)
		}
	}
	// The data is served by the destination group.
	q, _ := kv.EncodeGet(keys[7], kv.DefaultLimits())
	res, err := c.Leader(dst).Read(ctx, dst, vs, q)
	if err != nil {
		t.Fatal(err)
	}
	got, err := kv.DecodeGetResponse(res)
	if err != nil || !got.Found || !bytes.Equal(got.Value, bytes.Repeat([]byte{7}, 2000)) {
		t.Fatalf("read through the destination: %+v %v", got, err)
	}
	q, _ = kv.EncodeGet(other, kv.DefaultLimits())
	ovs, _ := c.Route(other)
	res, err = c.Leader(dst).Read(ctx, dst, ovs, q)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := kv.DecodeGetResponse(res); got.Found {
		t.Fatal("a key of another vShard travelled with the export")
	}
	// Exactly-once records travelled too: client 5 wrote keys[i] with
	// sequence i+1, so a retry of sequence 300 (keys[299]) after the move is
	// answered from its record and not applied again.
	cmd, _ := kv.EncodePut(keys[299], []byte("again"), nil, kv.DefaultLimits())
	out, err := c.Leader(dst).Propose(ctx, dst, cluster.Proposal{VShard: vs, Client: 5, Seq: 300, AckedBelow: 300, Payload: cmd})
	if err != nil {
		t.Fatal(err)
	}
	r, err := kv.DecodeResult(out)
	if err != nil || r.Ops[0].Version != 1 {
		t.Fatalf("retried write after the move: %+v %v (want the recorded result, version 1)", r, err)
	}
	q, _ = kv.EncodeGet(keys[299], kv.DefaultLimits())
	res, err = c.Leader(dst).Read(ctx, dst, vs, q)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := kv.DecodeGetResponse(res); got.Version != 1 || bytes.Equal(got.Value, []byte("again")) {
		t.Fatalf("the retried write was applied again: %+v", got)
	}
}
