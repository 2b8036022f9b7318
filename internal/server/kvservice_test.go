package server

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/kv"
)

// TestStartedWritesAnswerAsKVWrites: writes started on the leader
// (StartKVPut, StartKVDelete, answered by FinishKVWrite once done, as the
// API's /v1/multi exchanges do) give exactly the answers KVPut and KVDelete
// give, over real nodes: versions, exactly-once replays, conditions, the
// not_found of a DELETE of an absent key; and a node that does not lead the
// key's group declines to start, proposing nothing; and a write whose
// context has ended before it is sent is not proposed at all.
func TestStartedWritesAnswerAsKVWrites(t *testing.T) {
	c := newTestCluster(t, Settings{VShards: 16, Groups: 2, RF: 3})
	c.join()
	c.join()
	c.waitPlaced(3, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The node leading the key's group, and one that does not.
	key := []byte("started")
	_, g := c.nodes[0].Route(key)
	var leader, other *Server
	for deadline := time.Now().Add(10 * time.Second); leader == nil; time.Sleep(10 * time.Millisecond) {
		for _, s := range c.nodes {
			if s.node.IsLeader(g) {
				leader = s
			} else {
				other = s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no leader of group %d", g)
		}
	}

	finish := func(p PendingWrite, ok bool) (WriteResult, error) {
		t.Helper()
		if !ok {
			t.Fatalf("the leader declined to start a write")
		}
		select {
		case <-p.Done():
		case <-ctx.Done():
			t.Fatal("a started write never finished")
		}
		res, ok, err := leader.FinishKVWrite(p)
		if !ok {
			t.Fatalf("a started write failed where it started on a stable leader: %v", err)
		}
		return res, err
	}
	notified := make(chan struct{}, 16)
	notify := func() { notified <- struct{}{} }
	once := WriteOptions{Client: 42, Seq: 1}

	// A first write, then the same identity again: the first result.
	res, err := finish(leader.StartKVPut(key, []byte("v1"), once, notify))
	if err != nil || res.Version != 1 || res.PrevVersion != 0 {
		t.Fatalf("started put: %+v %v", res, err)
	}
	res, err = finish(leader.StartKVPut(key, []byte("v1"), once, notify))
	if err != nil || res.Version != 1 {
		t.Fatalf("started put replayed: %+v %v, want the first result (version 1)", res, err)
	}
	// A condition that holds, then one that does not.
	v1 := uint64(1)
	res, err = finish(leader.StartKVPut(key, []byte("v2"), WriteOptions{IfVersion: &v1}, notify))
	if err != nil || res.Version != 2 || res.PrevVersion != 1 {
		t.Fatalf("started put if version 1: %+v %v", res, err)
	}
	_, err = finish(leader.StartKVPut(key, []byte("v3"), WriteOptions{IfVersion: &v1}, notify))
	var ae *APIError
	if !errors.As(err, &ae) || ae.Code != CodeConflict || ae.Hint["current_version"] != uint64(2) {
		t.Fatalf("started put with a stale condition: %v, want conflict at version 2", err)
	}
	// Deletes: present, then absent.
	res, err = finish(leader.StartKVDelete(key, WriteOptions{}, notify))
	if err != nil || res.PrevVersion != 2 {
		t.Fatalf("started delete: %+v %v", res, err)
	}
	_, err = finish(leader.StartKVDelete(key, WriteOptions{}, notify))
	if !errors.As(err, &ae) || ae.Code != CodeNotFound {
		t.Fatalf("started delete of an absent key: %v, want not_found", err)
	}
	if len(notified) != 6 {
		t.Fatalf("notify called %d times for 6 started writes", len(notified))
	}
	// What KVPut says about the key now.
	got, err := other.KVGet(ctx, key, ReadOptions{})
	if err != nil || got.Found {
		t.Fatalf("the key after the started writes: %+v %v, want deleted", got, err)
	}

	// Not the leader, bad identities, bad epochs: declined, nothing proposed.
	if _, ok := other.StartKVPut(key, []byte("x"), WriteOptions{}, notify); ok {
		t.Fatal("a node that does not lead the key's group started a write")
	}
	if _, ok := leader.StartKVPut(key, []byte("x"), WriteOptions{Client: 1}, notify); ok {
		t.Fatal("a write with a client ID and no sequence was started")
	}
	if _, ok := leader.StartKVPut(key, []byte("x"), WriteOptions{Epoch: 99}, notify); ok {
		t.Fatal("a write routed with a future epoch was started")
	}
	if _, ok := leader.StartKVPut(key, make([]byte, kv.DefaultLimits().MaxValueSize+1), WriteOptions{}, notify); ok {
		t.Fatal("an oversized value was started")
	}
	time.Sleep(50 * time.Millisecond)
	if got, err := other.KVGet(ctx, key, ReadOptions{}); err != nil || got.Found {
		t.Fatalf("a declined write was stored: %+v %v", got, err)
	}

	// A write whose time is already up is not proposed: unavailable (safe
	// to retry), not outcome_unknown, and nothing is stored.
	done, stop := context.WithCancel(ctx)
	stop()
	for _, s := range []*Server{leader, other} {
		if _, err := s.KVPut(done, key, []byte("late"), WriteOptions{}); !errors.As(err, &ae) || ae.Code != CodeUnavailable {
			t.Fatalf("a write with its context ended, through node %d: %v, want unavailable", s.ID(), err)
		}
	}
	time.Sleep(50 * time.Millisecond)
	if got, err := other.KVGet(ctx, key, ReadOptions{}); err != nil || got.Found {
		t.Fatalf("a write whose context had ended was stored: %+v %v", got, err)
	}

	// The outcome of a write nobody waits for is unknown, as KVPut's is.
	if err := leader.AbandonKVWrite(context.DeadlineExceeded); !errors.As(err, &ae) || ae.Code != CodeOutcomeUnknown {
		t.Fatalf("abandoned write: %v, want outcome_unknown", err)
	}
}
