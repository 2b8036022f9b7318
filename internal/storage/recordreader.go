package storage

import (
	"encoding/binary"
	"errors"
)

// RecordReader decodes the fields of a stored record one after the other
// and remembers the first that fails; every read after it returns zero, so
// a decoder checks Err once at the end instead of after every field.
type RecordReader struct {
	b   []byte
	err error
}

// NewRecordReader reads b.
func NewRecordReader(b []byte) *RecordReader { return &RecordReader{b: b} }

var errBadField = errors.New("truncated or overlong field")

// Uvarint reads an unsigned varint.
func (r *RecordReader) Uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errBadField
		return 0
	}
	r.b = r.b[n:]
	return v
}

// Varint reads a signed varint.
func (r *RecordReader) Varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = errBadField
		return 0
	}
	r.b = r.b[n:]
	return v
}

// Bytes reads the next n bytes; the slice aliases the record.
func (r *RecordReader) Bytes(n uint64) []byte {
	if r.err != nil || n > uint64(len(r.b)) {
		r.err = errBadField
		return nil
	}
	b := r.b[:n:n]
	r.b = r.b[n:]
	return b
}

// Fail records err as the reader's error unless one is already recorded.
func (r *RecordReader) Fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

// Rest returns the bytes not read yet.
func (r *RecordReader) Rest() []byte { return r.b }

// Err returns the first error.
func (r *RecordReader) Err() error { return r.err }
