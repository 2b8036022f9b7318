package migrate

import (
	"errors"
	"testing"

	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

// metaCluster is a metadata state with nodes 1, 2, 3 voters of groups 1
// and 2 (node 1 leads), node 4 ACTIVE without replicas, node 5 DRAINING.
func metaCluster(t *testing.T) *metapb.State {
	t.Helper()
	now := tStart.UnixNano()
	apply := func(st *metapb.State, e *metapb.Entry) (*metapb.State, *metapb.Result) {
		t.Helper()
		next, res, _, err := meta.Apply(st, e, now)
		if err != nil {
			t.Fatalf("apply %v: %v", e, err)
		}
		return next, res
	}
	st, _ := apply(nil, meta.NewBootstrap(&metapb.ClusterSettings{ClusterId: "c", VshardCount: 16, ReplicationFactor: 3},
		&metapb.Node{PeerAddr: "n1:1"}, 2))
	for i := 2; i <= 5; i++ {
		name := string(rune('0' + i))
		st, _ = apply(st, meta.NewCreateToken("t"+name, meta.HashSecret("s"+name), now+1e12))
		var res *metapb.Result
		st, res = apply(st, meta.NewBeginJoin("t"+name, meta.HashSecret("s"+name), meta.HashKey([]byte(name)), "n"+name+":1", "", ""))
		st, _ = apply(st, meta.NewActivateNode(res.GetNodeId()))
	}
	st, _ = apply(st, meta.NewSetNodeState(5, metapb.NodeState_NODE_STATE_DRAINING))
	for _, g := range []uint64{1, 2} {
		for _, n := range []uint64{2, 3} {
			var res *metapb.Result
			st, res = apply(st, meta.NewAddReplica(g, n, metapb.Role_ROLE_LEARNER))
			st, _ = apply(st, meta.NewPromoteReplica(g, res.GetReplicaId()))
		}
		st, _ = apply(st, meta.NewSetLeaderHint(g, 1))
	}
	return st
}

func TestNewReplicaMove(t *testing.T) {
	st := metaCluster(t)
	m, err := NewReplicaMove(st, 1, 1, 4, tStart)
	if err != nil {
		t.Fatal(err)
	}
	want := ReplicaMove{Version: 1, Group: 1, From: 1, To: 4, Outgoing: 1, LeaderAtStart: 1, StartedUnixNanos: tStart.UnixNano()}
	if m != want {
		t.Fatalf("move %+v, want %+v", m, want)
	}
	// A learner being added by placement makes the group busy.
	busy, _, _, err := meta.Apply(st, meta.NewAddReplica(2, 4, metapb.Role_ROLE_LEARNER), 1)
	if err != nil {
		t.Fatal(err)
	}
	heldByOther, _, _, err := meta.Apply(st, meta.NewPutCheckpoint(meta.NewFencingCheckpoint("vs", metapb.MigrationKind_MIGRATION_KIND_VSHARD_MOVE, "copy", 1, nil, 1)), 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name            string
		st              *metapb.State
		group, from, to uint64
		code            metapb.Code
		conflict        bool
	}{
		{"metadata group", st, 0, 1, 4, metapb.Code_CODE_INVALID_ARGUMENT, false},
		{"unknown group", st, 9, 1, 4, metapb.Code_CODE_UNKNOWN_GROUP, false},
		{"to itself", st, 1, 1, 1, metapb.Code_CODE_INVALID_ARGUMENT, false},
		{"from holds no voter", st, 1, 4, 5, metapb.Code_CODE_UNKNOWN_REPLICA, false},
		{"unknown target", st, 1, 1, 9, metapb.Code_CODE_UNKNOWN_NODE, false},
		{"draining target", st, 1, 1, 5, metapb.Code_CODE_NODE_NOT_ACTIVE, false},
		{"target holds a replica", st, 1, 1, 2, metapb.Code_CODE_REPLICA_EXISTS, false},
		{"learner in flight", busy, 2, 1, 5, 0, true},
		{"group held by a migration of another kind", heldByOther, 1, 1, 4, 0, true},
	} {
		_, err := NewReplicaMove(c.st, c.group, c.from, c.to, tStart)
		if c.conflict {
			if !errors.Is(err, ErrConflict) || !errors.Is(err, meta.ErrConflict) {
				t.Fatalf("%s: %v, want a conflict", c.name, err)
			}
			continue
		}
		var e *Error
		if !errors.As(err, &e) || e.Code != c.code || !errors.Is(err, &meta.Error{Code: c.code}) {
			t.Fatalf("%s: %v, want %v", c.name, err, c.code)
		}
	}
}

func TestConflict(t *testing.T) {
	m := move(1, 1, 0)
	other := m
	other.Group = 8
	bad := Checkpoint("zz-bad", PhaseCatchUp, 1, m)
	bad.Crc32C++ // a corrupted row whose payload still names its group
	rows := []*metapb.Checkpoint{
		Checkpoint("b", PhaseComplete, 1, m), // until deleted, the group is busy
		Checkpoint("a", PhaseAddLearner, 1, m),
		meta.NewCheckpoint("garbage", metapb.MigrationKind_MIGRATION_KIND_REPLICA_MOVE, "catch_up", 1, []byte("{")),
		meta.NewCheckpoint("vs", metapb.MigrationKind_MIGRATION_KIND_VSHARD_MOVE, "copy", 1, other.Encode()),
		bad,
		nil,
	}
	if id, ok := Conflict(rows, tg); !ok || id != "a" {
		t.Fatalf("conflict %q %v", id, ok)
	}
	if id, ok := Conflict(rows, 8); ok {
		t.Fatalf("group 8 (only a vShard move row) conflicts with %q", id)
	}
	if id, ok := Conflict(rows[4:5], tg); !ok || id != "zz-bad" {
		t.Fatalf("a row with a bad checksum and a readable payload: %q %v", id, ok)
	}
}

func TestRecordedViewAndNodeStates(t *testing.T) {
	st := metaCluster(t)
	st, res, _, err := meta.Apply(st, meta.NewAddReplica(1, 4, metapb.Role_ROLE_LEARNER), 1)
	if err != nil {
		t.Fatal(err)
	}
	v := RecordedView(st, 1)
	l := res.GetReplicaId()
	if v.Group != 1 || v.LeaderHint != 1 || len(v.RecordedVoters) != 3 || len(v.RecordedLearners) != 1 ||
		v.RecordedLearners[0] != (Member{Replica: l, Node: 4}) || v.LeaderNode != 0 || len(v.Voters) != 0 {
		t.Fatalf("view %+v", v)
	}
	if v := RecordedView(st, 99); v.Group != 99 || len(v.RecordedVoters) != 0 {
		t.Fatalf("view of no group %+v", v)
	}
	ns := NodeStatesOf(st, func(n uint64) bool { return n == 3 })
	if len(ns) != 5 || ns[5].State != metapb.NodeState_NODE_STATE_DRAINING || !ns[3].Gone || ns[2].Gone {
		t.Fatalf("node states %+v", ns)
	}
	if ns := NodeStatesOf(st, nil); ns[3].Gone {
		t.Fatalf("node states %+v", ns)
	}
}
