package raftstore

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/kv"
)

// TestProposalsCutOffAreOutcomeUnknown: a proposal already handed to Raft
// may be in the log and commit on the other replicas after this host stops
// or this replica is destroyed, so its waiter hears ErrOutcomeUnknown,
// never ErrStopped or ErrGroupNotFound: the server retries those as "not
// applied", and a retried write would apply twice.
func TestProposalsCutOffAreOutcomeUnknown(t *testing.T) {
	for _, cut := range []string{"stop", "destroy"} {
		t.Run(cut, func(t *testing.T) {
			// Elections only after 10 s: the leader keeps leading while
			// nothing commits.
			h, eng := openTestHost(t, t.TempDir(), 4<<20, Config{ElectionTicks: 1000})
			defer eng.Close()
			defer h.Stop()
			leadGroupAlone(t, h)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			// A second voter that never answers: nothing commits from here on.
			if err := h.ChangeReplicas(ctx, 1, []ReplicaChange{{Op: AddVoter, Replica: 2, Node: 2}}); err != nil {
				t.Fatal(err)
			}
			cmd, err := kv.EncodePut([]byte("k"), []byte("v"), nil, kv.DefaultLimits())
			if err != nil {
				t.Fatal(err)
			}
			started, err := h.StartPropose(1, Proposal{Payload: cmd}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := h.FinishPropose(started); !errors.Is(err, ErrProposalNotDone) {
				t.Fatalf("FinishPropose before Done: %v, want ErrProposalNotDone", err)
			}
			waiting := make(chan error, 1)
			go func() {
				_, err := h.Propose(ctx, 1, Proposal{Payload: cmd})
				waiting <- err
			}()
			// Both in Raft's hands before the cut.
			r := h.replica(1)
			for {
				r.mu.Lock()
				n := len(r.pending)
				r.mu.Unlock()
				if n == 2 {
					break
				}
				if ctx.Err() != nil {
					t.Fatalf("%d proposals pending, want 2", n)
				}
				time.Sleep(time.Millisecond)
			}
			if cut == "stop" {
				h.Stop()
			} else if err := h.DestroyReplica(1); err != nil {
				t.Fatal(err)
			}
			select {
			case <-started.Done():
			case <-ctx.Done():
				t.Fatal("a started proposal was never answered")
			}
			_, err = h.FinishPropose(started)
			if !errors.Is(err, ErrOutcomeUnknown) || errors.Is(err, ErrStopped) || errors.Is(err, ErrGroupNotFound) {
				t.Fatalf("started proposal cut off by %s: %v, want only ErrOutcomeUnknown", cut, err)
			}
			if err := <-waiting; !errors.Is(err, ErrOutcomeUnknown) || errors.Is(err, ErrStopped) || errors.Is(err, ErrGroupNotFound) {
				t.Fatalf("waiting proposal cut off by %s: %v, want only ErrOutcomeUnknown", cut, err)
			}
			// After the cut, nothing is proposed: safe to retry elsewhere.
			want := ErrStopped
			if cut == "destroy" {
				want = ErrGroupNotFound
			}
			if _, err := h.StartPropose(1, Proposal{Payload: cmd}, nil); !errors.Is(err, want) {
				t.Fatalf("proposal after the %s: %v, want %v", cut, err, want)
			}
		})
	}
}
