package meta

import (
	"errors"
	"fmt"
	"strings"

	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

// Error is the typed refusal of an entry (or of bytes that do not decode).
// Code is what the proposer receives in the Result; Msg says why, with the
// context (entry kind, ids) needed to act on it.
//
// Use errors.As to get the code, or errors.Is with the sentinel of a code:
// any *Error is "Is" every *Error with the same Code.
type Error struct {
	Code metapb.Code
	Msg  string
}

func (e *Error) Error() string { return "meta: " + e.Msg }

// Is reports whether target is an *Error with the same code, so that
// errors.Is(err, ErrBadSecret) holds for every bad-secret refusal.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Sentinels, one per code, for errors.Is.
var (
	ErrInternal           = sentinel(metapb.Code_CODE_INTERNAL, "internal error")
	ErrInvalidArgument    = sentinel(metapb.Code_CODE_INVALID_ARGUMENT, "invalid argument")
	ErrUnsupportedVersion = sentinel(metapb.Code_CODE_UNSUPPORTED_VERSION, "unsupported version")
	ErrTooLarge           = sentinel(metapb.Code_CODE_TOO_LARGE, "too large")
	ErrMalformed          = sentinel(metapb.Code_CODE_MALFORMED, "malformed")
	ErrInvalidState       = sentinel(metapb.Code_CODE_INVALID_STATE, "invalid state")
	ErrNotBootstrapped    = sentinel(metapb.Code_CODE_NOT_BOOTSTRAPPED, "not bootstrapped")
	ErrClusterMismatch    = sentinel(metapb.Code_CODE_CLUSTER_MISMATCH, "another cluster")
	ErrUnknownToken       = sentinel(metapb.Code_CODE_UNKNOWN_TOKEN, "unknown token")
	ErrBadSecret          = sentinel(metapb.Code_CODE_BAD_SECRET, "bad token secret")
	ErrTokenExpired       = sentinel(metapb.Code_CODE_TOKEN_EXPIRED, "token expired")
	ErrTokenConsumed      = sentinel(metapb.Code_CODE_TOKEN_CONSUMED, "token consumed")
	ErrTokenRevoked       = sentinel(metapb.Code_CODE_TOKEN_REVOKED, "token revoked")
	ErrTokenBound         = sentinel(metapb.Code_CODE_TOKEN_BOUND, "token bound to another key")
	ErrTokenExists        = sentinel(metapb.Code_CODE_TOKEN_EXISTS, "token exists")
	ErrUnknownNode        = sentinel(metapb.Code_CODE_UNKNOWN_NODE, "unknown node")
	ErrNodeNotActive      = sentinel(metapb.Code_CODE_NODE_NOT_ACTIVE, "node not active")
	ErrBadTransition      = sentinel(metapb.Code_CODE_BAD_TRANSITION, "bad state transition")
	ErrNodeHasReplicas    = sentinel(metapb.Code_CODE_NODE_HAS_REPLICAS, "node holds replicas")
	ErrUnknownGroup       = sentinel(metapb.Code_CODE_UNKNOWN_GROUP, "unknown group")
	ErrUnknownReplica     = sentinel(metapb.Code_CODE_UNKNOWN_REPLICA, "unknown replica")
	ErrReplicaExists      = sentinel(metapb.Code_CODE_REPLICA_EXISTS, "replica exists")
	ErrLastVoter          = sentinel(metapb.Code_CODE_LAST_VOTER, "last voter")
	ErrOutOfRange         = sentinel(metapb.Code_CODE_OUT_OF_RANGE, "out of range")
	ErrBadEpoch           = sentinel(metapb.Code_CODE_BAD_EPOCH, "bad epoch")
	ErrBadChecksum        = sentinel(metapb.Code_CODE_BAD_CHECKSUM, "bad checksum")
	ErrCheckpointConflict = sentinel(metapb.Code_CODE_CHECKPOINT_CONFLICT, "checkpoint conflict")
	ErrNestedBatch        = sentinel(metapb.Code_CODE_NESTED_BATCH, "nested batch")
	ErrConflict           = sentinel(metapb.Code_CODE_CONFLICT, "group held by a migration")
)

func sentinel(c metapb.Code, msg string) *Error { return &Error{Code: c, Msg: msg} }

// errorf builds a refusal with a formatted message.
func errorf(c metapb.Code, format string, args ...any) *Error {
	return &Error{Code: c, Msg: fmt.Sprintf(format, args...)}
}

// wrap prefixes err's message with context, keeping its code.
func wrap(err error, format string, args ...any) error {
	var e *Error
	if !errors.As(err, &e) {
		return fmt.Errorf(format+": %w", append(args, err)...)
	}
	return &Error{Code: e.Code, Msg: fmt.Sprintf(format, args...) + ": " + e.Msg}
}

// codeOf returns err's code, CODE_OK for nil, CODE_INTERNAL for an error
// that is not an *Error.
func codeOf(err error) metapb.Code {
	if err == nil {
		return metapb.Code_CODE_OK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return metapb.Code_CODE_INTERNAL
}

// resultOf is the Result a proposer receives for err (nil: OK).
func resultOf(err error) *metapb.Result {
	if err == nil {
		return &metapb.Result{}
	}
	msg := err.Error()
	var e *Error
	if errors.As(err, &e) {
		msg = e.Msg
	}
	// Proto strings must be valid UTF-8, or the result would not encode.
	return &metapb.Result{Code: codeOf(err), Message: clip(strings.ToValidUTF8(msg, "?"), maxMessageBytes)}
}

// ResultError turns a Result back into the typed error the applier
// returned: nil for OK, an *Error otherwise (a nil result is ErrMalformed).
func ResultError(res *metapb.Result) error {
	switch {
	case res == nil:
		return errorf(metapb.Code_CODE_MALFORMED, "missing result")
	case res.GetCode() == metapb.Code_CODE_OK:
		return nil
	}
	msg := res.GetMessage()
	if msg == "" {
		msg = res.GetCode().String()
	}
	return &Error{Code: res.GetCode(), Msg: msg}
}

// clip shortens s to at most n bytes without splitting a UTF-8 sequence.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && s[i]&0xC0 == 0x80 {
		i--
	}
	return s[:i]
}
