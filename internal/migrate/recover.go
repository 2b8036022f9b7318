package migrate

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

// Action is what recovery does with a row.
type Action uint8

const (
	// Cleanup: the move completed; delete the row.
	Cleanup Action = iota + 1
	// Resume: run the move on from the row's phase (Next).
	Resume
	// Forward: the move is past its point of no return; run it on from
	// promote to completion, whatever its age, its target or an abort
	// begun earlier.
	Forward
	// Abort: write the row at aborting (unless it is), then execute
	// Compensations in order; delete the row once all have taken effect.
	Abort
	// Wait: the group has no usable observation (no leader, or a
	// configuration change not yet applied): decide again on a later pass.
	Wait
	// Quarantine: the row's checksum, phase or payload is bad (Err): report
	// it; do not act on it. An operator deletes it (`migrations abort ID`).
	Quarantine
)

func (a Action) String() string {
	switch a {
	case Cleanup:
		return "cleanup"
	case Resume:
		return "resume"
	case Forward:
		return "forward"
	case Abort:
		return "abort"
	case Wait:
		return "wait"
	case Quarantine:
		return "quarantine"
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// Decision is recovery's verdict on one row.
type Decision struct {
	ID     string
	Action Action
	// Phase is the phase to run from: the row's, promote for Forward,
	// aborting for Abort; PhaseUnknown for a Quarantine whose phase did not
	// parse.
	Phase Phase
	// From is the row's phase as stored (PhaseUnknown if it did not parse)
	// and Attempt its attempt: what Entry's writes expect.
	From    Phase
	Attempt uint32
	// Move is the row's payload (zero for a Quarantine).
	Move ReplicaMove
	// Age is how long ago the move started (0 if unknown or in the future).
	Age time.Duration
	// Reason says why, in words.
	Reason string
	// Compensations are an Abort's, in execution order.
	Compensations []Compensation
	// Err is a Quarantine's typed error (*Error: errors.Is(err,
	// meta.ErrBadChecksum) for a checksum mismatch).
	Err error
}

// Entry is the metadata entry that carries out the decision's first
// write: Cleanup's deletion of the row, and Abort's row at aborting (with
// the reason as its last error) when the row is not there yet, each only
// if the row is still at From and Attempt; nil otherwise (Resume and
// Forward go through Next; Quarantine waits for an operator, whose
// `migrations abort ID` deletes the row unconditionally).
func (d Decision) Entry() *metapb.Entry {
	s := Step{From: d.From, Move: d.Move, Reason: d.Reason}
	switch {
	case d.Action == Cleanup:
		s.Kind = StepDelete
	case d.Action == Abort && d.From != PhaseAborting:
		s.Kind = StepAbort
	default:
		return nil
	}
	return s.Entry(d.ID, d.Attempt)
}

func (d Decision) String() string {
	return fmt.Sprintf("%s %s (%s): %s", d.ID, d.Action, d.Phase, d.Reason)
}

// Recover decides what the new metadata leader does with every replica-move
// row (rows of other kinds are left alone), by ascending row ID. groups
// holds the executor's observation of each group (missing: not observed),
// nodes the node states. The table, first match wins:
//
//	row checksum does not match                → Quarantine (BAD_CHECKSUM)
//	kind is not a replica move                 → (not listed)
//	phase unknown, payload bad for the phase   → Quarantine
//	phase complete                             → Cleanup
//	group not observed, no leader,
//	  or a configuration change pending        → Wait
//	Raft shows the replace applied (past the
//	  point of no return)                      → Forward (from promote)
//	phase aborting                             → Abort
//	target unknown, not ACTIVE, or gone        → Abort
//	started more than AbortTimeout ago         → Abort
//	otherwise                                  → Resume (from the row's phase)
//
// Past the point of no return the target is a voter: if it is gone, the
// move is still complete from its own point of view, and repair replaces a
// dead voter like any other.
func Recover(rows []*metapb.Checkpoint, now time.Time, nodes NodeStates, groups map[uint64]GroupView, cfg Config) []Decision {
	cfg = cfg.withDefaults()
	sorted := slices.Clone(rows)
	slices.SortStableFunc(sorted, func(a, b *metapb.Checkpoint) int { return cmp.Compare(a.GetId(), b.GetId()) })
	var out []Decision
	for _, c := range sorted {
		if c == nil {
			continue
		}
		if d, ok := recoverRow(c, now, nodes, groups, cfg); ok {
			out = append(out, d)
		}
	}
	return out
}

func recoverRow(c *metapb.Checkpoint, now time.Time, nodes NodeStates, groups map[uint64]GroupView, cfg Config) (Decision, bool) {
	d := Decision{ID: c.GetId(), Attempt: c.GetAttempt()}
	phase, m, err := ParseRow(c)
	if err != nil {
		var e *Error
		notOurs := c.GetKind() != metapb.MigrationKind_MIGRATION_KIND_REPLICA_MOVE
		if asError(err, &e) && e.Code == metapb.Code_CODE_BAD_CHECKSUM {
			notOurs = false // a corrupted kind is still a corrupted row
		}
		if notOurs {
			return Decision{}, false
		}
		d.Action, d.Phase, d.From, d.Err, d.Reason = Quarantine, phase, phase, err, err.Error()
		return d, true
	}
	d.Phase, d.From, d.Move = phase, phase, m
	if age := now.Sub(m.Started()); age > 0 {
		d.Age = age
	}
	if phase == PhaseComplete {
		d.Action, d.Reason = Cleanup, "the move completed"
		return d, true
	}
	v, ok := groups[m.Group]
	switch {
	case !ok:
		d.Action, d.Reason = Wait, fmt.Sprintf("group %d was not observed", m.Group)
		return d, true
	case v.LeaderNode == 0:
		d.Action, d.Reason = Wait, fmt.Sprintf("group %d has no known leader", m.Group)
		return d, true
	case v.ConfChangePending:
		d.Action, d.Reason = Wait, fmt.Sprintf("group %d is applying a configuration change", m.Group)
		return d, true
	case passedNoReturn(m, v):
		d.Action, d.Phase, d.Reason = Forward, PhasePromote, "past the point of no return: Raft replaced the outgoing voter"
		return d, true
	}
	abort := func(reason string) (Decision, bool) {
		d.Action, d.Phase, d.Reason, d.Compensations = Abort, PhaseAborting, reason, Compensations(m, v)
		return d, true
	}
	if phase == PhaseAborting {
		reason := "the abort is in progress"
		if m.LastError != "" {
			reason += ": " + m.LastError
		}
		return abort(reason)
	}
	if p := nodes.targetProblem(m.To); p != "" {
		return abort(fmt.Sprintf("%s (node %d)", p, m.To))
	}
	if d.Age > cfg.AbortTimeout {
		return abort(fmt.Sprintf("started %v ago, more than the abort timeout %v", d.Age.Round(time.Second), cfg.AbortTimeout))
	}
	d.Action, d.Reason = Resume, "resume from "+phase.String()
	return d, true
}

// InFlight maps each group that has a replica-move row to the row's ID (the
// lowest, should there be several). A row counts whatever its phase or
// checksum as long as its payload decodes: until it is deleted, its group
// is busy. Rows whose payload does not decode name no group and are left
// out (they are quarantined).
func InFlight(rows []*metapb.Checkpoint) map[uint64]string {
	out := map[uint64]string{}
	for _, c := range rows {
		if c.GetKind() != metapb.MigrationKind_MIGRATION_KIND_REPLICA_MOVE {
			continue
		}
		m, err := DecodeReplicaMove(c.GetPayload())
		if err != nil {
			continue
		}
		if id, ok := out[m.Group]; !ok || c.GetId() < id {
			out[m.Group] = c.GetId()
		}
	}
	return out
}

// Conflict returns the ID of the row of a move of group in flight, if any:
// a new move of that group is refused (`conflict`) until it is gone.
func Conflict(rows []*metapb.Checkpoint, group uint64) (string, bool) {
	id, ok := InFlight(rows)[group]
	return id, ok
}
