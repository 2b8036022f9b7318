package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// Error codes of the client API (docs/api.md).
const (
	CodeInvalidArgument = "invalid_argument"
	CodeUnauthenticated = "unauthenticated"
	CodeNotFound        = "not_found"
	CodeConflict        = "conflict"
	CodeTooLarge        = "too_large"
	CodeNotLeader       = "not_leader"
	CodeMoved           = "moved"
	CodeFrozen          = "frozen"
	CodeUnavailable     = "unavailable"
	CodeOutcomeUnknown  = "outcome_unknown"
	CodeInternal        = "internal"
)

// Error is an error of the cluster's API, or one the client reports in
// the same terms when it gives up (Code unavailable or outcome_unknown,
// with the context's error as Unwrap).
//
// Compare with errors.Is against the sentinels (ErrNotFound, ErrConflict,
// ...), which match any *Error of the same code.
type Error struct {
	// Code is one of the Code constants.
	Code string
	// Message is a human-readable explanation.
	Message string
	// Hint carries the code's details: current_version for conflict,
	// leader and leader_api for not_leader, group and epoch for moved.
	// Numbers are json.Number; use HintUint.
	Hint map[string]any
	// Status is the HTTP status of the answer (0 when the client made the
	// error up itself).
	Status int
	// Err is the underlying cause of an error the client made up: a
	// context or network error.
	Err error

	foreign bool // the answer was not the cluster's JSON error
}

func (e *Error) Error() string {
	msg := e.Code
	if e.Message != "" {
		msg += ": " + e.Message
	}
	return "nodedb: " + msg
}

// Unwrap returns the underlying cause, if any.
func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is the sentinel of e's code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Message == "" && t.Status == 0 && t.Code == e.Code
}

// Retryable reports whether the same request may succeed later as is. The
// client retries these itself until the call's context ends.
func (e *Error) Retryable() bool {
	switch e.Code {
	case CodeUnavailable, CodeFrozen, CodeOutcomeUnknown, CodeNotLeader, CodeMoved:
		return true
	}
	return false
}

// HintUint returns a numeric hint.
func (e *Error) HintUint(name string) (uint64, bool) {
	return hintUint(e.Hint, name)
}

// CurrentVersion returns the key's current version from a conflict's hint
// (0: the key is absent).
func (e *Error) CurrentVersion() (uint64, bool) {
	if e.Code != CodeConflict {
		return 0, false
	}
	return e.HintUint("current_version")
}

// CurrentVersion returns the key's current version when err is a conflict.
func CurrentVersion(err error) (uint64, bool) {
	var e *Error
	if !errors.As(err, &e) {
		return 0, false
	}
	return e.CurrentVersion()
}

func hintUint(h map[string]any, name string) (uint64, bool) {
	switch v := h[name].(type) {
	case json.Number:
		n, err := strconv.ParseUint(v.String(), 10, 64)
		return n, err == nil
	case float64:
		if v < 0 {
			return 0, false
		}
		return uint64(v), true
	case uint64:
		return v, true
	}
	return 0, false
}

// Sentinels for errors.Is, one per code.
var (
	ErrInvalidArgument = &Error{Code: CodeInvalidArgument}
	ErrUnauthenticated = &Error{Code: CodeUnauthenticated}
	ErrNotFound        = &Error{Code: CodeNotFound}
	ErrConflict        = &Error{Code: CodeConflict}
	ErrTooLarge        = &Error{Code: CodeTooLarge}
	ErrNotLeader       = &Error{Code: CodeNotLeader}
	ErrMoved           = &Error{Code: CodeMoved}
	ErrFrozen          = &Error{Code: CodeFrozen}
	ErrUnavailable     = &Error{Code: CodeUnavailable}
	ErrOutcomeUnknown  = &Error{Code: CodeOutcomeUnknown}
	ErrInternal        = &Error{Code: CodeInternal}
)

// ErrClosed is returned by calls on a closed Client.
var ErrClosed = errors.New("nodedb: client closed")

func invalidArg(format string, args ...any) *Error {
	return &Error{Code: CodeInvalidArgument, Message: fmt.Sprintf(format, args...)}
}
