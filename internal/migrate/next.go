package migrate

import (
	"fmt"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

const (
	// DefaultCatchUpMaxLag is how many entries behind the leader's commit
	// index a learner may be and still count as caught up.
	DefaultCatchUpMaxLag = 64
	// DefaultAbortTimeout is how long a move may run before recovery
	// aborts it (if it is still before its point of no return).
	DefaultAbortTimeout = time.Hour
)

// Config tunes the decisions; zero fields take the defaults.
type Config struct {
	// CatchUpMaxLag: a learner is caught up when the leader replicates to
	// it and its match index is at most this far behind the commit index.
	CatchUpMaxLag uint64
	// AbortTimeout: a move older than this (since its start) is aborted
	// by recovery unless it is past its point of no return.
	AbortTimeout time.Duration
}

func (c Config) withDefaults() Config {
	if c.CatchUpMaxLag == 0 {
		c.CatchUpMaxLag = DefaultCatchUpMaxLag
	}
	if c.AbortTimeout <= 0 {
		c.AbortTimeout = DefaultAbortTimeout
	}
	return c
}

// StepKind is what the executor does next.
type StepKind uint8

const (
	// StepWait: nothing to do until the group changes (Reason; Lag while a
	// learner catches up). Observe again later.
	StepWait StepKind = iota + 1
	// StepAdvance: the current phase's effect is observed in Raft; write
	// the row at Phase with Move (Entry). This is how a crash between a Raft
	// change and its checkpoint is resumed: the change is not redone.
	StepAdvance
	// StepAddLearner: add replica Replica on node Node as a learner. With
	// Replica 0, first propose the metadata AddReplica (Entry), which
	// allocates the ID (Result.replica_id); then the Raft change
	// AddLearner(ID, Node). Additions are recorded first.
	StepAddLearner
	// StepTransferLeader: transfer the group's leadership to replica
	// Replica on node Node (a voter that stays): the outgoing voter leads.
	StepTransferLeader
	// StepReplace: one Raft configuration change: promote learner Replica
	// (if Promote) and remove replica Remove (if not 0); joint consensus
	// when both. Raft first; the record follows (StepRecord).
	StepReplace
	// StepRecord: Raft has left the joint configuration with the learner
	// a voter and the outgoing replica gone; record it and complete the
	// move in one metadata Batch: PromoteReplica(Replica),
	// RemoveReplica(Remove), the complete row (Entry).
	StepRecord
	// StepAbort: the move cannot go on (Reason) and is before its point of
	// no return: write the row at aborting (Entry), then compensate.
	StepAbort
	// StepCompensate: execute Compensation (its Raft part, then its Entry).
	StepCompensate
	// StepDelete: the move is over (complete, or aborted with every
	// compensation done): delete the row (Entry).
	StepDelete
	// StepInvalid: the move or phase is invalid (Err); report, do nothing.
	StepInvalid
)

func (k StepKind) String() string {
	switch k {
	case StepWait:
		return "wait"
	case StepAdvance:
		return "advance"
	case StepAddLearner:
		return "add-learner"
	case StepTransferLeader:
		return "transfer-leader"
	case StepReplace:
		return "replace"
	case StepRecord:
		return "record"
	case StepAbort:
		return "abort"
	case StepCompensate:
		return "compensate"
	case StepDelete:
		return "delete"
	case StepInvalid:
		return "invalid"
	}
	return fmt.Sprintf("StepKind(%d)", int(k))
}

// Step is the executor's next action for one move.
type Step struct {
	Kind StepKind
	// From is the row's phase Next decided from: the writes of Entry and
	// ErrorEntry expect the stored row at From (and the attempt they are
	// given), so a step decided from a stale read is refused
	// (CHECKPOINT_CONFLICT) rather than moving the row backwards or past
	// another coordinator's write. Next sets it; a Step built by hand must.
	From Phase
	// Phase is the phase to write (Advance), else the row's phase.
	Phase Phase
	// Move is the payload: the row's, with the learner filled in once
	// known; the one Advance, Record and Abort write.
	Move ReplicaMove
	// Replica and Node: AddLearner (the learner, 0 to allocate, on the
	// target), TransferLeader (the new leader), Replace and Record (the
	// learner).
	Replica, Node uint64
	// Promote and Remove: Replace (promote the learner; remove this
	// replica, 0 for none) and Record (the outgoing replica).
	Promote bool
	Remove  uint64
	// Compensation is Compensate's.
	Compensation Compensation
	// Lag is the learner's lag behind the commit index while waiting for
	// it to catch up.
	Lag uint64
	// Reason says why (Wait, Abort), in words for logs and `migrations`.
	Reason string
	// Err is Invalid's typed error.
	Err error
}

func (s Step) String() string {
	switch s.Kind {
	case StepWait:
		if s.Lag > 0 {
			return fmt.Sprintf("wait: %s (lag %d)", s.Reason, s.Lag)
		}
		return "wait: " + s.Reason
	case StepAdvance:
		return "advance to " + s.Phase.String()
	case StepAddLearner:
		return fmt.Sprintf("add learner %d on node %d", s.Replica, s.Node)
	case StepTransferLeader:
		return fmt.Sprintf("transfer leadership to replica %d on node %d", s.Replica, s.Node)
	case StepReplace:
		return fmt.Sprintf("replace: promote %d (%v), remove %d", s.Replica, s.Promote, s.Remove)
	case StepRecord:
		return fmt.Sprintf("record: voter %d, removed %d", s.Replica, s.Remove)
	case StepAbort:
		return "abort: " + s.Reason
	case StepCompensate:
		return "compensate: " + s.Compensation.String()
	case StepDelete:
		return "delete row"
	case StepInvalid:
		return fmt.Sprintf("invalid: %v", s.Err)
	}
	return s.Kind.String()
}

// Entry is the metadata entry the step proposes for move id, whose row the
// executor read at attempt (and at phase From):
//
//   - Advance, Abort: the row at the new phase (same attempt), written only
//     if the row is still at From and attempt;
//   - AddLearner with Replica 0: the AddReplica that allocates the learner;
//   - Record: one Batch: PromoteReplica, RemoveReplica, and the complete row
//     (conditional, as Advance), which releases the group;
//   - Compensate: the compensation's record;
//   - Delete: the row's deletion, only if it is still at From and attempt;
//   - nil for the steps that are Raft only (or Wait, Invalid).
//
// Membership entries carry the move's ID (meta.WithMigration): the row
// holds the group, and the metadata group refuses changes to it that are
// not the move's.
func (s Step) Entry(id string, attempt uint32) *metapb.Entry {
	g := s.Move.Group
	put := func(c *metapb.Checkpoint) *metapb.Entry {
		return meta.NewPutCheckpointIf(c, expectRow(s.From, attempt))
	}
	switch s.Kind {
	case StepAdvance:
		return put(Checkpoint(id, s.Phase, attempt, s.Move))
	case StepAbort:
		return put(Checkpoint(id, PhaseAborting, attempt, s.Move.WithError(s.Reason)))
	case StepAddLearner:
		if s.Replica == 0 {
			return meta.WithMigration(id, meta.NewAddReplica(g, s.Node, metapb.Role_ROLE_LEARNER))
		}
	case StepRecord:
		es := []*metapb.Entry{meta.WithMigration(id, meta.NewPromoteReplica(g, s.Replica))}
		if s.Remove != 0 {
			es = append(es, meta.WithMigration(id, meta.NewRemoveReplica(g, s.Remove)))
		}
		es = append(es, put(Checkpoint(id, PhaseComplete, attempt, s.Move)))
		return meta.NewBatch(es...)
	case StepCompensate:
		return s.Compensation.Entry(id)
	case StepDelete:
		return meta.NewDeleteCheckpointIf(id, expectRow(s.From, attempt))
	}
	return nil
}

// ErrorEntry records msg as the last error of move id's current phase (the
// executor failed to carry out s): the row at From and attempt, rewritten
// in place with the step's move and LastError msg, if it is still at From
// and attempt. The metadata group replaces the payload of a row whose
// phase and attempt are unchanged, so the failure shows in `migrations`
// without a new attempt.
func (s Step) ErrorEntry(id string, attempt uint32, msg string) *metapb.Entry {
	return meta.NewPutCheckpointIf(Checkpoint(id, s.From, attempt, s.Move.WithError(msg)), expectRow(s.From, attempt))
}

// expectRow is the expectation of a write decided from a row at phase and
// attempt. An unknown phase expects the empty phase, which the metadata
// group refuses for a put (INVALID_ARGUMENT) and takes as "any phase" for a
// delete: a Step without From is a bug.
func expectRow(phase Phase, attempt uint32) *metapb.CheckpointExpectation {
	name := ""
	if phase.Valid() {
		name = phase.String()
	}
	return meta.ExpectRow(name, attempt)
}

// Next decides the next step of move m, whose row is at phase, from the
// observed group v, with the default Config.
func Next(m ReplicaMove, phase Phase, v GroupView) Step { return Config{}.Next(m, phase, v) }

// Next decides the next step of move m, whose row is at phase, from the
// observed group v. It is idempotent: a step whose effect v already shows
// is never returned again; the checkpoint is advanced instead. Per phase:
//
//   - add_learner: AddLearner (allocating the ID if no replica is on the
//     target; the Raft half only if the record has it); Advance to
//     catch_up once Raft has the learner.
//   - catch_up: Wait while the leader's progress shows the learner behind
//     (not replicating, or more than CatchUpMaxLag entries behind the
//     commit index); Advance to transfer_leader when caught up.
//   - transfer_leader: TransferLeader while the outgoing node leads;
//     Advance to promote once it does not.
//   - promote: TransferLeader if the outgoing node leads again; Wait if the
//     learner fell behind or another joint configuration is in progress;
//     else Replace. Once Raft shows the replace (past the point of no
//     return): Wait while joint, then Record (which writes complete).
//   - complete: Delete.
//   - aborting: the first Compensation not done (after a TransferLeader
//     if the replica it removes leads), then Delete. If Raft shows
//     the move past its point of no return (the abort lost the race with
//     an in-flight promote), Advance to promote: only forward.
//
// In every phase: a learner the record has but Raft lacks is re-added to
// Raft; a learner that vanished from both aborts the move; a move past its
// point of no return is taken to promote; no leader, or a configuration
// change pending, means Wait.
func (c Config) Next(m ReplicaMove, phase Phase, v GroupView) Step {
	s := c.next(m, phase, v)
	s.From = phase
	return s
}

func (c Config) next(m ReplicaMove, phase Phase, v GroupView) Step {
	c = c.withDefaults()
	if err := ValidateForPhase(m, phase); err != nil {
		return Step{Kind: StepInvalid, Phase: phase, Move: m, Err: err}
	}
	if phase == PhaseComplete {
		return Step{Kind: StepDelete, Phase: phase, Move: m}
	}
	wait := func(reason string) Step { return Step{Kind: StepWait, Phase: phase, Move: m, Reason: reason} }
	switch {
	case v.LeaderNode == 0:
		return wait("the group has no known leader")
	case v.ConfChangePending:
		return wait("a configuration change is being applied")
	}
	l := learnerOf(m, v)
	if passedNoReturn(m, v) {
		m.Learner = l
		if phase != PhasePromote {
			m.LastError = ""
			return Step{Kind: StepAdvance, Phase: PhasePromote, Move: m}
		}
		if v.Joint() {
			return wait("Raft is leaving the joint configuration")
		}
		if has(v.RecordedVoters, l) && !v.recorded(m.Outgoing) {
			m.LastError = ""
			return Step{Kind: StepAdvance, Phase: PhaseComplete, Move: m}
		}
		return Step{Kind: StepRecord, Phase: phase, Move: m, Replica: l, Remove: m.Outgoing}
	}
	if phase == PhaseAborting {
		for _, comp := range Compensations(m, v) {
			if CompensationDone(comp, v) {
				continue
			}
			if comp.Kind != RestoreLeaderHint && v.LeaderNode == m.To {
				// Never remove the leader (a leader unknown at the start
				// has nothing to restore it to): move it off first.
				t, ok := v.transferTarget(m.To, m.To)
				if !ok {
					return wait("the replica to remove leads and no other voter can take over")
				}
				return Step{Kind: StepTransferLeader, Phase: phase, Move: m, Replica: t.Replica, Node: t.Node}
			}
			return Step{Kind: StepCompensate, Phase: phase, Move: m, Compensation: comp}
		}
		return Step{Kind: StepDelete, Phase: phase, Move: m}
	}

	// Forward phases before the point of no return. First, the learner.
	switch {
	case l == 0:
		return Step{Kind: StepAddLearner, Phase: phase, Move: m, Node: m.To}
	case !v.inRaft(l) && v.recorded(l):
		m.Learner = l
		return Step{Kind: StepAddLearner, Phase: phase, Move: m, Replica: l, Node: m.To}
	case !v.inRaft(l):
		return Step{Kind: StepAbort, Phase: phase, Move: m, Reason: fmt.Sprintf("learner replica %d on node %d is gone", l, m.To)}
	}
	m.Learner = l
	advance := func(p Phase) Step {
		m.LastError = ""
		return Step{Kind: StepAdvance, Phase: p, Move: m}
	}
	lag, caught := v.lag(l, c.CatchUpMaxLag)
	if has(v.Voters, l) { // promoted outside the move: nothing to catch up
		lag, caught = 0, true
	}
	transfer := func() Step {
		t, ok := v.transferTarget(m.From, m.To)
		if !ok {
			return wait("the outgoing node leads and no voter that stays can take over")
		}
		return Step{Kind: StepTransferLeader, Phase: phase, Move: m, Replica: t.Replica, Node: t.Node}
	}
	switch phase {
	case PhaseAddLearner:
		return advance(PhaseCatchUp)
	case PhaseCatchUp:
		if !caught {
			s := wait("the learner is catching up")
			s.Move, s.Lag = m, lag
			return s
		}
		return advance(PhaseTransferLeader)
	case PhaseTransferLeader:
		if v.LeaderNode == m.From {
			return transfer()
		}
		return advance(PhasePromote)
	}
	// PhasePromote.
	switch {
	case v.LeaderNode == m.From:
		return transfer()
	case !caught:
		s := wait("the learner fell behind")
		s.Move, s.Lag = m, lag
		return s
	case v.Joint():
		return wait("another joint configuration is in progress")
	}
	var remove uint64
	if has(v.Voters, m.Outgoing) || has(v.Learners, m.Outgoing) {
		remove = m.Outgoing
	}
	return Step{Kind: StepReplace, Phase: phase, Move: m, Replica: l, Promote: has(v.Learners, l), Remove: remove}
}
