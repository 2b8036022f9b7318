package migrate

import (
	"testing"

	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

// A new coordinator takes over an inherited row by writing it one attempt
// later; from then on the writes an earlier coordinator decided from the
// older attempt are refused, and the new one's go through.
func TestTakeoverFencesTheEarlierCoordinator(t *testing.T) {
	mm, m, id := startMetaMove(t)
	phase, _, attempt := mm.row(id)
	res := mm.apply(Step{Kind: StepAddLearner, From: phase, Move: m, Node: 4}.Entry(id, attempt))
	m.Learner = res.GetReplicaId()
	mm.apply(Step{Kind: StepAdvance, From: PhaseAddLearner, Phase: PhaseCatchUp, Move: m}.Entry(id, 1))

	d := Decision{ID: id, Action: Resume, Phase: PhaseCatchUp, From: PhaseCatchUp, Attempt: 1, Move: m}
	take := d.TakeoverEntry()
	mm.apply(take)
	mm.apply(take) // retried: the same row, a no-op
	if p, got, a := mm.row(id); p != PhaseCatchUp || a != 2 || got != m {
		t.Fatalf("after takeover: %v attempt %d %+v", p, a, got)
	}
	old := Step{Kind: StepAdvance, From: PhaseCatchUp, Phase: PhaseTransferLeader, Move: m}
	mm.refused(old.Entry(id, 1), metapb.Code_CODE_CHECKPOINT_CONFLICT)
	mm.refused(old.ErrorEntry(id, 1, "late"), metapb.Code_CODE_CHECKPOINT_CONFLICT)
	mm.apply(old.Entry(id, 2))
	if p, _, a := mm.row(id); p != PhaseTransferLeader || a != 2 {
		t.Fatalf("after the new coordinator's advance: %v attempt %d", p, a)
	}
	// A second takeover decided from the first's read is refused too.
	mm.refused(take, metapb.Code_CODE_CHECKPOINT_CONFLICT)

	// Abort: the row goes to aborting one attempt later, the reason kept.
	ab := Decision{ID: id, Action: Abort, Phase: PhaseAborting, From: PhaseTransferLeader, Attempt: 2, Move: m, Reason: "target node is gone (node 4)"}
	mm.apply(ab.TakeoverEntry())
	p, got, a := mm.row(id)
	if p != PhaseAborting || a != 3 || got.LastError != ab.Reason {
		t.Fatalf("after an abort takeover: %v attempt %d %+v", p, a, got)
	}
	// An abort in progress keeps its last error.
	ab2 := Decision{ID: id, Action: Abort, Phase: PhaseAborting, From: PhaseAborting, Attempt: 3, Move: got, Reason: "the abort is in progress"}
	mm.apply(ab2.TakeoverEntry())
	if p, got, a := mm.row(id); p != PhaseAborting || a != 4 || got.LastError != ab.Reason {
		t.Fatalf("after a second abort takeover: %v attempt %d %+v", p, a, got)
	}
}

func TestTakeoverEntryNilForOtherActions(t *testing.T) {
	m := move(1, 1, tL)
	for _, a := range []Action{Cleanup, Wait, Quarantine} {
		if e := (Decision{ID: "r", Action: a, From: PhaseComplete, Attempt: 1, Move: m}).TakeoverEntry(); e != nil {
			t.Errorf("%v: %v", a, e)
		}
	}
	if e := (Decision{ID: "r", Action: Resume, From: PhaseCatchUp, Attempt: ^uint32(0), Move: m}).TakeoverEntry(); e != nil {
		t.Errorf("attempt at its limit: %v", e)
	}
}
