package raftstore

import (
	"testing"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// A replica's caches get an even share of the node's budgets over the
// replicas the node holds (or is loading), never below the floor nor, for
// the value cache, above its cap.
func TestCacheShare(t *testing.T) {
	h := &Host{cfg: Config{ReadCacheBytes: 32 << 20}, replicas: map[ids.GroupID]*replica{}}
	if got := h.cacheShare(32<<20, 32<<20); got != 32<<20 {
		t.Fatalf("first replica: %d", got)
	}
	h.loading = 16
	if got := h.cacheShare(32<<20, 32<<20); got != 2<<20 {
		t.Fatalf("one of 16 being loaded: %d", got)
	}
	for g := range 31 {
		h.replicas[ids.GroupID(g+1)] = nil
	}
	if got := h.cacheShare(32<<20, 32<<20); got != 1<<20 {
		t.Fatalf("the 32nd replica: %d", got)
	}
	for g := range 2000 {
		h.replicas[ids.GroupID(g+100)] = nil
	}
	if got := h.cacheShare(32<<20, 32<<20); got != minCacheShare {
		t.Fatalf("with 2,031 replicas: %d, want the floor %d", got, minCacheShare)
	}
	h.replicas, h.loading = map[ids.GroupID]*replica{}, 16
	if got := h.cacheShare(valueCacheBudget, valueCacheMost); got != valueCacheMost {
		t.Fatalf("value cache, one of 16: %d, want the cap %d", got, valueCacheMost)
	}
	h.loading = 256
	if got := h.cacheShare(valueCacheBudget, valueCacheMost); got != minCacheShare {
		t.Fatalf("value cache, one of 256: %d, want %d", got, minCacheShare)
	}
}
