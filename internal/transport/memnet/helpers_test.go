package memnet

import (
	"context"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/testwatch"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

func TestMain(m *testing.M) {
	testwatch.Main(m)
}

// recorder is a Handler that keeps everything it receives.
type recorder struct {
	mu      sync.Mutex
	batches [][]transport.Message
	froms   []ids.NodeID
	msgs    []transport.Message
	at      []time.Time // receipt time of each message

	// closed is set by a test once it has closed the endpoint; any call
	// after that is counted in late.
	closed atomic.Bool
	late   atomic.Int64

	// snap, if set, handles snapshots; otherwise they are read fully and
	// accepted.
	snap func(ctx context.Context, from ids.NodeID, r io.Reader) error
}

func (r *recorder) HandleRaft(from ids.NodeID, msgs []transport.Message) {
	if r.closed.Load() {
		r.late.Add(1)
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.batches = append(r.batches, msgs)
	r.froms = append(r.froms, from)
	for _, m := range msgs {
		r.msgs = append(r.msgs, m)
		r.at = append(r.at, now)
	}
}

func (r *recorder) HandleSnapshot(ctx context.Context, from ids.NodeID, s io.Reader) error {
	if r.closed.Load() {
		r.late.Add(1)
	}
	if r.snap != nil {
		return r.snap(ctx, from, s)
	}
	_, err := io.Copy(io.Discard, s)
	return err
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}

func (r *recorder) messages() []transport.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]transport.Message(nil), r.msgs...)
}

// hb returns a heartbeat whose Commit field carries a sequence number.
func hb(seq uint64, g ids.GroupID) transport.Message {
	return transport.Message{Group: g, Msg: raftpb.Message{
		Type: raftpb.MsgHeartbeat, From: 1, To: 2, Term: 3, Commit: seq,
	}}
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitIdle waits until every batch sent so far has been delivered or
// dropped.
func waitIdle(t testing.TB, n *Network) {
	t.Helper()
	waitFor(t, 10*time.Second, "network idle", func() bool { return n.Stats().Conserved() })
}

// send is Send that fails the test on error.
func send(t testing.TB, e *Endpoint, to ids.NodeID, msgs ...transport.Message) {
	t.Helper()
	if err := e.Send(to, msgs); err != nil {
		t.Fatalf("Send from %s to %s: %v", e.Node(), to, err)
	}
}

// inversions counts pairs of adjacent messages whose sequence numbers go
// down.
func inversions(msgs []transport.Message) int {
	inv := 0
	for i := 1; i < len(msgs); i++ {
		if msgs[i].Msg.Commit < msgs[i-1].Msg.Commit {
			inv++
		}
	}
	return inv
}
