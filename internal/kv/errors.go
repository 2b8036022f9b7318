package kv

import (
	"errors"
	"fmt"
)

// Code classifies a rejected request. The values are the API's JSON error
// codes, so the REST and gRPC layers pass them through unchanged.
type Code string

// Error codes produced by this package.
const (
	// CodeInvalidArgument: the request is malformed (an empty key, bad wire
	// bytes, an unknown op).
	CodeInvalidArgument Code = "invalid_argument"
	// CodeNotFound: the key does not exist. Get reports absence in its
	// response instead; the code exists for API layers that turn that into
	// an error.
	CodeNotFound Code = "not_found"
	// CodeConflict: an IfVersion condition did not hold.
	CodeConflict Code = "conflict"
	// CodeTooLarge: a key, value or batch exceeds a limit.
	CodeTooLarge Code = "too_large"
)

// Error is a request-level failure: the request was understood well enough
// to be refused, and nothing was written. Storage failures are never an
// *Error.
type Error struct {
	Code    Code
	Message string
	// CurrentVersion is, for CodeConflict, the failing key's version at the
	// time of the check (0 if the key was absent), so the caller can retry
	// its compare-and-set without a read.
	CurrentVersion uint64
	// FailedOp is the index of the op the error is about: its position in a
	// Batch, 0 for a Put or Delete, and -1 when the error concerns the
	// request as a whole (for example bytes that do not parse).
	FailedOp int
}

// Error implements error.
func (e *Error) Error() string {
	if e.Message == "" {
		return "kv: " + string(e.Code)
	}
	return "kv: " + string(e.Code) + ": " + e.Message
}

// Is makes every *Error match the sentinel of its code, so that
// errors.Is(err, ErrConflict) asks "is this a conflict?" whatever the
// message, version or op index.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Sentinels for errors.Is. They are compared by Code only; do not modify
// them.
var (
	ErrInvalidArgument = &Error{Code: CodeInvalidArgument, FailedOp: -1}
	ErrNotFound        = &Error{Code: CodeNotFound, FailedOp: -1}
	ErrConflict        = &Error{Code: CodeConflict, FailedOp: -1}
	ErrTooLarge        = &Error{Code: CodeTooLarge, FailedOp: -1}
)

// ErrMalformed is wrapped by the errors of the client-side decoders
// (DecodeResult, DecodeGetResponse, DecodeScanResponse) when their input is
// not a well-formed result or response, and by Apply and Read when a stored
// record is corrupt. Such bytes come from the cluster, not from the caller,
// so this is deliberately not an *Error with CodeInvalidArgument.
var ErrMalformed = errors.New("kv: malformed encoding")

// CodeOf returns the Code of the first *Error in err's chain, or "" if there
// is none.
func CodeOf(err error) Code {
	if e, ok := errors.AsType[*Error](err); ok {
		return e.Code
	}
	return ""
}

// IsCode reports whether err's chain holds an *Error with the given code.
func IsCode(err error, code Code) bool {
	return err != nil && CodeOf(err) == code
}

// errorf builds an *Error about op failedOp (-1: the request as a whole);
// the message names the op, so it reads well on its own in logs.
func errorf(code Code, failedOp int, format string, args ...any) *Error {
	msg := fmt.Sprintf(format, args...)
	if failedOp >= 0 {
		msg = fmt.Sprintf("op %d: %s", failedOp, msg)
	}
	return &Error{Code: code, FailedOp: failedOp, Message: msg}
}

func malformedf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
}

// codeByte and byteCode translate codes to and from their wire form.
func codeByte(c Code) byte {
	switch c {
	case CodeInvalidArgument:
		return 1
	case CodeNotFound:
		return 2
	case CodeConflict:
		return 3
	case CodeTooLarge:
		return 4
	}
	return 1 // unreachable for errors built in this package
}

func byteCode(b byte) (Code, bool) {
	switch b {
	case 1:
		return CodeInvalidArgument, true
	case 2:
		return CodeNotFound, true
	case 3:
		return CodeConflict, true
	case 4:
		return CodeTooLarge, true
	}
	return "", false
}
