package migrate

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

func activeNodes() NodeStates {
	ns := NodeStates{}
	for n := uint64(1); n <= 5; n++ {
		ns[n] = NodeStatus{State: metapb.NodeState_NODE_STATE_ACTIVE}
	}
	return ns
}

func TestRecoverTable(t *testing.T) {
	m := move(1, 1, tL)
	corrupt := Checkpoint("r", PhaseCatchUp, 1, m)
	corrupt.Crc32C ^= 0x10
	corruptKind := Checkpoint("r", PhaseCatchUp, 1, m)
	corruptKind.Kind = metapb.MigrationKind_MIGRATION_KIND_VSHARD_MOVE // CRC no longer matches
	cases := []struct {
		name   string
		row    *metapb.Checkpoint
		state  rstate
		edit   func(*world)
		nodes  func(NodeStates)
		now    time.Time
		cfg    Config
		action Action
		phase  Phase
		code   metapb.Code // Quarantine's
	}{
		{name: "bad checksum", row: corrupt, state: sLagging, action: Quarantine, code: metapb.Code_CODE_BAD_CHECKSUM},
		{name: "bad checksum, corrupted kind", row: corruptKind, state: sLagging, action: Quarantine, code: metapb.Code_CODE_BAD_CHECKSUM},
		{name: "unknown phase", row: meta.NewCheckpoint("r", metapb.MigrationKind_MIGRATION_KIND_REPLICA_MOVE, "copy", 1, m.Encode()), state: sLagging, action: Quarantine, code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "payload does not decode", row: meta.NewCheckpoint("r", metapb.MigrationKind_MIGRATION_KIND_REPLICA_MOVE, "catch_up", 1, []byte("{")), state: sLagging, action: Quarantine, phase: PhaseCatchUp, code: metapb.Code_CODE_MALFORMED},
		{name: "payload invalid for its phase", row: Checkpoint("r", PhasePromote, 1, move(1, 1, 0)), state: sTransferred, action: Quarantine, phase: PhasePromote, code: metapb.Code_CODE_INVALID_ARGUMENT},
		{name: "complete", row: Checkpoint("r", PhaseComplete, 1, m), state: sRecordedFinal, action: Cleanup, phase: PhaseComplete},
		{name: "complete, even old, target gone, group unobserved", row: Checkpoint("r", PhaseComplete, 1, m), state: sRecordedFinal,
			edit: func(w *world) { w.leader = 0 }, nodes: func(ns NodeStates) { delete(ns, tTo) }, now: tStart.Add(48 * time.Hour), action: Cleanup, phase: PhaseComplete},
		{name: "no leader", row: Checkpoint("r", PhaseCatchUp, 1, m), state: sLagging, edit: func(w *world) { w.leader = 0 }, action: Wait, phase: PhaseCatchUp},
		{name: "conf change pending, old, target gone", row: Checkpoint("r", PhasePromote, 1, m), state: sTransferred,
			edit: func(w *world) { w.pending = true }, nodes: func(ns NodeStates) { delete(ns, tTo) }, now: tStart.Add(2 * time.Hour), action: Wait, phase: PhasePromote},
		{name: "promote crashed before its checkpoint: forward", row: Checkpoint("r", PhasePromote, 1, m), state: sFinal, action: Forward, phase: PhasePromote},
		{name: "joint, old, target gone: forward", row: Checkpoint("r", PhasePromote, 1, m), state: sJoint,
			nodes: func(ns NodeStates) { ns[tTo] = NodeStatus{State: metapb.NodeState_NODE_STATE_ACTIVE, Gone: true} }, now: tStart.Add(2 * time.Hour), action: Forward, phase: PhasePromote},
		{name: "aborting lost the race with the promote: forward", row: Checkpoint("r", PhaseAborting, 2, m), state: sFinal, action: Forward, phase: PhasePromote},
		{name: "aborting: continue", row: Checkpoint("r", PhaseAborting, 2, m), state: sCaughtUp, action: Abort, phase: PhaseAborting},
		{name: "target unknown", row: Checkpoint("r", PhaseCatchUp, 1, m), state: sLagging, nodes: func(ns NodeStates) { delete(ns, tTo) }, action: Abort, phase: PhaseAborting},
		{name: "target decommissioned", row: Checkpoint("r", PhaseCatchUp, 1, m), state: sLagging,
			nodes: func(ns NodeStates) { ns[tTo] = NodeStatus{State: metapb.NodeState_NODE_STATE_DECOMMISSIONED} }, action: Abort, phase: PhaseAborting},
		{name: "target draining", row: Checkpoint("r", PhaseTransferLeader, 1, m), state: sCaughtUp,
			nodes: func(ns NodeStates) { ns[tTo] = NodeStatus{State: metapb.NodeState_NODE_STATE_DRAINING} }, action: Abort, phase: PhaseAborting},
		{name: "target gone", row: Checkpoint("r", PhaseCatchUp, 1, m), state: sLagging,
			nodes: func(ns NodeStates) { ns[tTo] = NodeStatus{State: metapb.NodeState_NODE_STATE_ACTIVE, Gone: true} }, action: Abort, phase: PhaseAborting},
		{name: "older than the abort timeout", row: Checkpoint("r", PhasePromote, 1, m), state: sTransferred, now: tStart.Add(time.Hour + time.Second), action: Abort, phase: PhaseAborting},
		{name: "exactly the abort timeout", row: Checkpoint("r", PhasePromote, 1, m), state: sTransferred, now: tStart.Add(time.Hour), action: Resume, phase: PhasePromote},
		{name: "configured abort timeout", row: Checkpoint("r", PhaseCatchUp, 1, m), state: sLagging, now: tStart.Add(11 * time.Minute), cfg: Config{AbortTimeout: 10 * time.Minute}, action: Abort, phase: PhaseAborting},
		{name: "start in the future (clock skew)", row: Checkpoint("r", PhaseCatchUp, 1, m), state: sLagging, now: tStart.Add(-time.Hour), action: Resume, phase: PhaseCatchUp},
		{name: "resume add_learner", row: Checkpoint("r", PhaseAddLearner, 1, move(1, 1, 0)), state: sNone, action: Resume, phase: PhaseAddLearner},
		{name: "resume add_learner, one step ahead", row: Checkpoint("r", PhaseAddLearner, 1, move(1, 1, 0)), state: sLagging, action: Resume, phase: PhaseAddLearner},
		{name: "resume catch_up", row: Checkpoint("r", PhaseCatchUp, 1, m), state: sLagging, action: Resume, phase: PhaseCatchUp},
		{name: "resume transfer_leader", row: Checkpoint("r", PhaseTransferLeader, 1, m), state: sCaughtUp, action: Resume, phase: PhaseTransferLeader},
		{name: "resume transfer_leader, one step ahead", row: Checkpoint("r", PhaseTransferLeader, 1, m), state: sTransferred, action: Resume, phase: PhaseTransferLeader},
		{name: "resume promote", row: Checkpoint("r", PhasePromote, 1, m), state: sTransferred, action: Resume, phase: PhasePromote},
		{name: "resume promote with an extra voter (not past the point of no return)", row: Checkpoint("r", PhasePromote, 1, m), state: sExtraVoter, action: Resume, phase: PhasePromote},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := worldAt(c.state, 1, 1)
			if c.edit != nil {
				c.edit(w)
			}
			ns := activeNodes()
			if c.nodes != nil {
				c.nodes(ns)
			}
			now := c.now
			if now.IsZero() {
				now = tStart.Add(10 * time.Minute)
			}
			ds := Recover([]*metapb.Checkpoint{c.row}, now, ns, map[uint64]GroupView{tg: w.view()}, c.cfg)
			if len(ds) != 1 {
				t.Fatalf("decisions %v", ds)
			}
			d := ds[0]
			if d.Action != c.action || d.Phase != c.phase || d.ID != "r" || d.Reason == "" {
				t.Fatalf("decision %v (%+v), want %v from %v", d, d, c.action, c.phase)
			}
			switch d.Action {
			case Quarantine:
				var e *Error
				if !errors.As(d.Err, &e) || e.Code != c.code {
					t.Fatalf("quarantine error %v, want %v", d.Err, c.code)
				}
			case Abort:
				if len(d.Compensations) == 0 {
					t.Fatal("abort without compensations")
				}
			default:
				if d.Err != nil || d.Compensations != nil {
					t.Fatalf("decision %+v", d)
				}
			}
		})
	}
}

func TestRecoverSkipsOtherKindsAndOrdersByID(t *testing.T) {
	m := move(1, 1, tL)
	rows := []*metapb.Checkpoint{
		Checkpoint("c", PhaseCatchUp, 1, m),
		nil,
		meta.NewCheckpoint("v", metapb.MigrationKind_MIGRATION_KIND_VSHARD_MOVE, "copy", 1, []byte("anything")),
		Checkpoint("a", PhaseComplete, 1, m),
		Checkpoint("b", PhaseAborting, 1, m),
	}
	ds := Recover(rows, tStart, activeNodes(), map[uint64]GroupView{tg: worldAt(sLagging, 1, 1).view()}, Config{})
	var got []string
	for _, d := range ds {
		got = append(got, d.ID+":"+d.Action.String())
	}
	if strings.Join(got, " ") != "a:cleanup b:abort c:resume" {
		t.Fatalf("decisions %v", got)
	}
	if ds := Recover(nil, tStart, nil, nil, Config{}); len(ds) != 0 {
		t.Fatalf("decisions for no rows: %v", ds)
	}
	// Unobserved group.
	if ds := Recover(rows[:1], tStart, activeNodes(), nil, Config{}); len(ds) != 1 || ds[0].Action != Wait {
		t.Fatalf("unobserved: %v", ds)
	}
}

func TestRecoverAbortCompensationsInOrder(t *testing.T) {
	w := worldAt(sTransferred, 1, 1)
	ds := Recover([]*metapb.Checkpoint{Checkpoint("r", PhasePromote, 1, move(1, 1, tL))}, tStart.Add(2*time.Hour), activeNodes(), map[uint64]GroupView{tg: w.view()}, Config{})
	want := []Compensation{
		{Kind: RestoreLeaderHint, Group: tg, Replica: 1, Node: 1},
		{Kind: RemoveLearner, Group: tg, Replica: tL, Node: tTo},
	}
	if len(ds) != 1 || len(ds[0].Compensations) != 2 || ds[0].Compensations[0] != want[0] || ds[0].Compensations[1] != want[1] {
		t.Fatalf("decisions %+v, want compensations %v", ds, want)
	}
}

// FuzzRecoverRow: no row, however corrupted, makes Recover panic; a row
// that does not parse is quarantined (or, when intact but of another kind,
// left alone), never acted on.
func FuzzRecoverRow(f *testing.F) {
	m := move(1, 1, tL)
	f.Add("r", int32(1), "catch_up", uint32(1), m.Encode(), false, uint8(2))
	f.Add("r", int32(1), "promote", uint32(2), m.Encode(), true, uint8(6))
	f.Add("r", int32(2), "copy", uint32(1), []byte("{}"), false, uint8(0))
	f.Add("", int32(0), "", uint32(0), []byte(nil), false, uint8(8))
	f.Fuzz(func(t *testing.T, id string, kind int32, phase string, attempt uint32, payload []byte, badCRC bool, state uint8) {
		c := meta.NewCheckpoint(id, metapb.MigrationKind(kind), phase, attempt, payload)
		if badCRC {
			c.Crc32C = ^c.Crc32C
		}
		w := worldAt(rstate(state%uint8(nStates)), 1, 1)
		ds := Recover([]*metapb.Checkpoint{c}, tStart, activeNodes(), map[uint64]GroupView{tg: w.view()}, Config{})
		_, _, err := ParseRow(c)
		switch {
		case err == nil:
			if len(ds) != 1 || ds[0].Action == Quarantine {
				t.Fatalf("a good row: %v", ds)
			}
		case !badCRC && metapb.MigrationKind(kind) != metapb.MigrationKind_MIGRATION_KIND_REPLICA_MOVE:
			if len(ds) != 0 {
				t.Fatalf("a row of another kind: %v", ds)
			}
		default:
			if len(ds) != 1 || ds[0].Action != Quarantine || ds[0].Err == nil {
				t.Fatalf("a bad row (%v): %v", err, ds)
			}
		}
	})
}

// Decision.Entry writes what the decision starts with, conditional on the
// row it was decided from.
func TestDecisionEntry(t *testing.T) {
	m := move(1, 1, tL)
	w := worldAt(sLagging, 1, 1)
	decide := func(row *metapb.Checkpoint, now time.Time, ns NodeStates) Decision {
		t.Helper()
		ds := Recover([]*metapb.Checkpoint{row}, now, ns, map[uint64]GroupView{tg: w.view()}, Config{})
		if len(ds) != 1 {
			t.Fatalf("decisions %v", ds)
		}
		return ds[0]
	}
	d := decide(Checkpoint("r", PhaseComplete, 3, m), tStart, activeNodes())
	if e := d.Entry(); d.Action != Cleanup || e.GetDeleteCheckpoint().GetId() != "r" || e.GetDeleteCheckpoint().GetExpect().GetPhase() != "complete" || e.GetDeleteCheckpoint().GetExpect().GetAttempt() != 3 {
		t.Fatalf("cleanup %+v: %v", d, e)
	}
	gone := activeNodes()
	gone[tTo] = NodeStatus{State: metapb.NodeState_NODE_STATE_ACTIVE, Gone: true}
	d = decide(Checkpoint("r", PhaseCatchUp, 3, m), tStart, gone)
	e := d.Entry()
	c := e.GetPutCheckpoint().GetCheckpoint()
	got, _ := DecodeReplicaMove(c.GetPayload())
	if d.Action != Abort || d.From != PhaseCatchUp || c.GetPhase() != "aborting" || c.GetAttempt() != 3 || c.GetFenceGroup() != tg ||
		got.LastError != d.Reason || e.GetPutCheckpoint().GetExpect().GetPhase() != "catch_up" || e.GetPutCheckpoint().GetExpect().GetAttempt() != 3 {
		t.Fatalf("abort %+v: %v", d, e)
	}
	if d := decide(Checkpoint("r", PhaseAborting, 3, m), tStart, gone); d.Action != Abort || d.Entry() != nil {
		t.Fatalf("abort in progress %+v: %v", d, d.Entry())
	}
	if d := decide(Checkpoint("r", PhaseCatchUp, 3, m), tStart, activeNodes()); d.Action != Resume || d.Entry() != nil {
		t.Fatalf("resume %+v: %v", d, d.Entry())
	}
	bad := Checkpoint("r", PhaseCatchUp, 3, m)
	bad.Crc32C ^= 1
	if d := decide(bad, tStart, activeNodes()); d.Action != Quarantine || d.Entry() != nil {
		t.Fatalf("quarantine %+v: %v", d, d.Entry())
	}
}

// One corrupt row does not poison the metadata state: a state holding a
// move's row whose bytes rotted round-trips through its encoding (a
// snapshot, a restart), Apply keeps working on it (the rotted row holds
// nothing, so placement may act on the group), and Recover quarantines the
// row, as it does a row stored under a key other than its ID; an operator's
// unconditional delete clears both.
func TestRecoverQuarantinesCorruptRowFromState(t *testing.T) {
	st := metaCluster(t)
	m, err := NewReplicaMove(st, 1, 1, 4, tStart)
	if err != nil {
		t.Fatal(err)
	}
	id := MoveID(m)
	st, _, _, err = meta.Apply(st, StartEntry(m), tStart.UnixNano())
	if err != nil {
		t.Fatal(err)
	}
	st.Migrations[id].Payload[5] ^= 0x40                                                  // rot
	st.Migrations["x-moved"] = Checkpoint("x-elsewhere", PhaseCatchUp, 1, move(1, 1, tL)) // a key that rotted
	b, err := meta.EncodeState(st)
	if err != nil {
		t.Fatal(err)
	}
	st, err = meta.DecodeState(b)
	if err != nil {
		t.Fatalf("a state with corrupt rows does not load: %v", err)
	}
	if q := meta.QuarantinedCheckpoints(st); len(q) != 2 {
		t.Fatalf("quarantined %v", q)
	}
	st, _, _, err = meta.Apply(st, meta.NewAddReplica(1, 5, metapb.Role_ROLE_LEARNER), tStart.UnixNano())
	if err == nil {
		t.Fatal("node 5 is draining: the add should be refused on its own merits")
	}
	if st, _, _, err = meta.Apply(st, meta.NewAddReplica(1, 4, metapb.Role_ROLE_LEARNER), tStart.UnixNano()); err != nil {
		t.Fatalf("apply over a quarantined row: %v", err)
	}
	ds := Recover(Rows(st), tStart, NodeStatesOf(st, nil), map[uint64]GroupView{1: RecordedView(st, 1)}, Config{})
	if len(ds) != 2 {
		t.Fatalf("decisions %v", ds)
	}
	for _, d := range ds {
		if d.Action != Quarantine || !errors.Is(d.Err, meta.ErrBadChecksum) || d.Entry() != nil {
			t.Fatalf("decision %+v", d)
		}
	}
	if ds[0].ID != id || ds[1].ID != "x-moved" {
		t.Fatalf("decisions %v", ds)
	}
	for _, d := range ds {
		if st, _, _, err = meta.Apply(st, meta.NewDeleteCheckpoint(d.ID), tStart.UnixNano()); err != nil {
			t.Fatal(err)
		}
	}
	if len(st.GetMigrations()) != 0 {
		t.Fatalf("rows %v", st.GetMigrations())
	}
}
