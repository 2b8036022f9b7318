package raftstore

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/kv"
	"github.com/nodedb/nodedb-cluster/internal/storage"
)

// A replica's caches get an even share of the node's budgets over the
// replicas the node holds, never below the floor nor, for the value cache,
// above its cap.
func TestCacheShare(t *testing.T) {
	for _, c := range []struct {
		budget, most, replicas, want int
	}{
		{32 << 20, 32 << 20, 0, 32 << 20}, // no replica yet
		{32 << 20, 32 << 20, 1, 32 << 20},
		{32 << 20, 32 << 20, 16, 2 << 20},
		{32 << 20, 32 << 20, 32, 1 << 20},
		{32 << 20, 32 << 20, 2031, minCacheShare},
		{valueCacheBudget, valueCacheMost, 16, valueCacheMost},
		{valueCacheBudget, valueCacheMost, 256, minCacheShare},
	} {
		if got := shareOf(c.budget, c.most, c.replicas); got != c.want {
			t.Errorf("budget %d (at most %d) over %d replicas: %d, want %d", c.budget, c.most, c.replicas, got, c.want)
		}
	}
}

// The shares follow the number of replicas a running node holds: creating
// replicas shrinks the caches of those already there (a cache filled before
// drops what no longer fits), destroying them grows the rest back, and a
// restarted node shares over what it loaded. Together the caches stay
// within the node's budgets.
func TestCacheSharesFollowReplicas(t *testing.T) {
	dir := t.TempDir()
	const readBudget = 4 << 20
	open := func() (*Host, *storage.Engine) {
		return openTestHost(t, dir, 4<<20, Config{ReadCacheBytes: readBudget})
	}
	h, eng := open()
	leadGroupAlone(t, h)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	value := make([]byte, 1000)
	write := func(i int) {
		t.Helper()
		key := []byte(fmt.Sprintf("key%05d", i))
		cmd, err := kv.EncodePut(key, value, nil, kv.DefaultLimits())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.Propose(ctx, 1, Proposal{Payload: cmd}); err != nil {
			t.Fatalf("put %s: %v", key, err)
		}
		q, err := kv.EncodeGet(key, kv.DefaultLimits())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.Read(ctx, 1, 0, q); err != nil {
			t.Fatalf("get %s: %v", key, err)
		}
	}
	// Alone, group 1 has the whole read budget and the value cache's cap;
	// fill both well past what a 64th share holds.
	for i := range 600 {
		write(i)
	}
	r1 := h.replica(1)
	if got := r1.readCache.MaxBytes(); got != readBudget {
		t.Fatalf("one replica: read cache bound %d, want the budget %d", got, readBudget)
	}
	if got := r1.valueCacheBytes.Load(); got != valueCacheMost {
		t.Fatalf("one replica: value cache bound %d, want the cap %d", got, valueCacheMost)
	}
	if n := r1.readCache.Len(); n < 500 {
		t.Fatalf("read cache holds %d keys after 600 reads", n)
	}

	// 63 more replicas: every share is a 64th, and the full caches shrink.
	for g := 2; g <= 64; g++ {
		if err := h.CreateReplica(ids.GroupID(g), 1); err != nil {
			t.Fatal(err)
		}
	}
	check := func(replicas int) {
		t.Helper()
		wantRead := shareOf(readBudget, readBudget, replicas)
		wantValue := shareOf(valueCacheBudget, valueCacheMost, replicas)
		h.mu.Lock()
		defer h.mu.Unlock()
		if len(h.replicas) != replicas {
			t.Fatalf("%d replicas, want %d", len(h.replicas), replicas)
		}
		readTotal, valueTotal := 0, 0
		for g, r := range h.replicas {
			if got := r.readCache.MaxBytes(); got != wantRead {
				t.Fatalf("%d replicas: group %s's read cache bound %d, want %d", replicas, g, got, wantRead)
			}
			if got := int(r.valueCacheBytes.Load()); got != wantValue {
				t.Fatalf("%d replicas: group %s's value cache share %d, want %d", replicas, g, got, wantValue)
			}
			readTotal += r.readCache.MaxBytes()
			valueTotal += wantValue
		}
		if readTotal > readBudget || valueTotal > valueCacheBudget {
			t.Fatalf("%d replicas: caches bounded by %d and %d bytes in all, over the budgets %d and %d", replicas, readTotal, valueTotal, readBudget, valueCacheBudget)
		}
	}
	check(64)
	if n, most := r1.readCache.Len(), readBudget/64/(len("key00000")+len(value)); n > most {
		t.Fatalf("group 1's read cache kept %d keys, more than its new bound holds (%d)", n, most)
	}
	// The value cache is resized by the next apply, and still serves it.
	for i := 600; i < 700; i++ {
		write(i)
	}
	if got := r1.values.MaxBytes(); got != shareOf(valueCacheBudget, valueCacheMost, 64) {
		t.Fatalf("group 1's value cache bound %d after an apply, want %d", got, shareOf(valueCacheBudget, valueCacheMost, 64))
	}
	if n, most := r1.values.Len(), r1.values.MaxBytes()/(len("key00000")+len(value)); n > most {
		t.Fatalf("group 1's value cache holds %d keys, more than its bound holds (%d)", n, most)
	}

	// Destroying replicas gives the rest a larger share.
	for g := 3; g <= 64; g++ {
		if err := h.DestroyReplica(ids.GroupID(g)); err != nil {
			t.Fatal(err)
		}
	}
	check(2)

	// A restarted node shares over the replicas it loaded.
	h.Stop()
	if err := eng.Close(); err != nil {
		t.Fatal(err)
	}
	h, eng = open()
	defer func() { h.Stop(); _ = eng.Close() }()
	check(2)
	if err := h.CreateReplica(65, 1); err != nil {
		t.Fatal(err)
	}
	check(3)
}
