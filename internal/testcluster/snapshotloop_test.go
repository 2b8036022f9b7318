package testcluster

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// TestSnapshotUnderSustainedWritesNeedsOne stops a follower, truncates the
// log past it, slows snapshot streams down, and keeps writing while the
// follower catches up: the leader must keep the entries after the snapshot
// it is sending, so the follower resumes from the log after one snapshot
// instead of needing another and another while writes continue.
func TestSnapshotUnderSustainedWritesNeedsOne(t *testing.T) {
	c := New(t, Options{Nodes: 3, Groups: 1, LogMaxEntries: 200, LogKeepEntries: 50})
	ctx := testCtx(t, 60*time.Second)
	g := ids.GroupID(1)
	leader, err := c.WaitLeader(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	var down ids.NodeID
	for _, id := range c.NodeIDs() {
		if id != leader.ID() {
			down = id
			break
		}
	}
	if err := c.StopNode(down); err != nil {
		t.Fatal(err)
	}
	cl := c.NewClient(1)
	for i := range 300 {
		if _, err := cl.Put(ctx, []byte(fmt.Sprintf("fill-%d", i)), bytes.Repeat([]byte{'x'}, 1000), nil); err != nil {
			t.Fatal(err)
		}
	}
	// About 300 KB of state at 300 KB/s: the snapshot streams for a second,
	// during which a few hundred writes (more than LogKeepEntries) go
	// through.
	c.Net.SetSnapshotBandwidth(300 << 10)
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		wc := c.NewClient(2)
		for i := 0; wctx.Err() == nil; i++ {
			wc.Put(wctx, []byte(fmt.Sprintf("during-%d", i)), []byte("v"), nil)
			time.Sleep(3 * time.Millisecond)
		}
	}()
	if err := c.StartNode(down); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "the follower to install a snapshot", func() bool {
		n := c.Node(down)
		return n != nil && n.Stats().SnapshotsApplied.Load() > 0
	})
	time.Sleep(500 * time.Millisecond) // writes continue after the install
	stop()
	wg.Wait()
	c.Net.SetSnapshotBandwidth(0)
	if _, err := c.WaitConverged(ctx, g); err != nil {
		t.Fatal(err)
	}
	var sent, failed uint64
	for _, n := range c.Live() {
		sent += n.Stats().SnapshotsSent.Load()
		failed += n.Stats().SnapshotsFailed.Load()
	}
	fs := c.Node(down).Stats()
	t.Logf("snapshots: %d sent, %d failed; follower received %d, rejected %d, applied %d",
		sent, failed, fs.SnapshotsReceived.Load(), fs.SnapshotsRejected.Load(), fs.SnapshotsApplied.Load())
	if applied := c.Node(down).Stats().SnapshotsApplied.Load(); applied != 1 || sent != 1 {
		t.Fatalf("the follower needed %d snapshots (%d sent): the leader truncated the entries after the one it was sending", applied, sent)
	}
}
