package storage

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// TestSnapshotSSTReplacesGroupAtomically ingests a snapshot table over a
// group that has a log and state, and checks that exactly the group's log,
// applied state and state were replaced, across a reopen.
func TestSnapshotSSTReplacesGroupAtomically(t *testing.T) {
	te := newTestEngine(t)
	g, other := ids.GroupID(3), ids.GroupID(4)
	for _, grp := range []ids.GroupID{g, other} {
		l, _, err := LoadRaftLog(te.Engine, grp)
		if err != nil {
			t.Fatal(err)
		}
		ents := []raftpb.Entry{{Index: 1, Term: 1}, {Index: 2, Term: 1}, {Index: 3, Term: 2}}
		commit(t, te.Engine, func(b *pebble.Batch) error {
			if err := l.WriteAppend(b, ents); err != nil {
				return err
			}
			if err := b.Set(append(GroupStatePrefix(grp), "old"...), []byte("1"), nil); err != nil {
				return err
			}
			return WriteAppliedState(b, grp, &AppliedState{Index: 3, Term: 2})
		})
	}
	path := filepath.Join(t.TempDir(), "snap.sst")
	st := &AppliedState{Index: 10, Term: 4, ConfState: raftpb.ConfState{Voters: []uint64{1, 2}}}
	sst, err := te.NewSnapshotSST(path, g, 10, 4, st)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "b", "c"} {
		if err := sst.Add([]byte(k), []byte("v"+k)); err != nil {
			t.Fatal(err)
		}
	}
	if err := sst.Finish(); err != nil {
		t.Fatal(err)
	}
	if err := te.Ingest(context.Background(), path); err != nil {
		t.Fatal(err)
	}
	te.reopen()

	l, applied, err := LoadRaftLog(te.Engine, g)
	if err != nil {
		t.Fatal(err)
	}
	if applied.Index != 10 || applied.Term != 4 || len(applied.ConfState.Voters) != 2 {
		t.Fatalf("applied state after install: %+v", applied)
	}
	if fi, _ := l.FirstIndex(); fi != 11 {
		t.Fatalf("first index after install = %d, want 11", fi)
	}
	if li, _ := l.LastIndex(); li != 10 {
		t.Fatalf("last index after install = %d, want 10", li)
	}
	get := func(grp ids.GroupID, k string) (string, bool) {
		v, ok, err := getCopy(te.DB(), append(GroupStatePrefix(grp), k...))
		if err != nil {
			t.Fatal(err)
		}
		return string(v), ok
	}
	if _, ok := get(g, "old"); ok {
		t.Fatal("the group's old state survived the snapshot")
	}
	for _, k := range []string{"a", "b", "c"} {
		if v, ok := get(g, k); !ok || v != "v"+k {
			t.Fatalf("snapshot key %s = %q %v", k, v, ok)
		}
	}
	// Another group is untouched.
	if v, ok := get(other, "old"); !ok || v != "1" {
		t.Fatal("another group's state was touched")
	}
	ol, oapplied, err := LoadRaftLog(te.Engine, other)
	if err != nil || oapplied.Index != 3 {
		t.Fatalf("other group's applied state: %+v %v", oapplied, err)
	}
	if li, _ := ol.LastIndex(); li != 3 {
		t.Fatalf("other group's log lost entries: last %d", li)
	}
}

func TestSnapshotSSTRefusesUnorderedKeys(t *testing.T) {
	te := newTestEngine(t)
	path := filepath.Join(t.TempDir(), "snap.sst")
	sst, err := te.NewSnapshotSST(path, 1, 5, 1, &AppliedState{Index: 5, Term: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer sst.Abort(te.Engine)
	if err := sst.Add([]byte("b"), nil); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "b"} {
		if err := sst.Add([]byte(k), nil); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Add(%q) after \"b\" = %v, want ErrCorrupt", k, err)
		}
	}
}
