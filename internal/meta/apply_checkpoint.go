package meta

import (
	"bytes"

	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

// putCheckpoint writes a migration's row. The row's CRC32C was checked
// before (validateEntry: ErrBadChecksum, nothing changes). In order:
//
//   - a stored row that is quarantined (VerifyCheckpoint) is never
//     overwritten (its own code, BAD_CHECKSUM for a checksum mismatch): a
//     coordinator must not resume from, nor paper over, a row nobody can
//     trust; an unconditional DeleteCheckpoint clears it;
//   - the row already stored, identical (kind, phase, attempt, payload,
//     fence group), is a no-op whatever the expectation says, so a
//     coordinator may retry a write whose outcome it did not learn;
//   - the expectation, if any, must match the stored row (absent, or its
//     phase and attempt): CHECKPOINT_CONFLICT otherwise, so that of two
//     coordinators that read the same row only one advances it, and a
//     coordinator working from a stale read cannot move it backwards;
//   - a row may not change its kind nor go back to an earlier attempt
//     (CHECKPOINT_CONFLICT: a coordinator that lost its turn);
//   - a fence group must exist (UNKNOWN_GROUP) and not be held by another
//     sound row (CONFLICT: one migration per group);
//   - otherwise the row is stored, timestamped now. The same (id, phase,
//     attempt) with another payload replaces the payload: that is how a
//     coordinator records the last error of a phase without starting a new
//     attempt. It is safe because the phase and attempt, which order a
//     migration, do not change; the payload of a phase is the writer's
//     latest word on it (a retried older write can at worst bring back an
//     older last error); and a writer that must not lose a race writes
//     conditionally.
func (a *applier) putCheckpoint(x *metapb.PutCheckpoint) error {
	c := x.GetCheckpoint()
	id := c.GetId()
	old := a.st.Migrations[id]
	if old != nil {
		if err := VerifyCheckpoint(id, old); err != nil {
			return wrap(err, "put checkpoint %q: the stored row is quarantined (delete it unconditionally)", id)
		}
		if sameRow(old, c) {
			return nil
		}
	}
	if err := checkExpect("put checkpoint", id, old, x.GetExpect()); err != nil {
		return err
	}
	if old != nil {
		switch {
		case old.GetKind() != c.GetKind():
			return errorf(metapb.Code_CODE_CHECKPOINT_CONFLICT, "put checkpoint %q: the migration is a %v, not a %v", id, old.GetKind(), c.GetKind())
		case c.GetAttempt() < old.GetAttempt():
			return errorf(metapb.Code_CODE_CHECKPOINT_CONFLICT, "put checkpoint %q: attempt %d is older than the stored attempt %d", id, c.GetAttempt(), old.GetAttempt())
		}
	}
	if g := c.GetFenceGroup(); g != 0 {
		if a.st.Groups[g] == nil {
			return errorf(metapb.Code_CODE_UNKNOWN_GROUP, "put checkpoint %q: it would hold group %d, which does not exist", id, g)
		}
		if other, ok := GroupFence(a.st, g); ok && other != id {
			return errorf(metapb.Code_CODE_CONFLICT, "put checkpoint %q: group %d is held by migration %q", id, g, other)
		}
	}
	a.st.Migrations[id] = &metapb.Checkpoint{
		Id:                 id,
		Kind:               c.GetKind(),
		Phase:              c.GetPhase(),
		Attempt:            c.GetAttempt(),
		Payload:            bytes.Clone(c.GetPayload()),
		Crc32C:             c.GetCrc32C(),
		TimestampUnixNanos: a.now,
		FenceGroup:         c.GetFenceGroup(),
	}
	a.emit(CheckpointChanged{ID: id, Phase: c.GetPhase(), Attempt: c.GetAttempt()})
	return nil
}

// sameRow reports whether two rows have the same checksummed content.
func sameRow(a, b *metapb.Checkpoint) bool {
	return a.GetKind() == b.GetKind() && a.GetPhase() == b.GetPhase() && a.GetAttempt() == b.GetAttempt() &&
		a.GetFenceGroup() == b.GetFenceGroup() && bytes.Equal(a.GetPayload(), b.GetPayload())
}

// checkExpect checks a conditional write's expectation against the stored
// row old (nil: none stored). A nil expectation always matches.
func checkExpect(what, id string, old *metapb.Checkpoint, want *metapb.CheckpointExpectation) error {
	switch {
	case want == nil:
		return nil
	case want.GetAbsent() && old != nil:
		return errorf(metapb.Code_CODE_CHECKPOINT_CONFLICT, "%s %q: expected no row, the stored row is at phase %q attempt %d", what, id, old.GetPhase(), old.GetAttempt())
	case want.GetAbsent():
		return nil
	case old == nil:
		return errorf(metapb.Code_CODE_CHECKPOINT_CONFLICT, "%s %q: expected the row at phase %q attempt %d, no row is stored", what, id, want.GetPhase(), want.GetAttempt())
	case want.GetPhase() != "" && want.GetPhase() != old.GetPhase(), want.GetAttempt() != old.GetAttempt():
		return errorf(metapb.Code_CODE_CHECKPOINT_CONFLICT, "%s %q: expected the row at phase %q attempt %d, it is at phase %q attempt %d", what, id, want.GetPhase(), want.GetAttempt(), old.GetPhase(), old.GetAttempt())
	}
	return nil
}

// deleteCheckpoint removes a finished or aborted migration's row; an absent
// row is a no-op (a retried deletion). With an expectation, the stored row
// must be sound (a quarantined row is refused with its own code) and match
// it (CHECKPOINT_CONFLICT); without one, any row goes, a quarantined one
// included: that is how an operator clears it.
func (a *applier) deleteCheckpoint(x *metapb.DeleteCheckpoint) error {
	id := x.GetId()
	old, ok := a.st.Migrations[id]
	if !ok {
		return nil
	}
	if want := x.GetExpect(); want != nil {
		if err := VerifyCheckpoint(id, old); err != nil {
			return wrap(err, "delete checkpoint %q: the stored row is quarantined (delete it unconditionally)", id)
		}
		if err := checkExpect("delete checkpoint", id, old, want); err != nil {
			return err
		}
	}
	delete(a.st.Migrations, id)
	a.emit(CheckpointChanged{ID: id, Deleted: true})
	return nil
}
