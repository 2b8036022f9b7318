package migrate

import (
	"errors"
	"fmt"

	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

// Error is a typed refusal: a payload that does not decode or validate, a
// row whose checksum does not match, a move request that cannot be made.
// Its Code is a metadata code (CODE_MALFORMED, CODE_BAD_CHECKSUM, ...), and
// errors.Is matches both the meta sentinel of that code (meta.ErrBadChecksum)
// and any *Error with the same code.
type Error struct {
	Code metapb.Code
	Msg  string
}

func (e *Error) Error() string { return "migrate: " + e.Msg }

// Is reports whether target is an *Error or a *meta.Error with the same
// code.
func (e *Error) Is(target error) bool {
	switch t := target.(type) {
	case *Error:
		return t.Code == e.Code
	case *meta.Error:
		return t.Code == e.Code
	}
	return false
}

func errorf(c metapb.Code, format string, args ...any) *Error {
	return &Error{Code: c, Msg: fmt.Sprintf(format, args...)}
}

// ErrConflict is what a move request for a group with a move (or another
// membership change) in flight is: errors.Is(err, ErrConflict) holds for
// every *ConflictError. The API answers it with `conflict`.
var ErrConflict = &ConflictError{}

// ConflictError is a request refused because group Group is busy: ID names
// the migration row in flight, or is empty when the group has a learner
// that no move owns (placement is adding a replica).
type ConflictError struct {
	Group uint64
	ID    string
}

func (e *ConflictError) Error() string {
	if e.ID == "" {
		return fmt.Sprintf("migrate: group %d has a learner being added: wait for placement to finish", e.Group)
	}
	return fmt.Sprintf("migrate: group %d has a move in flight (%s)", e.Group, e.ID)
}

// Is makes every *ConflictError match ErrConflict, and meta.ErrConflict
// (the metadata group's refusal of a change to a group a migration holds).
func (e *ConflictError) Is(target error) bool {
	switch t := target.(type) {
	case *ConflictError:
		return true
	case *meta.Error:
		return t.Code == metapb.Code_CODE_CONFLICT
	}
	return false
}

// asError is errors.As for *Error.
func asError(err error, e **Error) bool { return errors.As(err, e) }
