package raftstore

import (
	"errors"
	"fmt"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

var (
	// ErrStopped is returned for work that the host could not finish because
	// it is stopping or has stopped.
	ErrStopped = errors.New("raftstore: host stopped")
	// ErrGroupNotFound is returned when this node holds no replica of a group.
	ErrGroupNotFound = errors.New("raftstore: group not found on this node")
	// ErrProposalDropped means the proposal was never appended to a log that
	// could commit it (Raft dropped it, or a new leader overwrote it). The
	// command was not applied: retrying is safe.
	ErrProposalDropped = errors.New("raftstore: proposal dropped; it was not applied")
	// ErrOutcomeUnknown means the caller stopped waiting before the outcome
	// was known: the command may or may not be applied. Retry with the same
	// client sequence to get exactly-once behaviour.
	ErrOutcomeUnknown = errors.New("raftstore: outcome unknown")
	// ErrTooLarge is returned for a proposal above the configured size limit.
	ErrTooLarge = errors.New("raftstore: proposal too large")
	// ErrStaleSequence is returned for a command whose client sequence is
	// below the client's acknowledged watermark: its exactly-once record is
	// already gone, so it is refused rather than applied a second time.
	ErrStaleSequence = errors.New("raftstore: client sequence below acknowledged watermark")
	// ErrConfChangeRejected is returned when a configuration change was
	// refused (another one in progress, or it failed validation).
	ErrConfChangeRejected = errors.New("raftstore: configuration change rejected")
	// ErrReplicaExists is returned when creating a replica that already exists.
	ErrReplicaExists = errors.New("raftstore: replica already exists")
	// ErrReplicaTombstoned is returned when creating a replica whose ID is
	// below the group's tombstone on this node: IDs are never reused.
	ErrReplicaTombstoned = errors.New("raftstore: replica ID was removed from this node")
	// ErrTransferAborted is returned when Raft abandoned a leadership
	// transfer: the target did not catch up within an election timeout, or
	// another replica was elected. Leadership is unchanged or elsewhere;
	// asking again is safe.
	ErrTransferAborted = errors.New("raftstore: leadership transfer abandoned")
	// ErrReadNotDone is returned by FinishRead for a read whose Done is
	// not closed yet: a caller's mistake, answered instead of blocking.
	ErrReadNotDone = errors.New("raftstore: read not done")
	// ErrProposalNotDone is returned by FinishPropose for a proposal whose
	// Done is not closed yet: a caller's mistake, answered instead of
	// blocking.
	ErrProposalNotDone = errors.New("raftstore: proposal not done")
)

// NotLeaderError is returned when a request that needs the leader reached
// another replica. Leader is zero when no leader is known.
type NotLeaderError struct {
	Group      ids.GroupID
	Leader     ids.ReplicaID
	LeaderNode ids.NodeID
}

func (e *NotLeaderError) Error() string {
	if e.Leader == 0 {
		return fmt.Sprintf("raftstore: %s has no known leader", e.Group)
	}
	return fmt.Sprintf("raftstore: not the leader of %s; leader is %s on %s", e.Group, e.Leader, e.LeaderNode)
}
