package storage

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

func TestLocalReplicas(t *testing.T) {
	e := newTestEngine(t)
	if got, err := e.LocalReplicas(); err != nil || len(got) != 0 {
		t.Fatalf("LocalReplicas of an empty engine = %v, %v", got, err)
	}
	commit(t, e.Engine, func(b *pebble.Batch) error {
		for _, r := range []LocalReplica{{7, 70}, {1, 10}, {256, 3}, {0, 1}, {1<<64 - 1, 5}} {
			if err := WriteReplicaRecord(b, r.Group, r.Replica); err != nil {
				return err
			}
		}
		return nil
	})
	// A later record for a group replaces the earlier one.
	commit(t, e.Engine, func(b *pebble.Batch) error { return WriteReplicaRecord(b, 7, 71) })
	// Records of other kinds are not replicas.
	commit(t, e.Engine, func(b *pebble.Batch) error {
		return errors.Join(
			b.Set(tombstoneKey(9), make([]byte, 8), nil),
			WriteAppliedState(b, 9, &AppliedState{}),
			b.Set(NodeKey("id"), []byte("x"), nil),
		)
	})
	want := []LocalReplica{{0, 1}, {1, 10}, {7, 71}, {256, 3}, {1<<64 - 1, 5}}
	e.reopen()
	got, err := e.LocalReplicas()
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("LocalReplicas = %v, %v; want %v", got, err, want)
	}

	// A malformed record is reported, not skipped.
	if err := e.DB().Set(replicaKey(3), []byte{1, 2, 3}, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if got, err := e.LocalReplicas(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("LocalReplicas with a 3-byte record = %v, %v; want ErrCorrupt", got, err)
	}
}

func TestTombstone(t *testing.T) {
	e := newTestEngine(t)
	if r, err := e.Tombstone(4); err != nil || r != 0 {
		t.Fatalf("Tombstone of a group never destroyed = %d, %v; want 0", r, err)
	}
	if err := e.DB().Set(tombstoneKey(4), []byte{1}, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if r, err := e.Tombstone(4); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Tombstone of a 1-byte record = %d, %v; want ErrCorrupt", r, err)
	}
}

// populateGroup writes everything a replica of g stores: a bootstrapped
// log with entries, a hard state, vShard data in every sub-area and the
// replica record.
func populateGroup(t *testing.T, e *Engine, g ids.GroupID, r ids.ReplicaID) {
	t.Helper()
	st := AppliedState{Index: 5, Term: 1, ConfState: raftpb.ConfState{Voters: []uint64{uint64(r)}},
		Replicas: []ReplicaDesc{{Replica: r, Node: 1}}, MaxReplicaID: r}
	commit(t, e, func(b *pebble.Batch) error { return WriteBootstrap(b, g, r, &st) })
	l, _ := loadLog(t, e, g)
	appendEnts(t, e, l, mkEnts(6, 9, 2))
	commit(t, e, func(b *pebble.Batch) error {
		if err := l.WriteHardState(b, raftpb.HardState{Term: 2, Vote: uint64(r), Commit: 8}); err != nil {
			return err
		}
		for _, vs := range []uint32{0, 1, 1023, 1<<32 - 1} {
			for _, sub := range []byte{SubUser, SubDedup, SubWatermark} {
				k := append(VShardSubPrefix(g, vs, sub), "key"...)
				if err := b.Set(k, []byte(g.String()), nil); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

func TestWriteReplicaDestroy(t *testing.T) {
	e := newTestEngine(t)
	groups := []ids.GroupID{0, 1, 2, 0x100, 1<<64 - 1}
	for i, g := range groups {
		populateGroup(t, e.Engine, g, ids.ReplicaID(i+1))
	}
	if err := e.DB().Set(NodeKey("identity"), []byte("n1"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	for _, g := range []ids.GroupID{1, 1<<64 - 1} {
		before := dump(t, e.Engine)
		commit(t, e.Engine, func(b *pebble.Batch) error { return WriteReplicaDestroy(b, g, 42) })
		e.reopen()

		// Exactly g's keys are gone, and its tombstone is new.
		after := dump(t, e.Engine)
		want := map[string]string{}
		for k, v := range before {
			if !ownedBy(k, g) {
				want[k] = v
			}
		}
		want[string(tombstoneKey(g))] = string([]byte{0, 0, 0, 0, 0, 0, 0, 42})
		if !reflect.DeepEqual(after, want) {
			for k := range after {
				if _, ok := want[k]; !ok {
					t.Errorf("key %x survived the destruction of %s", k, g)
				}
			}
			for k := range want {
				if _, ok := after[k]; !ok {
					t.Errorf("key %x was removed with %s", k, g)
				}
			}
			t.Fatalf("destroying %s removed the wrong keys", g)
		}
		if r, err := e.Tombstone(g); err != nil || r != 42 {
			t.Fatalf("Tombstone(%s) = %d, %v; want 42", g, r, err)
		}
		// The destroyed group loads as a new, empty replica.
		l, st := loadLog(t, e.Engine, g)
		checkLog(t, l, 0, 0, nil, false)
		if hs := l.HardState(); !raft.IsEmptyHardState(hs) || st.Index != 0 || len(st.ConfState.Voters) != 0 {
			t.Fatalf("destroyed group loads with hard state %+v, applied %+v", hs, st)
		}
	}
	// The others are intact.
	for _, g := range []ids.GroupID{0, 2, 0x100} {
		l, st := loadLog(t, e.Engine, g)
		checkLog(t, l, 5, 1, mkEnts(6, 9, 2), true)
		if st.Index != 5 || l.HardState().Commit != 8 {
			t.Fatalf("group %s after other groups were destroyed: applied %d, commit %d", g, st.Index, l.HardState().Commit)
		}
		if r, err := e.Tombstone(g); err != nil || r != 0 {
			t.Fatalf("Tombstone(%s) = %d, %v; want none", g, r, err)
		}
	}
	reps, err := e.LocalReplicas()
	if want := []LocalReplica{{0, 1}, {2, 3}, {0x100, 4}}; err != nil || !reflect.DeepEqual(reps, want) {
		t.Fatalf("LocalReplicas after destroying = %v, %v; want %v", reps, err, want)
	}
}

// ownedBy reports whether raw key k is a record of group g that destroying
// g's replica must remove.
func ownedBy(k string, g ids.GroupID) bool {
	start, end := raftRange(g)
	inRaft := k >= string(start) && (end == nil || k < string(end))
	return inRaft || strings.HasPrefix(k, string(GroupStatePrefix(g))) ||
		k == string(appliedKey(g)) || k == string(replicaKey(g))
}

func TestWriteBootstrap(t *testing.T) {
	e := newTestEngine(t)
	const g = ids.GroupID(12)
	st := AppliedState{
		Index:        10,
		Term:         3,
		ConfState:    raftpb.ConfState{Voters: []uint64{1, 2, 3}},
		Replicas:     []ReplicaDesc{{Replica: 1, Node: 100}, {Replica: 2, Node: 200}, {Replica: 3, Node: 300}},
		MaxReplicaID: 3,
	}
	commit(t, e.Engine, func(b *pebble.Batch) error { return WriteBootstrap(b, g, 2, &st) })
	e.reopen()

	l, gotSt := loadLog(t, e.Engine, g)
	if !reflect.DeepEqual(gotSt, st) {
		t.Fatalf("applied state = %+v, want %+v", gotSt, st)
	}
	checkLog(t, l, 10, 3, nil, true)
	hs, cs, err := l.InitialState()
	if want := (raftpb.HardState{Term: 3, Commit: 10}); err != nil || hs != want || !reflect.DeepEqual(cs, st.ConfState) {
		t.Fatalf("InitialState = %+v, %+v, %v; want %+v, %+v", hs, cs, err, want, st.ConfState)
	}
	reps, err := e.LocalReplicas()
	if want := []LocalReplica{{g, 2}}; err != nil || !reflect.DeepEqual(reps, want) {
		t.Fatalf("LocalReplicas = %v, %v; want %v", reps, err, want)
	}
	// The log continues after the bootstrap index.
	appendEnts(t, e.Engine, l, mkEnts(11, 13, 3))
	e.reopen()
	l, _ = loadLog(t, e.Engine, g)
	checkLog(t, l, 10, 3, mkEnts(11, 13, 3), true)
}

func TestWriteClearGroupState(t *testing.T) {
	e := newTestEngine(t)
	populateGroup(t, e.Engine, 1, 1)
	populateGroup(t, e.Engine, 2, 1)
	before := dump(t, e.Engine)
	commit(t, e.Engine, func(b *pebble.Batch) error { return WriteClearGroupState(b, 1) })
	after := dump(t, e.Engine)
	for k, v := range before {
		inState := strings.HasPrefix(k, string(GroupStatePrefix(1)))
		if got, ok := after[k]; ok == inState || (ok && got != v) {
			t.Fatalf("key %x (group 1 state: %v) present %v after clearing group 1's state", k, inState, ok)
		}
	}
	if len(after) >= len(before) {
		t.Fatalf("clearing group 1's state removed nothing")
	}
}
