package raftstore

import (
	"os"
	"path/filepath"
	"testing"
)

// TestStagedSnapshotsCrossing checks that the install gets the data of the
// index Raft accepted whatever order the snapshots arrived in (an older
// one finishing after a newer one used to replace it, and the install then
// stopped the node), and that every file not installed is removed.
func TestStagedSnapshotsCrossing(t *testing.T) {
	dir := t.TempDir()
	staged := func(index uint64) *stagedSnapshot {
		p := filepath.Join(dir, "s"+string(rune('a'+index)))
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		return &stagedSnapshot{index: index, path: p}
	}
	exists := func(s *stagedSnapshot) bool { _, err := os.Stat(s.path); return err == nil }

	var ss stagedSnapshots
	s10, s8, s12 := staged(10), staged(8), staged(12)
	ss.add(s10) // accepted by Raft
	ss.add(s8)  // an older retry finishing later: refused by Raft
	ss.add(s12) // a newer one, not yet stepped
	if got := ss.take(10); got != s10 {
		t.Fatalf("take(10) = %+v, want the snapshot staged at 10", got)
	}
	if exists(s8) || !exists(s10) || !exists(s12) || len(ss) != 1 || ss[0] != s12 {
		t.Fatalf("after take(10): 8 kept %v, 10 kept %v, 12 kept %v, staged %d; want only 8 removed and 12 left staged",
			exists(s8), exists(s10), exists(s12), len(ss))
	}

	again := staged(12)
	ss.add(again) // the same index again replaces, removing the first file
	if exists(s12) || len(ss) != 1 || ss[0] != again {
		t.Fatal("a second snapshot at the same index did not replace the first")
	}
	ss.prune(12) // applied reached 12 some other way
	if exists(again) || len(ss) != 0 {
		t.Fatal("prune left a snapshot at the applied index")
	}

	s20, s30 := staged(20), staged(30)
	ss.add(s20)
	ss.add(s30)
	ss.discardAll()
	if exists(s20) || exists(s30) || len(ss) != 0 {
		t.Fatal("discardAll left files or entries")
	}
	if got := ss.take(40); got != nil {
		t.Fatalf("take on an empty set = %+v", got)
	}
}
