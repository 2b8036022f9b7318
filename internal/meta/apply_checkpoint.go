package meta

import (
	"bytes"

	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

// putCheckpoint writes a migration's row at a phase boundary. The row's
// CRC32C was checked before (validateEntry: ErrBadChecksum, nothing
// changes). Writing the same (id, phase, attempt) again is a no-op, so a
// coordinator may retry a checkpoint whose outcome it did not learn. A row
// may not change its kind, nor go back to an earlier attempt: that is a
// coordinator that lost its turn to a newer one (ErrCheckpointConflict).
// The row's timestamp is the entry's.
func (a *applier) putCheckpoint(c *metapb.Checkpoint) error {
	id := c.GetId()
	if old := a.st.Migrations[id]; old != nil {
		switch {
		case old.GetKind() != c.GetKind():
			return errorf(metapb.Code_CODE_CHECKPOINT_CONFLICT, "put checkpoint %q: the migration is a %v, not a %v", id, old.GetKind(), c.GetKind())
		case c.GetAttempt() < old.GetAttempt():
			return errorf(metapb.Code_CODE_CHECKPOINT_CONFLICT, "put checkpoint %q: attempt %d is older than the stored attempt %d", id, c.GetAttempt(), old.GetAttempt())
		case old.GetPhase() == c.GetPhase() && old.GetAttempt() == c.GetAttempt():
			return nil
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
	}
	a.emit(CheckpointChanged{ID: id, Phase: c.GetPhase(), Attempt: c.GetAttempt()})
	return nil
}

// deleteCheckpoint removes a finished or aborted migration's row; an absent
// row is a no-op.
func (a *applier) deleteCheckpoint(id string) error {
	if _, ok := a.st.Migrations[id]; !ok {
		return nil
	}
	delete(a.st.Migrations, id)
	a.emit(CheckpointChanged{ID: id, Deleted: true})
	return nil
}
