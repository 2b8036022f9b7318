package raftstore

import (
	"testing"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// A replica's read cache gets an even share of the node's budget over the
// replicas the node holds (or is loading), never below the floor.
func TestReadCacheShare(t *testing.T) {
	h := &Host{cfg: Config{ReadCacheBytes: 32 << 20}, replicas: map[ids.GroupID]*replica{}}
	if got := h.readCacheShare(); got != 32<<20 {
		t.Fatalf("first replica: %d", got)
	}
	h.loading = 16
	if got := h.readCacheShare(); got != 2<<20 {
		t.Fatalf("one of 16 being loaded: %d", got)
	}
	for g := range 31 {
		h.replicas[ids.GroupID(g+1)] = nil
	}
	if got := h.readCacheShare(); got != 1<<20 {
		t.Fatalf("the 32nd replica: %d", got)
	}
	for g := range 2000 {
		h.replicas[ids.GroupID(g+100)] = nil
	}
	if got := h.readCacheShare(); got != minReadCacheShare {
		t.Fatalf("with 2,031 replicas: %d, want the floor %d", got, minReadCacheShare)
	}
}
