package migrate

import (
	"errors"
	"testing"

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

// Every step's metadata entry applies to a metadata state in which the
// move's situation holds, and does what the step says.
func TestStepEntries(t *testing.T) {
	m := move(1, 1, tL)
	id := MoveID(m)
	e := Step{Kind: StepAdvance, Phase: PhaseCatchUp, Move: m}.Entry(id, 3)
	c := e.GetPutCheckpoint().GetCheckpoint()
	if c.GetPhase() != "catch_up" || c.GetAttempt() != 3 || c.GetCrc32C() != meta.CheckpointCRC(c) || c.GetKind() != metapb.MigrationKind_MIGRATION_KIND_REPLICA_MOVE {
		t.Fatalf("advance entry %v", c)
	}
	if got, err := DecodeReplicaMove(c.GetPayload()); err != nil || got != m {
		t.Fatalf("payload %+v, %v", got, err)
	}
	e = Step{Kind: StepAbort, Move: m, Reason: "target gone"}.Entry(id, 3)
	c = e.GetPutCheckpoint().GetCheckpoint()
	if got, _ := DecodeReplicaMove(c.GetPayload()); c.GetPhase() != "aborting" || got.LastError != "target gone" {
		t.Fatalf("abort entry %v", c)
	}
	if e := (Step{Kind: StepAddLearner, Move: m, Node: tTo}).Entry(id, 1); e.GetAddReplica().GetNode() != tTo || e.GetAddReplica().GetGroup() != tg {
		t.Fatalf("add learner entry %v", e)
	}
	if e := (Step{Kind: StepAddLearner, Move: m, Replica: tL, Node: tTo}).Entry(id, 1); e != nil {
		t.Fatalf("Raft-only add learner has entry %v", e)
	}
	e = Step{Kind: StepRecord, Move: m, Replica: tL, Remove: 1}.Entry(id, 2)
	es := e.GetBatch().GetEntries()
	if len(es) != 3 || es[0].GetPromoteReplica().GetReplica() != tL || es[1].GetRemoveReplica().GetReplica() != 1 || es[2].GetPutCheckpoint().GetCheckpoint().GetPhase() != "complete" {
		t.Fatalf("record entry %v", e)
	}
	if e := (Step{Kind: StepDelete, Move: m}).Entry(id, 2); e.GetDeleteCheckpoint().GetId() != id {
		t.Fatalf("delete entry %v", e)
	}
	for _, k := range []StepKind{StepWait, StepTransferLeader, StepReplace, StepInvalid} {
		if e := (Step{Kind: k, Move: m}).Entry(id, 1); e != nil {
			t.Fatalf("%v has entry %v", k, e)
		}
	}
	if e := (Step{Kind: StepCompensate, Move: m, Compensation: Compensation{Kind: RestoreLeaderHint, Group: tg, Node: 1}}).Entry(id, 1); e.GetSetLeaderHint().GetNode() != 1 {
		t.Fatalf("restore entry %v", e)
	}
	if e := (Compensation{Kind: RemoveLearner, Group: tg, Node: tTo}).Entry(); e != nil {
		t.Fatalf("remove of an unknown replica has entry %v", e)
	}
}

// The metadata entries of a whole move, applied to a real metadata state
// with meta.Apply: the record ends with node 4 a voter instead of node 1,
// and no row.
func TestStepEntriesApplyToMetadata(t *testing.T) {
	st := metaCluster(t)
	now := tStart
	m, err := NewReplicaMove(st, 1, 1, 4, now)
	if err != nil {
		t.Fatal(err)
	}
	id := MoveID(m)
	apply := func(e *metapb.Entry) *metapb.Result {
		t.Helper()
		next, res, _, err := meta.Apply(st, e, now.UnixNano())
		if err != nil {
			t.Fatalf("apply %v: %v", e, err)
		}
		st = next
		return res
	}
	apply(meta.NewPutCheckpoint(Checkpoint(id, PhaseAddLearner, 1, m)))
	if _, err := NewReplicaMove(st, 1, 2, 4, now); !errors.Is(err, ErrConflict) {
		t.Fatalf("second move of the group: %v", err)
	}
	res := apply(Step{Kind: StepAddLearner, Move: m, Node: 4}.Entry(id, 1))
	m.Learner = res.GetReplicaId()
	apply(Step{Kind: StepAdvance, Phase: PhaseCatchUp, Move: m}.Entry(id, 1))
	apply(Step{Kind: StepAdvance, Phase: PhaseTransferLeader, Move: m}.Entry(id, 1))
	apply(Step{Kind: StepAdvance, Phase: PhasePromote, Move: m}.Entry(id, 1))
	apply(Step{Kind: StepRecord, Move: m, Replica: m.Learner, Remove: m.Outgoing}.Entry(id, 1))
	if c := st.GetMigrations()[id]; c.GetPhase() != "complete" {
		t.Fatalf("row %v", c)
	}
	apply(Step{Kind: StepDelete, Move: m}.Entry(id, 1))
	g := st.GetGroups()[1]
	if meta.ReplicaOnNode(g, 1) != nil || meta.ReplicaOnNode(g, 4).GetRole() != metapb.Role_ROLE_VOTER || len(st.GetMigrations()) != 0 {
		t.Fatalf("group %v, rows %v", g, st.GetMigrations())
	}
}
