package server

import (
	"bytes"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"github.com/nodedb/nodedb-cluster/internal/migrate"
	"github.com/nodedb/nodedb-cluster/internal/placement"
	"google.golang.org/protobuf/proto"
)

const testNow = int64(1_000_000)

func mustApply(t *testing.T, st *metapb.State, e *metapb.Entry) *metapb.State {
	t.Helper()
	next, _, _, err := meta.Apply(st, e, testNow)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	return next
}

// testState bootstraps node 1 with groups data groups and replication
// factor rf, then joins and activates nodes-1 more nodes.
func testState(t *testing.T, rf, groups uint32, nodes int) *metapb.State {
	t.Helper()
	st := mustApply(t, nil, meta.NewBootstrap(
		&metapb.ClusterSettings{ClusterId: "c", VshardCount: 64, ReplicationFactor: rf},
		&metapb.Node{PeerAddr: "n1:1"}, groups))
	for range nodes - 1 {
		id := fmt.Sprint(st.GetNextNodeId())
		secret := meta.HashSecret("s" + id)
		st = mustApply(t, st, meta.NewCreateToken("t"+id, secret, testNow+1))
		next, res, _, err := meta.Apply(st, meta.NewBeginJoin("t"+id, secret, meta.HashKey([]byte(id)), "n"+id+":1", "", ""), testNow)
		if err != nil {
			t.Fatalf("join: %v", err)
		}
		st = mustApply(t, next, meta.NewActivateNode(res.GetNodeId()))
	}
	return st
}

// execute records every change, as the metadata leader does once Raft
// made it.
func execute(t *testing.T, st *metapb.State, changes []placement.Change) *metapb.State {
	t.Helper()
	for _, c := range changes {
		st = mustApply(t, st, c.Entry())
	}
	return st
}

// settle executes Plan, every learner caught up, until it has nothing left.
func settle(t *testing.T, st *metapb.State) *metapb.State {
	t.Helper()
	for range 20 {
		p := placement.Plan(st, always)
		if len(p) == 0 {
			return st
		}
		st = execute(t, st, p)
	}
	t.Fatal("Plan does not settle")
	return nil
}

// hold makes migration id hold group g.
func hold(t *testing.T, st *metapb.State, id string, g uint64) *metapb.State {
	t.Helper()
	m := migrate.ReplicaMove{Version: migrate.PayloadVersion, Group: g, From: 1, To: 9, Outgoing: 1, StartedUnixNanos: testNow}
	return mustApply(t, st, meta.NewPutCheckpoint(migrate.Checkpoint(id, migrate.PhaseAddLearner, 1, m)))
}

func always(uint64, uint64) bool { return true }

// captureLog returns a logger at debug level writing text records to buf.
func captureLog(buf *bytes.Buffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func groupsOf(changes []placement.Change) []uint64 {
	var out []uint64
	for _, c := range changes {
		out = append(out, c.Group)
	}
	return out
}

func TestHeldGroups(t *testing.T) {
	base := testState(t, 1, 4, 1)
	corrupt := func(st *metapb.State, id string) *metapb.State {
		st = proto.Clone(st).(*metapb.State)
		st.GetMigrations()[id].Crc32C ^= 1
		return st
	}
	for _, tc := range []struct {
		name  string
		state func() *metapb.State
		want  map[uint64]string
	}{
		{"no migrations", func() *metapb.State { return base }, map[uint64]string{}},
		{"row without a fence", func() *metapb.State {
			return mustApply(t, base, meta.NewPutCheckpoint(meta.NewCheckpoint("m0", metapb.MigrationKind_MIGRATION_KIND_REPLICA_MOVE, "p", 1, nil)))
		}, map[uint64]string{}},
		{"two groups held", func() *metapb.State {
			return hold(t, hold(t, base, "m1", 1), "m3", 3)
		}, map[uint64]string{1: "m1", 3: "m3"}},
		{"quarantined row holds nothing", func() *metapb.State {
			return corrupt(hold(t, hold(t, base, "m1", 1), "m3", 3), "m3")
		}, map[uint64]string{1: "m1"}},
		{"released after deletion", func() *metapb.State {
			return mustApply(t, hold(t, base, "m2", 2), meta.NewDeleteCheckpoint("m2"))
		}, map[uint64]string{}},
		{"row stored under another key holds nothing", func() *metapb.State {
			st := proto.Clone(hold(t, base, "m4", 4)).(*metapb.State)
			st.GetMigrations()["other"] = st.GetMigrations()["m4"]
			delete(st.GetMigrations(), "m4")
			return st
		}, map[uint64]string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := tc.state()
			got := heldGroups(st)
			if !maps.Equal(got, tc.want) {
				t.Fatalf("heldGroups = %v, want %v", got, tc.want)
			}
			// The same answer as meta.GroupFence, group by group.
			for _, g := range meta.GroupIDs(st) {
				id, ok := meta.GroupFence(st, g)
				if gid, gok := got[g]; gok != ok || gid != id {
					t.Fatalf("group %d: heldGroups says %q %v, GroupFence %q %v", g, gid, gok, id, ok)
				}
			}
		})
	}
}

func TestSkipHeldLogs(t *testing.T) {
	var buf bytes.Buffer
	held := map[uint64]string{2: "move-7"}
	if skipHeld(captureLog(&buf), held, 1, "membership sync") {
		t.Fatal("group 1 is not held")
	}
	if buf.Len() != 0 {
		t.Fatalf("logged for an unheld group: %s", buf.String())
	}
	if !skipHeld(captureLog(&buf), held, 2, "membership sync") {
		t.Fatal("group 2 is held")
	}
	line := buf.String()
	for _, want := range []string{"level=DEBUG", "group=2", "migration=move-7", `action="membership sync"`} {
		if !strings.Contains(line, want) {
			t.Fatalf("log %q lacks %q", line, want)
		}
	}
}

// A held group gets no Plan change (AddLearner, Promote) while an unheld
// one does.
func TestPlacementSkipsHeldGroups(t *testing.T) {
	st := testState(t, 3, 2, 3)
	var buf bytes.Buffer
	log := captureLog(&buf)

	// Both groups are short of voters: each gets a learner, but group 1
	// is held.
	held := hold(t, st, "m1", 1)
	if got := groupsOf(placement.Plan(held, always)); !slices.Contains(got, 1) || !slices.Contains(got, 2) {
		t.Fatalf("precondition: Plan = %+v", got)
	}
	got := placementChanges(log, held, heldGroups(held), always)
	if slices.Contains(groupsOf(got), 1) || !slices.Contains(groupsOf(got), 2) {
		t.Fatalf("placementChanges = %+v, want a change for group 2 and none for held group 1", got)
	}
	if !strings.Contains(buf.String(), "migration=m1") {
		t.Fatalf("no debug record of the skip: %s", buf.String())
	}

	// Learners added before the hold: both would be promoted; the held
	// group's is not.
	st = execute(t, st, placement.Plan(st, always))
	held = hold(t, st, "m1", 1)
	plan := placement.Plan(held, always)
	var promotes []uint64
	for _, c := range plan {
		if c.Kind == placement.Promote && c.Group != 0 {
			promotes = append(promotes, c.Group)
		}
	}
	if !slices.Equal(promotes, []uint64{1, 2}) {
		t.Fatalf("precondition: Plan = %+v", plan)
	}
	got = placementChanges(log, held, heldGroups(held), always)
	if slices.Contains(groupsOf(got), 1) || !slices.Contains(groupsOf(got), 2) {
		t.Fatalf("placementChanges = %+v, want a promotion for group 2 only", got)
	}
}

// A held group gets no Rebalance move (AddLearner, then Replace) while an
// unheld one does.
func TestRebalanceSkipsHeldGroups(t *testing.T) {
	// RF 1, four groups on node 1, node 2 empty: Rebalance moves groups 1
	// and 2 to node 2.
	st := settle(t, testState(t, 1, 4, 2))
	if p := placement.Plan(st, always); len(p) != 0 {
		t.Fatalf("precondition: Plan = %+v", p)
	}
	moves := placement.Rebalance(st, always)
	if !slices.Equal(groupsOf(moves), []uint64{1, 2}) {
		t.Fatalf("precondition: Rebalance = %+v", moves)
	}
	log := captureLog(new(bytes.Buffer))
	held := hold(t, st, "m1", 1)
	got := placementChanges(log, held, heldGroups(held), always)
	if !slices.Equal(groupsOf(got), []uint64{2}) || got[0].Kind != placement.AddLearner {
		t.Fatalf("placementChanges = %+v, want group 2's learner only", got)
	}

	// With both learners in place and caught up, Rebalance replaces in
	// both groups; the held group's Raft configuration must not change.
	st = execute(t, st, moves)
	held = hold(t, st, "m1", 1)
	if r := placement.Rebalance(held, always); !slices.Equal(groupsOf(r), []uint64{1, 2}) || r[0].Kind != placement.Replace {
		t.Fatalf("precondition: Rebalance = %+v", r)
	}
	got = placementChanges(log, held, heldGroups(held), always)
	if !slices.Equal(groupsOf(got), []uint64{2}) || got[0].Kind != placement.Replace {
		t.Fatalf("placementChanges = %+v, want group 2's replacement only", got)
	}

	// Once the migration's row is gone, group 1 is placed again.
	released := mustApply(t, held, meta.NewDeleteCheckpoint("m1"))
	if got := placementChanges(log, released, heldGroups(released), always); !slices.Equal(groupsOf(got), []uint64{1, 2}) {
		t.Fatalf("after release: placementChanges = %+v", got)
	}
}

// A held group's leadership does not move while an unheld group's does.
func TestLeaderMovesSkipHeldGroups(t *testing.T) {
	st := settle(t, testState(t, 3, 4, 3))
	leaders := map[uint64]uint64{0: 1, 1: 1, 2: 1, 3: 1, 4: 1}
	all := placement.BalanceLeaders(st, leaders)
	if !slices.ContainsFunc(all, func(m placement.LeaderMove) bool { return m.Group == 1 }) {
		t.Fatalf("precondition: BalanceLeaders = %+v moves no leadership of group 1", all)
	}
	held := hold(t, st, "m1", 1)
	got := leaderMoves(captureLog(new(bytes.Buffer)), held, heldGroups(held), leaders)
	if len(got) == 0 {
		t.Fatal("no leadership moves for the unheld groups")
	}
	for _, m := range got {
		if m.Group == 1 {
			t.Fatalf("leaderMoves = %+v moves held group 1", got)
		}
	}
}
