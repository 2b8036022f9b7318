package migrate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

const (
	// PayloadVersion is the only replica-move payload version.
	PayloadVersion = 1
	// MaxPayloadBytes bounds an encoded payload; DecodeReplicaMove checks it
	// before decoding.
	MaxPayloadBytes = 4096
	// MaxLastErrorBytes bounds ReplicaMove.LastError (WithError clips).
	MaxLastErrorBytes = 256
)

// ReplicaMove is a replica move's checkpoint payload: JSON, so that
// `migrations` can show it as is, in one canonical encoding (Encode), which
// DecodeReplicaMove insists on.
type ReplicaMove struct {
	// Version is PayloadVersion.
	Version uint32 `json:"v"`
	// Group is the data group whose replica moves (never 0: the metadata
	// group's membership is its leader's business).
	Group uint64 `json:"group"`
	// From is the node losing its voter, To the node gaining one.
	From uint64 `json:"from"`
	To   uint64 `json:"to"`
	// Outgoing is From's replica ID when the move started.
	Outgoing uint64 `json:"outgoing_replica"`
	// Learner is the replica ID allocated on To, 0 until the checkpoint
	// after AddReplica records it. To held no replica of the group when the
	// move started (NewReplicaMove checks), so any replica on To is the
	// move's: that is how a crash before the ID was recorded is resumed.
	Learner uint64 `json:"learner_replica"`
	// LeaderAtStart is the group's leader hint (a node) when the move
	// started, 0 if unknown: what an abort restores.
	LeaderAtStart uint64 `json:"leader_at_start"`
	// StartedUnixNanos is when the move started; the abort timeout counts
	// from it.
	StartedUnixNanos int64 `json:"started_unix_nanos"`
	// LastError is the last failure the executor met in the current phase
	// (or why the move is aborting), for `migrations`.
	LastError string `json:"last_error"`
}

// Started is StartedUnixNanos as a time.
func (m ReplicaMove) Started() time.Time { return time.Unix(0, m.StartedUnixNanos) }

// Encode returns the payload's canonical bytes.
func (m ReplicaMove) Encode() []byte {
	b, err := json.Marshal(m)
	if err != nil { // a struct of integers and a string: cannot happen
		panic(fmt.Sprintf("migrate: encode replica move: %v", err))
	}
	return b
}

// WithError returns m with LastError set to msg, made valid UTF-8 and
// clipped to MaxLastErrorBytes.
func (m ReplicaMove) WithError(msg string) ReplicaMove {
	msg = strings.ToValidUTF8(msg, "?")
	if len(msg) > MaxLastErrorBytes {
		i := MaxLastErrorBytes
		for i > 0 && !utf8.RuneStart(msg[i]) {
			i--
		}
		msg = msg[:i]
	}
	m.LastError = msg
	return m
}

// Validate checks every field on its own.
func (m ReplicaMove) Validate() error {
	bad := func(format string, args ...any) error {
		return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "replica move: "+format, args...)
	}
	switch {
	case m.Version != PayloadVersion:
		return errorf(metapb.Code_CODE_UNSUPPORTED_VERSION, "replica move: payload version %d, this node reads version %d", m.Version, PayloadVersion)
	case m.Group == 0:
		return bad("group 0 is the metadata group; only data groups move replicas")
	case m.From == 0 || m.To == 0:
		return bad("from node %d, to node %d: node 0 does not exist", m.From, m.To)
	case m.From == m.To:
		return bad("from and to are both node %d", m.From)
	case m.Outgoing == 0:
		return bad("outgoing replica is 0")
	case m.Learner != 0 && m.Learner == m.Outgoing:
		return bad("learner and outgoing replica are both %d", m.Learner)
	case m.LeaderAtStart == m.To:
		return bad("leader at start is the target node %d, which held no replica", m.To)
	case m.StartedUnixNanos <= 0:
		return bad("start time %d", m.StartedUnixNanos)
	case len(m.LastError) > MaxLastErrorBytes:
		return bad("last error is %d bytes, at most %d", len(m.LastError), MaxLastErrorBytes)
	case !utf8.ValidString(m.LastError):
		return bad("last error is not UTF-8")
	}
	return nil
}

// ValidateForPhase checks m and that it fits phase: every phase after
// add_learner knows its learner.
func ValidateForPhase(m ReplicaMove, phase Phase) error {
	if !phase.Valid() {
		return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "replica move: unknown phase %v", phase)
	}
	if err := m.Validate(); err != nil {
		return err
	}
	if m.Learner == 0 && phase != PhaseAddLearner && phase != PhaseAborting {
		return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "replica move: phase %s without a learner replica", phase)
	}
	return nil
}

// DecodeReplicaMove decodes and validates a payload. Anything but the
// canonical encoding of a valid ReplicaMove (unknown or missing fields,
// duplicate keys, other spacing, trailing bytes, a wrong version) is a typed
// *Error (CODE_TOO_LARGE, CODE_MALFORMED, CODE_UNSUPPORTED_VERSION or
// CODE_INVALID_ARGUMENT). It never panics and allocates at most in
// proportion to MaxPayloadBytes.
func DecodeReplicaMove(payload []byte) (ReplicaMove, error) {
	if len(payload) > MaxPayloadBytes {
		return ReplicaMove{}, errorf(metapb.Code_CODE_TOO_LARGE, "replica move payload is %d bytes, at most %d", len(payload), MaxPayloadBytes)
	}
	var m ReplicaMove
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return ReplicaMove{}, errorf(metapb.Code_CODE_MALFORMED, "replica move payload: %v", err)
	}
	if err := m.Validate(); err != nil {
		return ReplicaMove{}, err
	}
	if !bytes.Equal(m.Encode(), payload) {
		return ReplicaMove{}, errorf(metapb.Code_CODE_MALFORMED, "replica move payload is not in canonical form")
	}
	return m, nil
}

// Checkpoint returns the row for move id at phase and attempt, checksum
// filled in. Every phase but complete holds the move's group (fence_group):
// from the first row to the last compensation, the metadata group refuses
// membership changes of the group that do not carry the move's ID
// (meta.WithMigration), so placement cannot fight the move. The complete
// row is written in the Batch that records the new membership, and
// releases the group.
func Checkpoint(id string, phase Phase, attempt uint32, m ReplicaMove) *metapb.Checkpoint {
	return meta.NewFencingCheckpoint(id, metapb.MigrationKind_MIGRATION_KIND_REPLICA_MOVE, phase.String(), attempt, m.Encode(), fenceOf(phase, m))
}

// fenceOf is the group a row at phase holds.
func fenceOf(phase Phase, m ReplicaMove) uint64 {
	if phase == PhaseComplete {
		return 0
	}
	return m.Group
}

// StartEntry is the entry that starts move m (NewReplicaMove): its first
// row, at add_learner attempt 1, written only if no row has its ID
// (CHECKPOINT_CONFLICT otherwise) and only if no other migration holds the
// group (CONFLICT).
func StartEntry(m ReplicaMove) *metapb.Entry {
	return meta.NewPutCheckpointIf(Checkpoint(MoveID(m), PhaseAddLearner, 1, m), meta.ExpectAbsent())
}

// MoveID is a migration ID for m: "rm-g<group>-<start nanos>".
func MoveID(m ReplicaMove) string {
	return fmt.Sprintf("rm-g%d-%d", m.Group, m.StartedUnixNanos)
}

// ParseRow checks a row (checksum, kind, phase, payload, and the group it
// holds: the move's group in every phase, or none at complete) and returns
// its phase and move. A row that fails is to be quarantined: reported,
// never acted on. The error is typed: errors.Is(err, meta.ErrBadChecksum)
// for a checksum that does not match. Rows read from a state should come
// from Rows, which also catches a row stored under a key other than its ID.
func ParseRow(c *metapb.Checkpoint) (Phase, ReplicaMove, error) {
	if c == nil {
		return PhaseUnknown, ReplicaMove{}, errorf(metapb.Code_CODE_INVALID_ARGUMENT, "no row")
	}
	if want := meta.CheckpointCRC(c); c.GetCrc32C() != want {
		return PhaseUnknown, ReplicaMove{}, errorf(metapb.Code_CODE_BAD_CHECKSUM, "row %q phase %q attempt %d: crc32c %08x, the row's bytes give %08x", c.GetId(), c.GetPhase(), c.GetAttempt(), c.GetCrc32C(), want)
	}
	if k := c.GetKind(); k != metapb.MigrationKind_MIGRATION_KIND_REPLICA_MOVE {
		return PhaseUnknown, ReplicaMove{}, errorf(metapb.Code_CODE_INVALID_ARGUMENT, "row %q is a %v, not a replica move", c.GetId(), k)
	}
	phase, ok := ParsePhase(c.GetPhase())
	if !ok {
		return PhaseUnknown, ReplicaMove{}, errorf(metapb.Code_CODE_INVALID_ARGUMENT, "row %q: unknown phase %q", c.GetId(), c.GetPhase())
	}
	m, err := DecodeReplicaMove(c.GetPayload())
	if err == nil {
		err = ValidateForPhase(m, phase)
	}
	if g := c.GetFenceGroup(); err == nil && g != fenceOf(phase, m) && (phase != PhaseComplete || g != m.Group) {
		err = errorf(metapb.Code_CODE_INVALID_ARGUMENT, "a %s row of a move of group %d holds group %d", phase, m.Group, g)
	}
	if err != nil {
		return phase, ReplicaMove{}, prefix(err, "row %q", c.GetId())
	}
	return phase, m, nil
}

// prefix adds context to a typed error, keeping its code.
func prefix(err error, format string, args ...any) error {
	var e *Error
	if !errors.As(err, &e) {
		return fmt.Errorf(format+": %w", append(args, err)...)
	}
	return &Error{Code: e.Code, Msg: fmt.Sprintf(format, args...) + ": " + e.Msg}
}
