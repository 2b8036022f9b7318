package migrate

import (
	"errors"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

// want is the part of a Step a table case checks.
type want struct {
	kind             StepKind
	phase            Phase // Advance's phase
	replica, node    uint64
	promote          bool
	remove           uint64
	comp             Compensation
	learner          uint64 // Move.Learner
	lag              uint64
	checkLearner     bool
	checkLag         bool
	checkReplicaNode bool
}

func TestNextTable(t *testing.T) {
	noLeader := func(w *world) { w.leader = 0 }
	pending := func(w *world) { w.pending = true }
	cases := []struct {
		name  string
		phase Phase
		m     ReplicaMove
		state rstate
		edit  func(*world)
		want  want
	}{
		// add_learner
		{name: "add_learner: nothing on the target: allocate and add", phase: PhaseAddLearner, m: move(1, 1, 0), state: sNone,
			want: want{kind: StepAddLearner, replica: 0, node: tTo, checkReplicaNode: true}},
		{name: "add_learner: recorded, not in Raft: the Raft half", phase: PhaseAddLearner, m: move(1, 1, 0), state: sRecorded,
			want: want{kind: StepAddLearner, replica: tL, node: tTo, checkReplicaNode: true}},
		{name: "add_learner: crash after the conf change: advance with the ID", phase: PhaseAddLearner, m: move(1, 1, 0), state: sLagging,
			want: want{kind: StepAdvance, phase: PhaseCatchUp, learner: tL, checkLearner: true}},
		{name: "add_learner: no leader", phase: PhaseAddLearner, m: move(1, 1, 0), state: sNone, edit: noLeader, want: want{kind: StepWait}},
		{name: "add_learner: conf change pending", phase: PhaseAddLearner, m: move(1, 1, 0), state: sNone, edit: pending, want: want{kind: StepWait}},
		{name: "add_learner: the row's learner vanished", phase: PhaseAddLearner, m: move(1, 1, 9), state: sNone, want: want{kind: StepAbort}},
		{name: "add_learner: past the point of no return", phase: PhaseAddLearner, m: move(1, 1, 0), state: sFinal,
			want: want{kind: StepAdvance, phase: PhasePromote, learner: tL, checkLearner: true}},

		// catch_up
		{name: "catch_up: lagging: wait with the measured lag", phase: PhaseCatchUp, m: move(1, 1, tL), state: sLagging,
			want: want{kind: StepWait, lag: 5000, checkLag: true}},
		{name: "catch_up: 64 behind is caught up", phase: PhaseCatchUp, m: move(1, 1, tL), state: sLagging,
			edit: func(w *world) { w.match[tL] = tCommit - 64 }, want: want{kind: StepAdvance, phase: PhaseTransferLeader}},
		{name: "catch_up: 65 behind is not", phase: PhaseCatchUp, m: move(1, 1, tL), state: sLagging,
			edit: func(w *world) { w.match[tL] = tCommit - 65 }, want: want{kind: StepWait, lag: 65, checkLag: true}},
		{name: "catch_up: close but probing (not replicating)", phase: PhaseCatchUp, m: move(1, 1, tL), state: sCaughtUp,
			edit: func(w *world) { w.replicating[tL] = false }, want: want{kind: StepWait}},
		{name: "catch_up: no progress known yet", phase: PhaseCatchUp, m: move(1, 1, tL), state: sCaughtUp,
			edit: func(w *world) { delete(w.match, tL); delete(w.replicating, tL) }, want: want{kind: StepWait}},
		{name: "catch_up: caught up", phase: PhaseCatchUp, m: move(1, 1, tL), state: sCaughtUp,
			want: want{kind: StepAdvance, phase: PhaseTransferLeader}},
		{name: "catch_up: Raft lost the learner, the record has it", phase: PhaseCatchUp, m: move(1, 1, tL), state: sRecorded,
			want: want{kind: StepAddLearner, replica: tL, node: tTo, checkReplicaNode: true}},
		{name: "catch_up: the learner vanished", phase: PhaseCatchUp, m: move(1, 1, tL), state: sNone, want: want{kind: StepAbort}},
		{name: "catch_up: promoted outside the move", phase: PhaseCatchUp, m: move(1, 1, tL), state: sExtraVoter,
			want: want{kind: StepAdvance, phase: PhaseTransferLeader}},

		// transfer_leader
		{name: "transfer_leader: the outgoing node leads", phase: PhaseTransferLeader, m: move(1, 1, tL), state: sCaughtUp,
			want: want{kind: StepTransferLeader, replica: 2, node: 2, checkReplicaNode: true}},
		{name: "transfer_leader: to the most caught-up voter", phase: PhaseTransferLeader, m: move(1, 1, tL), state: sCaughtUp,
			edit: func(w *world) { w.match[2] = tCommit - 3 }, want: want{kind: StepTransferLeader, replica: 3, node: 3, checkReplicaNode: true}},
		{name: "transfer_leader: no voter can take over", phase: PhaseTransferLeader, m: move(1, 1, tL), state: sCaughtUp,
			edit: func(w *world) { w.down[2], w.down[3] = true, true }, want: want{kind: StepWait}},
		{name: "transfer_leader: done (crash before the checkpoint)", phase: PhaseTransferLeader, m: move(1, 1, tL), state: sTransferred,
			want: want{kind: StepAdvance, phase: PhasePromote}},
		{name: "transfer_leader: another node led all along", phase: PhaseTransferLeader, m: move(1, 2, tL), state: sCaughtUp,
			want: want{kind: StepAdvance, phase: PhasePromote}},

		// promote
		{name: "promote: joint replace", phase: PhasePromote, m: move(1, 1, tL), state: sTransferred,
			want: want{kind: StepReplace, replica: tL, promote: true, remove: 1, checkReplicaNode: true}},
		{name: "promote: the outgoing node leads again", phase: PhasePromote, m: move(1, 1, tL), state: sCaughtUp,
			want: want{kind: StepTransferLeader, replica: 2, node: 2, checkReplicaNode: true}},
		{name: "promote: the learner fell behind", phase: PhasePromote, m: move(1, 1, tL), state: sTransferred,
			edit: func(w *world) { w.match[tL] = 100 }, want: want{kind: StepWait, lag: tCommit - 100, checkLag: true}},
		{name: "promote: another joint configuration", phase: PhasePromote, m: move(1, 1, tL), state: sTransferred,
			edit: func(w *world) { w.outgoing = map[uint64]uint64{1: 1, 2: 2, 3: 3, 9: 9} }, want: want{kind: StepWait}},
		{name: "promote: already a voter: remove the outgoing one only", phase: PhasePromote, m: move(1, 1, tL), state: sExtraVoter,
			want: want{kind: StepReplace, replica: tL, promote: false, remove: 1, checkReplicaNode: true}},
		{name: "promote: the outgoing replica left already: promote only", phase: PhasePromote, m: move(1, 1, tL), state: sTransferred,
			edit: func(w *world) { delete(w.voters, 1) }, want: want{kind: StepReplace, replica: tL, promote: true, remove: 0, checkReplicaNode: true}},
		{name: "promote: joint: wait for Raft to leave it", phase: PhasePromote, m: move(1, 1, tL), state: sJoint, want: want{kind: StepWait}},
		{name: "promote: replaced in Raft: record it", phase: PhasePromote, m: move(1, 1, tL), state: sFinal,
			want: want{kind: StepRecord, replica: tL, remove: 1, checkReplicaNode: true}},
		{name: "promote: recorded too: advance to complete", phase: PhasePromote, m: move(1, 1, tL), state: sRecordedFinal,
			want: want{kind: StepAdvance, phase: PhaseComplete}},
		{name: "promote: learner ID never recorded, found on the target", phase: PhasePromote, m: move(1, 1, tL), state: sFinal,
			want: want{kind: StepRecord, replica: tL, remove: 1, learner: tL, checkLearner: true}},

		// complete
		{name: "complete: delete", phase: PhaseComplete, m: move(1, 1, tL), state: sRecordedFinal, want: want{kind: StepDelete}},
		{name: "complete: delete, even without a leader", phase: PhaseComplete, m: move(1, 1, tL), state: sRecordedFinal, edit: noLeader, want: want{kind: StepDelete}},

		// aborting
		{name: "aborting: restore the leader first", phase: PhaseAborting, m: move(1, 1, tL), state: sTransferred,
			want: want{kind: StepCompensate, comp: Compensation{Kind: RestoreLeaderHint, Group: tg, Replica: 1, Node: 1}}},
		{name: "aborting: then remove the learner", phase: PhaseAborting, m: move(1, 1, tL), state: sCaughtUp,
			want: want{kind: StepCompensate, comp: Compensation{Kind: RemoveLearner, Group: tg, Replica: tL, Node: tTo}}},
		{name: "aborting: a learner only recorded", phase: PhaseAborting, m: move(1, 1, 0), state: sRecorded,
			want: want{kind: StepCompensate, comp: Compensation{Kind: RemoveLearner, Group: tg, Replica: tL, Node: tTo}}},
		{name: "aborting: the hint lags the restored leader", phase: PhaseAborting, m: move(1, 1, tL), state: sNone,
			edit: func(w *world) { w.hint = 2 }, want: want{kind: StepCompensate, comp: Compensation{Kind: RestoreLeaderHint, Group: tg, Replica: 1, Node: 1}}},
		{name: "aborting: an extra voter is removed as a voter", phase: PhaseAborting, m: move(1, 1, tL), state: sExtraVoter,
			edit: func(w *world) { w.leader, w.hint = 1, 1 }, want: want{kind: StepCompensate, comp: Compensation{Kind: RemoveVoter, Group: tg, Replica: tL, Node: tTo}}},
		{name: "aborting: the extra voter leads, no leader to restore: move it off", phase: PhaseAborting, m: move(1, 0, tL), state: sExtraVoter,
			edit: func(w *world) { w.leader = tTo }, want: want{kind: StepTransferLeader, replica: 1, node: 1, checkReplicaNode: true}},
		{name: "aborting: the original leader is down: nothing to restore", phase: PhaseAborting, m: move(1, 1, tL), state: sTransferred,
			edit: func(w *world) { w.down[1] = true }, want: want{kind: StepCompensate, comp: Compensation{Kind: RemoveLearner, Group: tg, Replica: tL, Node: tTo}}},
		{name: "aborting: all done", phase: PhaseAborting, m: move(1, 1, tL), state: sNone, want: want{kind: StepDelete}},
		{name: "aborting: lost the race with the promote: forward", phase: PhaseAborting, m: move(1, 1, tL), state: sJoint,
			want: want{kind: StepAdvance, phase: PhasePromote}},
		{name: "aborting: replaced already: forward", phase: PhaseAborting, m: move(1, 1, 0), state: sFinal,
			want: want{kind: StepAdvance, phase: PhasePromote, learner: tL, checkLearner: true}},

		// invalid
		{name: "catch_up without a learner is invalid", phase: PhaseCatchUp, m: move(1, 1, 0), state: sLagging, want: want{kind: StepInvalid}},
		{name: "unknown phase is invalid", phase: PhaseUnknown, m: move(1, 1, tL), state: sLagging, want: want{kind: StepInvalid}},
		{name: "invalid payload", phase: PhaseCatchUp, m: ReplicaMove{}, state: sLagging, want: want{kind: StepInvalid}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := worldAt(c.state, c.m.From, c.m.LeaderAtStart)
			if c.edit != nil {
				c.edit(w)
			}
			s := Next(c.m, c.phase, w.view())
			if s.Kind != c.want.kind {
				t.Fatalf("step %v (%+v), want %v", s, s, c.want.kind)
			}
			if s.Kind == StepAdvance && s.Phase != c.want.phase {
				t.Fatalf("advance to %v, want %v", s.Phase, c.want.phase)
			}
			if c.want.checkReplicaNode && (s.Replica != c.want.replica || s.Node != c.want.node || s.Promote != c.want.promote || s.Remove != c.want.remove) {
				t.Fatalf("step %+v, want replica %d node %d promote %v remove %d", s, c.want.replica, c.want.node, c.want.promote, c.want.remove)
			}
			if s.Kind == StepCompensate && s.Compensation != c.want.comp {
				t.Fatalf("compensation %v, want %v", s.Compensation, c.want.comp)
			}
			if c.want.checkLearner && s.Move.Learner != c.want.learner {
				t.Fatalf("move's learner %d, want %d", s.Move.Learner, c.want.learner)
			}
			if c.want.checkLag && s.Lag != c.want.lag {
				t.Fatalf("lag %d, want %d", s.Lag, c.want.lag)
			}
			if s.Kind == StepInvalid && s.Err == nil {
				t.Fatal("invalid step without an error")
			}
			if s.String() == "" {
				t.Fatal("empty step string")
			}
		})
	}
}

func TestNextCatchUpMaxLagConfigurable(t *testing.T) {
	w := worldAt(sLagging, 1, 1)
	w.match[tL] = tCommit - 200
	if s := Next(move(1, 1, tL), PhaseCatchUp, w.view()); s.Kind != StepWait {
		t.Fatalf("default threshold: %v", s)
	}
	if s := (Config{CatchUpMaxLag: 200}).Next(move(1, 1, tL), PhaseCatchUp, w.view()); s.Kind != StepAdvance {
		t.Fatalf("threshold 200: %v", s)
	}
}

// Every step's metadata entry does what the step says; the row writes are
// conditional on the row the step was decided from, and the membership
// entries carry the move's ID.
func TestStepEntries(t *testing.T) {
	m := move(1, 1, tL)
	id := MoveID(m)
	expects := func(t *testing.T, got *metapb.CheckpointExpectation, phase Phase, attempt uint32) {
		t.Helper()
		if got.GetAbsent() || got.GetPhase() != phase.String() || got.GetAttempt() != attempt {
			t.Fatalf("expectation %v, want %v/%d", got, phase, attempt)
		}
	}
	e := Step{Kind: StepAdvance, From: PhaseAddLearner, Phase: PhaseCatchUp, Move: m}.Entry(id, 3)
	c := e.GetPutCheckpoint().GetCheckpoint()
	if c.GetPhase() != "catch_up" || c.GetAttempt() != 3 || c.GetCrc32C() != meta.CheckpointCRC(c) || c.GetKind() != metapb.MigrationKind_MIGRATION_KIND_REPLICA_MOVE || c.GetFenceGroup() != tg {
		t.Fatalf("advance entry %v", c)
	}
	expects(t, e.GetPutCheckpoint().GetExpect(), PhaseAddLearner, 3)
	if got, err := DecodeReplicaMove(c.GetPayload()); err != nil || got != m {
		t.Fatalf("payload %+v, %v", got, err)
	}
	e = Step{Kind: StepAbort, From: PhaseCatchUp, Move: m, Reason: "target gone"}.Entry(id, 3)
	c = e.GetPutCheckpoint().GetCheckpoint()
	if got, _ := DecodeReplicaMove(c.GetPayload()); c.GetPhase() != "aborting" || got.LastError != "target gone" || c.GetFenceGroup() != tg {
		t.Fatalf("abort entry %v", c)
	}
	expects(t, e.GetPutCheckpoint().GetExpect(), PhaseCatchUp, 3)
	if e := (Step{Kind: StepAddLearner, From: PhaseAddLearner, Move: m, Node: tTo}).Entry(id, 1); e.GetAddReplica().GetNode() != tTo || e.GetAddReplica().GetGroup() != tg || e.GetAddReplica().GetMigrationId() != id {
		t.Fatalf("add learner entry %v", e)
	}
	if e := (Step{Kind: StepAddLearner, Move: m, Replica: tL, Node: tTo}).Entry(id, 1); e != nil {
		t.Fatalf("Raft-only add learner has entry %v", e)
	}
	e = Step{Kind: StepRecord, From: PhasePromote, Move: m, Replica: tL, Remove: 1}.Entry(id, 2)
	es := e.GetBatch().GetEntries()
	if len(es) != 3 || es[0].GetPromoteReplica().GetReplica() != tL || es[1].GetRemoveReplica().GetReplica() != 1 || es[2].GetPutCheckpoint().GetCheckpoint().GetPhase() != "complete" {
		t.Fatalf("record entry %v", e)
	}
	if es[0].GetPromoteReplica().GetMigrationId() != id || es[1].GetRemoveReplica().GetMigrationId() != id || es[2].GetPutCheckpoint().GetCheckpoint().GetFenceGroup() != 0 {
		t.Fatalf("record entry %v: the membership changes are not the move's, or the complete row still holds the group", e)
	}
	expects(t, es[2].GetPutCheckpoint().GetExpect(), PhasePromote, 2)
	e = Step{Kind: StepDelete, From: PhaseComplete, Move: m}.Entry(id, 2)
	if e.GetDeleteCheckpoint().GetId() != id {
		t.Fatalf("delete entry %v", e)
	}
	expects(t, e.GetDeleteCheckpoint().GetExpect(), PhaseComplete, 2)
	for _, k := range []StepKind{StepWait, StepTransferLeader, StepReplace, StepInvalid} {
		if e := (Step{Kind: k, Move: m}).Entry(id, 1); e != nil {
			t.Fatalf("%v has entry %v", k, e)
		}
	}
	if e := (Step{Kind: StepCompensate, Move: m, Compensation: Compensation{Kind: RestoreLeaderHint, Group: tg, Node: 1}}).Entry(id, 1); e.GetSetLeaderHint().GetNode() != 1 {
		t.Fatalf("restore entry %v", e)
	}
	if e := (Step{Kind: StepCompensate, Move: m, Compensation: Compensation{Kind: RemoveLearner, Group: tg, Replica: tL, Node: tTo}}).Entry(id, 1); e.GetRemoveReplica().GetReplica() != tL || e.GetRemoveReplica().GetMigrationId() != id {
		t.Fatalf("remove entry %v", e)
	}
	if e := (Compensation{Kind: RemoveLearner, Group: tg, Node: tTo}).Entry(id); e != nil {
		t.Fatalf("remove of an unknown replica has entry %v", e)
	}
	// A failure recorded within a phase: same phase and attempt, new
	// last error, conditional on the row.
	e = Step{Kind: StepWait, From: PhaseCatchUp, Move: m}.ErrorEntry(id, 4, "learner unreachable")
	c = e.GetPutCheckpoint().GetCheckpoint()
	if got, _ := DecodeReplicaMove(c.GetPayload()); c.GetPhase() != "catch_up" || c.GetAttempt() != 4 || got.LastError != "learner unreachable" || c.GetFenceGroup() != tg {
		t.Fatalf("error entry %v", c)
	}
	expects(t, e.GetPutCheckpoint().GetExpect(), PhaseCatchUp, 4)
	// Next records the phase it decided from.
	if s := Next(m, PhaseCatchUp, worldAt(sCaughtUp, 1, 1).view()); s.From != PhaseCatchUp || s.Kind != StepAdvance {
		t.Fatalf("step %+v", s)
	}
	if s := Next(m, PhaseUnknown, worldAt(sCaughtUp, 1, 1).view()); s.From != PhaseUnknown || s.Kind != StepInvalid {
		t.Fatalf("step %+v", s)
	}
	// A hand-built step without From cannot write a row.
	if _, err := meta.EncodeEntry(Step{Kind: StepAdvance, Phase: PhaseCatchUp, Move: m}.Entry(id, 1)); !errors.Is(err, meta.ErrInvalidArgument) {
		t.Fatalf("a put without From: %v", err)
	}
}

// metaMove applies entries to a metadata state as the executor would,
// failing the test on a refusal unless the test expects one.
type metaMove struct {
	t  *testing.T
	st *metapb.State
}

func (mm *metaMove) apply(e *metapb.Entry) *metapb.Result {
	mm.t.Helper()
	if _, err := meta.EncodeEntry(e); err != nil {
		mm.t.Fatalf("encode %v: %v", e, err)
	}
	next, res, _, err := meta.Apply(mm.st, e, tStart.UnixNano())
	if err != nil {
		mm.t.Fatalf("apply %v: %v", e, err)
	}
	mm.st = next
	return res
}

func (mm *metaMove) refused(e *metapb.Entry, code metapb.Code) {
	mm.t.Helper()
	if _, _, _, err := meta.Apply(mm.st, e, tStart.UnixNano()); meta.ResultError(&metapb.Result{Code: code}) == nil || !errors.Is(err, &meta.Error{Code: code}) {
		mm.t.Fatalf("apply %v: %v, want %v", e, err, code)
	}
}

// row returns the move's row as the executor reads it back.
func (mm *metaMove) row(id string) (Phase, ReplicaMove, uint32) {
	mm.t.Helper()
	c := mm.st.GetMigrations()[id]
	p, m, err := ParseRow(c)
	if err != nil {
		mm.t.Fatalf("row %v: %v", c, err)
	}
	return p, m, c.GetAttempt()
}

// The metadata entries of a whole move, applied to a real metadata state
// with meta.Apply: the record ends with node 4 a voter instead of node 1,
// and no row. On the way the group is held: placement's changes are
// refused (CONFLICT), a second coordinator working from a stale read is
// refused (CHECKPOINT_CONFLICT), and retries of the move's own writes are
// no-ops.
// startMetaMove starts moving group 1's replica from node 1 to node 4 on a
// metadata state built by meta.Apply, and returns the state, the move and
// its ID.
func startMetaMove(t *testing.T) (*metaMove, ReplicaMove, string) {
	t.Helper()
	mm := &metaMove{t: t, st: metaCluster(t)}
	m, err := NewReplicaMove(mm.st, 1, 1, 4, tStart)
	if err != nil {
		t.Fatal(err)
	}
	mm.apply(StartEntry(m))
	return mm, m, MoveID(m)
}

func TestStepEntriesApplyToMetadata(t *testing.T) {
	mm, m, id := startMetaMove(t)
	mm.apply(StartEntry(m)) // a retried start: the same row, a no-op
	if _, err := NewReplicaMove(mm.st, 1, 2, 4, tStart); !errors.Is(err, ErrConflict) {
		t.Fatalf("second move of the group: %v", err)
	}
	other, _ := NewReplicaMove(metaCluster(t), 1, 2, 4, tStart.Add(1))
	mm.refused(StartEntry(other), metapb.Code_CODE_CONFLICT)                                  // raced past NewReplicaMove
	mm.refused(meta.NewAddReplica(1, 4, metapb.Role_ROLE_LEARNER), metapb.Code_CODE_CONFLICT) // placement

	phase, _, attempt := mm.row(id)
	res := mm.apply(Step{Kind: StepAddLearner, From: phase, Move: m, Node: 4}.Entry(id, attempt))
	m.Learner = res.GetReplicaId()
	for _, p := range []Phase{PhaseCatchUp, PhaseTransferLeader, PhasePromote} {
		from, _, attempt := mm.row(id)
		s := Step{Kind: StepAdvance, From: from, Phase: p, Move: m}
		mm.apply(s.Entry(id, attempt))
		mm.apply(s.Entry(id, attempt)) // retried: a no-op
		// A second coordinator that read the row before this write.
		stale := Step{Kind: StepAbort, From: from, Move: m, Reason: "stale"}
		mm.refused(stale.Entry(id, attempt), metapb.Code_CODE_CHECKPOINT_CONFLICT)
	}
	// A failure recorded within promote, without a new attempt.
	phase, _, attempt = mm.row(id)
	mm.apply(Step{Kind: StepReplace, From: phase, Move: m}.ErrorEntry(id, attempt, "joint change timed out"))
	if p, got, a := mm.row(id); p != PhasePromote || a != attempt || got.LastError != "joint change timed out" {
		t.Fatalf("row %v %+v %d", p, got, a)
	}
	mm.refused(meta.NewBatch(meta.NewPromoteReplica(1, m.Learner), meta.NewRemoveReplica(1, m.Outgoing)), metapb.Code_CODE_CONFLICT) // placement's Replace record
	rec := Step{Kind: StepRecord, From: PhasePromote, Move: m, Replica: m.Learner, Remove: m.Outgoing}.Entry(id, attempt)
	mm.apply(rec)
	mm.apply(rec) // retried after it took effect: every member a no-op
	if p, _, _ := mm.row(id); p != PhaseComplete {
		t.Fatalf("row at %v", p)
	}
	if _, held := meta.GroupFence(mm.st, 1); held {
		t.Fatal("the complete row still holds the group")
	}
	del := Step{Kind: StepDelete, From: PhaseComplete, Move: m}.Entry(id, attempt)
	mm.apply(del)
	mm.apply(del)                                         // retried: a no-op
	mm.refused(rec, metapb.Code_CODE_CHECKPOINT_CONFLICT) // a late retry cannot bring the row back
	g := mm.st.GetGroups()[1]
	if meta.ReplicaOnNode(g, 1) != nil || meta.ReplicaOnNode(g, 4).GetRole() != metapb.Role_ROLE_VOTER || len(mm.st.GetMigrations()) != 0 {
		t.Fatalf("group %v, rows %v", g, mm.st.GetMigrations())
	}
	mm.apply(meta.NewAddReplica(1, 1, metapb.Role_ROLE_LEARNER)) // placement again
}

// A move whose target died is aborted by recovery through the metadata
// group: the abort's compensations carry the move's ID and get through the
// group's fence (placement's repair does not, meanwhile), and the row's
// deletion releases the group for repair. No deadlock.
func TestAbortThroughMetadataReleasesTheGroup(t *testing.T) {
	mm, m, id := startMetaMove(t)
	res := mm.apply(Step{Kind: StepAddLearner, From: PhaseAddLearner, Move: m, Node: 4}.Entry(id, 1))
	m.Learner = res.GetReplicaId()
	mm.apply(Step{Kind: StepAdvance, From: PhaseAddLearner, Phase: PhaseCatchUp, Move: m}.Entry(id, 1))

	// Node 4 dies. Raft has the learner; the new metadata leader recovers.
	v := RecordedView(mm.st, 1)
	v.Voters, v.Learners = v.RecordedVoters, v.RecordedLearners
	v.LeaderNode, v.LeaderHint = 1, 1
	v.Progress = map[uint64]Progress{1: {Active: true, Replicating: true}, 2: {Active: true, Replicating: true}, 3: {Active: true, Replicating: true}}
	ns := NodeStatesOf(mm.st, func(n uint64) bool { return n == 4 })
	ds := Recover(Rows(mm.st), tStart.Add(time.Minute), ns, map[uint64]GroupView{1: v}, Config{})
	if len(ds) != 1 || ds[0].Action != Abort || ds[0].From != PhaseCatchUp {
		t.Fatalf("decisions %+v", ds)
	}
	mm.apply(ds[0].Entry())
	mm.apply(ds[0].Entry()) // retried: a no-op
	// A coordinator that read the row before the abort cannot advance it.
	mm.refused(Step{Kind: StepAdvance, From: PhaseCatchUp, Phase: PhaseTransferLeader, Move: m}.Entry(id, 1), metapb.Code_CODE_CHECKPOINT_CONFLICT)
	mm.refused(meta.NewRemoveReplica(1, m.Learner), metapb.Code_CODE_CONFLICT)
	// The executor: Next over the aborting row, until it deletes it.
	for range 5 {
		phase, row, attempt := mm.row(id)
		s := Next(row, phase, v)
		switch s.Kind {
		case StepCompensate:
			if s.Compensation.Kind != RestoreLeaderHint { // Raft removes the learner first
				v.Learners = nil
			}
			mm.apply(s.Entry(id, attempt))
			rv := RecordedView(mm.st, 1)
			v.RecordedVoters, v.RecordedLearners, v.LeaderHint = rv.RecordedVoters, rv.RecordedLearners, rv.LeaderHint
			continue
		case StepDelete:
			mm.apply(s.Entry(id, attempt))
		default:
			t.Fatalf("step %v", s)
		}
		break
	}
	if len(mm.st.GetMigrations()) != 0 || meta.ReplicaOnNode(mm.st.GetGroups()[1], 4) != nil {
		t.Fatalf("rows %v, group %v", mm.st.GetMigrations(), mm.st.GetGroups()[1])
	}
	mm.apply(meta.NewAddReplica(1, 4, metapb.Role_ROLE_LEARNER)) // repair (here on the same node, had it come back)
}
