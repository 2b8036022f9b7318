package kv

import (
	"encoding/binary"
	"fmt"
)

// formatVersion is the first byte of every encoded message. A decoder that
// sees another value refuses the message rather than guessing, which leaves
// room for a future format to be rolled out behind a cluster version gate.
const formatVersion = 1

// Command op codes (0x01..0x0f), query codes (0x10..0x1f) and response kinds
// (0x20..0x2f) are disjoint so that one kind of message is never misread as
// another.
const (
	opPut    = 0x01
	opDelete = 0x02
	opBatch  = 0x03

	queryGet  = 0x10
	queryScan = 0x11

	respGet  = 0x20
	respScan = 0x21
)

// Condition markers.
const (
	condNone    = 0x00
	condVersion = 0x01
)

// statusOK is the status byte of a successful result; failures carry their
// code byte instead (see codeByte).
const statusOK = 0x00

// minBatchOpSize is the fewest bytes an op inside a batch occupies (op code,
// condition marker, key length). It bounds a batch's op count by its input
// size before anything is allocated.
const minBatchOpSize = 3

// OpKind says what an Op does.
type OpKind uint8

// Op kinds.
const (
	OpPut    OpKind = opPut
	OpDelete OpKind = opDelete
)

// String returns "put", "delete" or "unknown".
func (k OpKind) String() string {
	switch k {
	case OpPut:
		return "put"
	case OpDelete:
		return "delete"
	}
	return "unknown"
}

// Op is one write of a Batch.
type Op struct {
	Kind OpKind
	Key  []byte
	// Value is the value to store; it must be empty for OpDelete.
	Value []byte
	// IfVersion, when non-nil, makes the op conditional: 0 requires the key
	// to be absent, N > 0 requires its current version to be N.
	IfVersion *uint64
}

// PutOp returns an Op that sets key to value, conditionally if ifVersion is
// non-nil.
func PutOp(key, value []byte, ifVersion *uint64) Op {
	return Op{Kind: OpPut, Key: key, Value: value, IfVersion: ifVersion}
}

// DeleteOp returns an Op that deletes key, conditionally if ifVersion is
// non-nil.
func DeleteOp(key []byte, ifVersion *uint64) Op {
	return Op{Kind: OpDelete, Key: key, IfVersion: ifVersion}
}

// OpResult is the outcome of one successful op.
type OpResult struct {
	// Version is the key's version after the op: the new version for a put,
	// 0 for a delete.
	Version uint64
	// PrevVersion is the key's version before the op, 0 if it was absent.
	PrevVersion uint64
}

// Existed reports whether the key existed before the op; for a delete, that
// is whether anything was deleted.
func (r OpResult) Existed() bool { return r.PrevVersion != 0 }

// Result is the outcome of a successful command: one OpResult for a Put or a
// Delete, one per op, in order, for a Batch.
type Result struct {
	Ops []OpResult
}

// GetResponse answers a get query. Value aliases the decoded buffer.
type GetResponse struct {
	Found   bool
	Version uint64
	Value   []byte
}

// Entry is one key of a scan response. Key and Value alias the decoded
// buffer.
type Entry struct {
	Key     []byte
	Version uint64
	Value   []byte
}

// ScanResponse answers a scan query. Entries are in ascending key order.
// More reports that at least one further matching key exists; to fetch the
// next page, scan again with after set to the last entry's key.
type ScanResponse struct {
	Entries []Entry
	More    bool
}

// op is the decoded form of an Op. A condition is a flag plus a value rather
// than a pointer, so that decoding does not allocate per op.
type op struct {
	kind      OpKind
	key       []byte
	value     []byte
	hasCond   bool
	ifVersion uint64
}

// ---- encoders ----

// EncodePut encodes a command that sets key to value, conditionally if
// ifVersion is non-nil (see Op.IfVersion). It fails with an *Error
// (CodeInvalidArgument, CodeTooLarge) if the request breaks lim.
func EncodePut(key, value []byte, ifVersion *uint64, lim Limits) ([]byte, error) {
	return encodeSingle(PutOp(key, value, ifVersion), lim)
}

// EncodeDelete encodes a command that deletes key, conditionally if ifVersion
// is non-nil. It fails with an *Error if the request breaks lim.
func EncodeDelete(key []byte, ifVersion *uint64, lim Limits) ([]byte, error) {
	return encodeSingle(DeleteOp(key, ifVersion), lim)
}

func encodeSingle(o Op, lim Limits) ([]byte, error) {
	if err := validateOp(o, 0, lim.effective()); err != nil {
		return nil, err
	}
	dst := make([]byte, 0, 2+opSize(o))
	dst = append(dst, formatVersion, byte(o.Kind))
	return appendOpBody(dst, o), nil
}

// EncodeBatch encodes an atomic batch of ops. All keys must belong to one
// vShard (Apply refuses the batch otherwise). It fails with an *Error whose
// FailedOp names the first offending op if the request breaks lim, or with
// FailedOp -1 if the batch is empty or has more than lim.MaxBatchOps ops.
func EncodeBatch(ops []Op, lim Limits) ([]byte, error) {
	lim = lim.effective()
	if len(ops) == 0 {
		return nil, errorf(CodeInvalidArgument, -1, "empty batch")
	}
	if len(ops) > lim.MaxBatchOps {
		return nil, errorf(CodeTooLarge, -1, "batch has %d ops, limit is %d", len(ops), lim.MaxBatchOps)
	}
	size := 2 + binary.MaxVarintLen64
	for i, o := range ops {
		if err := validateOp(o, i, lim); err != nil {
			return nil, err
		}
		size += 1 + opSize(o)
	}
	dst := make([]byte, 0, size)
	dst = append(dst, formatVersion, opBatch)
	dst = binary.AppendUvarint(dst, uint64(len(ops)))
	for _, o := range ops {
		dst = append(dst, byte(o.Kind))
		dst = appendOpBody(dst, o)
	}
	return dst, nil
}

func validateOp(o Op, i int, lim Limits) error {
	if o.Kind != OpPut && o.Kind != OpDelete {
		return errorf(CodeInvalidArgument, i, "unknown kind %d", o.Kind)
	}
	if err := checkKey(o.Key, i, lim.MaxKeySize); err != nil {
		return err
	}
	if o.Kind == OpDelete && len(o.Value) != 0 {
		return errorf(CodeInvalidArgument, i, "delete carries a value")
	}
	if len(o.Value) > lim.MaxValueSize {
		return errorf(CodeTooLarge, i, "value is %d bytes, limit is %d", len(o.Value), lim.MaxValueSize)
	}
	return nil
}

func checkKey(key []byte, i, limit int) *Error {
	if len(key) == 0 {
		return errorf(CodeInvalidArgument, i, "empty key")
	}
	if len(key) > limit {
		return errorf(CodeTooLarge, i, "key is %d bytes, limit is %d", len(key), limit)
	}
	return nil
}

// opSize is an upper bound of appendOpBody's output size.
func opSize(o Op) int {
	return 1 + 3*binary.MaxVarintLen64 + len(o.Key) + len(o.Value)
}

func appendOpBody(dst []byte, o Op) []byte {
	if o.IfVersion == nil {
		dst = append(dst, condNone)
	} else {
		dst = append(dst, condVersion)
		dst = binary.AppendUvarint(dst, *o.IfVersion)
	}
	dst = appendBytes(dst, o.Key)
	if o.Kind == OpPut {
		dst = appendBytes(dst, o.Value)
	}
	return dst
}

func appendBytes(dst, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

// EncodeGet encodes a query for key's value and version.
func EncodeGet(key []byte, lim Limits) ([]byte, error) {
	if err := checkKey(key, -1, lim.effective().MaxKeySize); err != nil {
		return nil, err
	}
	dst := make([]byte, 0, 2+binary.MaxVarintLen64+len(key))
	dst = append(dst, formatVersion, queryGet)
	return appendBytes(dst, key), nil
}

// EncodeScan encodes a query for up to limit entries, in key order, whose
// key starts with prefix and sorts strictly after after (a cursor: the last
// key of the previous page, or empty to start at the beginning of the
// prefix). A limit of 0 asks for as many as one response may hold
// (MaxScanLimit entries, MaxScanBytes bytes); larger limits are capped the
// same way. An empty prefix scans the whole vShard.
func EncodeScan(prefix, after []byte, limit int, lim Limits) ([]byte, error) {
	if limit < 0 {
		return nil, errorf(CodeInvalidArgument, -1, "negative scan limit %d", limit)
	}
	maxKey := lim.effective().MaxKeySize
	if len(prefix) > maxKey {
		return nil, errorf(CodeTooLarge, -1, "scan prefix is %d bytes, limit is %d", len(prefix), maxKey)
	}
	if len(after) > maxKey {
		return nil, errorf(CodeTooLarge, -1, "scan cursor is %d bytes, limit is %d", len(after), maxKey)
	}
	dst := make([]byte, 0, 2+3*binary.MaxVarintLen64+len(prefix)+len(after))
	dst = append(dst, formatVersion, queryScan)
	dst = appendBytes(dst, prefix)
	dst = appendBytes(dst, after)
	return binary.AppendUvarint(dst, uint64(limit)), nil
}

// ---- results ----

func encodeOKResult(res []OpResult) []byte {
	dst := make([]byte, 0, 2+binary.MaxVarintLen64*(1+2*len(res)))
	dst = append(dst, formatVersion, statusOK)
	dst = binary.AppendUvarint(dst, uint64(len(res)))
	for _, r := range res {
		dst = binary.AppendUvarint(dst, r.Version)
		dst = binary.AppendUvarint(dst, r.PrevVersion)
	}
	return dst
}

func encodeErrorResult(e *Error) []byte {
	dst := make([]byte, 0, 2+3*binary.MaxVarintLen64+len(e.Message))
	dst = append(dst, formatVersion, codeByte(e.Code))
	dst = binary.AppendUvarint(dst, uint64(e.FailedOp+1)) // -1 encodes as 0
	dst = binary.AppendUvarint(dst, e.CurrentVersion)
	return appendBytes(dst, []byte(e.Message))
}

// DecodeResult decodes the result of an applied command. A command that was
// refused yields an *Error (CodeConflict, CodeInvalidArgument, CodeTooLarge)
// with the failing op and, for a conflict, the key's current version. Bytes
// that are not a result yield an error wrapping ErrMalformed.
func DecodeResult(b []byte) (Result, error) {
	d := decoder{b: b}
	if v, ok := d.byte(); !ok || v != formatVersion {
		return Result{}, malformedf("result: unknown format version")
	}
	status, ok := d.byte()
	if !ok {
		return Result{}, malformedf("result: missing status")
	}
	if status != statusOK {
		code, ok := byteCode(status)
		if !ok {
			return Result{}, malformedf("result: unknown status %d", status)
		}
		failed, ok1 := d.uvarint()
		cur, ok2 := d.uvarint()
		msg, ok3 := d.bytes()
		if !ok1 || !ok2 || !ok3 || failed > HardMaxBatchOps || !d.done() {
			return Result{}, malformedf("result: bad %s error", code)
		}
		return Result{}, &Error{Code: code, Message: string(msg), CurrentVersion: cur, FailedOp: int(failed) - 1}
	}
	n, ok := d.uvarint()
	// Every op result takes at least two bytes.
	if !ok || n > HardMaxBatchOps || n > uint64(d.len()/2) {
		return Result{}, malformedf("result: bad op count")
	}
	ops := make([]OpResult, n)
	for i := range ops {
		v, ok1 := d.uvarint()
		p, ok2 := d.uvarint()
		if !ok1 || !ok2 {
			return Result{}, malformedf("result: op %d truncated", i)
		}
		ops[i] = OpResult{Version: v, PrevVersion: p}
	}
	if !d.done() {
		return Result{}, malformedf("result: %d trailing bytes", d.len())
	}
	return Result{Ops: ops}, nil
}

// ---- commands (decoded by Apply) ----

// decodeCommand parses a command. Errors are *Error values meant to become
// the command's result: CodeInvalidArgument for bytes that do not parse,
// CodeTooLarge for fields beyond the hard caps. Decoded keys and values alias
// b.
func decodeCommand(b []byte) ([]op, *Error) {
	d := decoder{b: b}
	if v, ok := d.byte(); !ok || v != formatVersion {
		return nil, errorf(CodeInvalidArgument, -1, "command: unknown format version")
	}
	code, ok := d.byte()
	if !ok {
		return nil, errorf(CodeInvalidArgument, -1, "command: missing op code")
	}
	var ops []op
	switch code {
	case opPut, opDelete:
		o, err := d.op(OpKind(code), 0)
		if err != nil {
			return nil, err
		}
		ops = []op{o}
	case opBatch:
		n, ok := d.uvarint()
		if !ok || n > uint64(d.len()/minBatchOpSize) {
			return nil, errorf(CodeInvalidArgument, -1, "batch: bad op count")
		}
		if n == 0 {
			return nil, errorf(CodeInvalidArgument, -1, "empty batch")
		}
		if n > HardMaxBatchOps {
			return nil, errorf(CodeTooLarge, -1, "batch has %d ops, hard limit is %d", n, HardMaxBatchOps)
		}
		ops = make([]op, n)
		for i := range ops {
			k, ok := d.byte()
			if !ok || (k != opPut && k != opDelete) {
				return nil, errorf(CodeInvalidArgument, i, "bad op code")
			}
			o, err := d.op(OpKind(k), i)
			if err != nil {
				return nil, err
			}
			ops[i] = o
		}
	default:
		return nil, errorf(CodeInvalidArgument, -1, "command: unknown op code %#x", code)
	}
	if !d.done() {
		return nil, errorf(CodeInvalidArgument, -1, "command: %d trailing bytes", d.len())
	}
	return ops, nil
}

// op parses the body of an op of the given kind; i is its index for errors.
func (d *decoder) op(kind OpKind, i int) (op, *Error) {
	o := op{kind: kind}
	c, ok := d.byte()
	switch {
	case !ok:
		return op{}, errorf(CodeInvalidArgument, i, "truncated")
	case c == condVersion:
		if o.ifVersion, ok = d.uvarint(); !ok {
			return op{}, errorf(CodeInvalidArgument, i, "bad if_version")
		}
		o.hasCond = true
	case c != condNone:
		return op{}, errorf(CodeInvalidArgument, i, "bad condition marker %#x", c)
	}
	if o.key, ok = d.bytes(); !ok {
		return op{}, errorf(CodeInvalidArgument, i, "bad key length")
	}
	if err := checkKey(o.key, i, HardMaxKeySize); err != nil {
		return op{}, err
	}
	if kind == OpPut {
		if o.value, ok = d.bytes(); !ok {
			return op{}, errorf(CodeInvalidArgument, i, "bad value length")
		}
		if len(o.value) > HardMaxValueSize {
			return op{}, errorf(CodeTooLarge, i, "value is %d bytes, hard limit is %d", len(o.value), HardMaxValueSize)
		}
	}
	return o, nil
}

// ---- queries (decoded by Read) ----

type query struct {
	kind   byte // queryGet or queryScan
	key    []byte
	prefix []byte
	after  []byte
	limit  int // effective: in [1, MaxScanLimit]
}

func decodeQuery(b []byte) (query, *Error) {
	d := decoder{b: b}
	if v, ok := d.byte(); !ok || v != formatVersion {
		return query{}, errorf(CodeInvalidArgument, -1, "query: unknown format version")
	}
	code, ok := d.byte()
	if !ok {
		return query{}, errorf(CodeInvalidArgument, -1, "query: missing kind")
	}
	q := query{kind: code}
	switch code {
	case queryGet:
		if q.key, ok = d.bytes(); !ok {
			return query{}, errorf(CodeInvalidArgument, -1, "get: bad key length")
		}
		if err := checkKey(q.key, -1, HardMaxKeySize); err != nil {
			return query{}, err
		}
	case queryScan:
		var ok1, ok2, ok3 bool
		var limit uint64
		q.prefix, ok1 = d.bytes()
		q.after, ok2 = d.bytes()
		limit, ok3 = d.uvarint()
		if !ok1 || !ok2 || !ok3 {
			return query{}, errorf(CodeInvalidArgument, -1, "scan: truncated")
		}
		if len(q.prefix) > HardMaxKeySize || len(q.after) > HardMaxKeySize {
			return query{}, errorf(CodeTooLarge, -1, "scan: prefix or cursor beyond hard limit %d", HardMaxKeySize)
		}
		q.limit = MaxScanLimit
		if limit != 0 && limit < MaxScanLimit {
			q.limit = int(limit)
		}
	default:
		return query{}, errorf(CodeInvalidArgument, -1, "query: unknown kind %#x", code)
	}
	if !d.done() {
		return query{}, errorf(CodeInvalidArgument, -1, "query: %d trailing bytes", d.len())
	}
	return q, nil
}

// ---- responses ----

func encodeGetResponse(found bool, version uint64, value []byte) []byte {
	if !found {
		return []byte{formatVersion, respGet, 0}
	}
	dst := make([]byte, 0, 3+2*binary.MaxVarintLen64+len(value))
	dst = append(dst, formatVersion, respGet, 1)
	dst = binary.AppendUvarint(dst, version)
	return appendBytes(dst, value)
}

// DecodeGetResponse decodes the response to a get query. Value aliases b.
func DecodeGetResponse(b []byte) (GetResponse, error) {
	d := decoder{b: b}
	v, ok1 := d.byte()
	k, ok2 := d.byte()
	found, ok3 := d.byte()
	if !ok1 || !ok2 || !ok3 || v != formatVersion || k != respGet || found > 1 {
		return GetResponse{}, malformedf("get response: bad header")
	}
	var r GetResponse
	if found == 1 {
		var ok bool
		r.Found = true
		if r.Version, ok = d.uvarint(); !ok || r.Version == 0 {
			return GetResponse{}, malformedf("get response: bad version")
		}
		if r.Value, ok = d.bytes(); !ok {
			return GetResponse{}, malformedf("get response: bad value length")
		}
	}
	if !d.done() {
		return GetResponse{}, malformedf("get response: %d trailing bytes", d.len())
	}
	return r, nil
}

// DecodeScanResponse decodes the response to a scan query. Keys and values
// alias b.
func DecodeScanResponse(b []byte) (ScanResponse, error) {
	d := decoder{b: b}
	v, ok1 := d.byte()
	k, ok2 := d.byte()
	more, ok3 := d.byte()
	if !ok1 || !ok2 || !ok3 || v != formatVersion || k != respScan || more > 1 {
		return ScanResponse{}, malformedf("scan response: bad header")
	}
	r := ScanResponse{More: more == 1}
	for !d.done() {
		var e Entry
		var ok bool
		if e.Key, ok = d.bytes(); !ok || len(e.Key) == 0 {
			return ScanResponse{}, malformedf("scan response: entry %d: bad key", len(r.Entries))
		}
		if e.Version, ok = d.uvarint(); !ok || e.Version == 0 {
			return ScanResponse{}, malformedf("scan response: entry %d: bad version", len(r.Entries))
		}
		if e.Value, ok = d.bytes(); !ok {
			return ScanResponse{}, malformedf("scan response: entry %d: bad value", len(r.Entries))
		}
		r.Entries = append(r.Entries, e)
	}
	return r, nil
}

// ---- stored records ----

// appendRecord encodes a stored value: version then value bytes.
func appendRecord(dst []byte, version uint64, value []byte) []byte {
	dst = binary.AppendUvarint(dst, version)
	return append(dst, value...)
}

// decodeRecord parses a stored value. The value aliases b.
func decodeRecord(b []byte) (version uint64, value []byte, err error) {
	version, n := binary.Uvarint(b)
	if n <= 0 || version == 0 {
		return 0, nil, malformedf("stored record: bad version")
	}
	return version, b[n:], nil
}

// ---- decoder ----

// decoder reads from b. Every method reports false instead of reading past
// the end, and bytes never returns a slice longer than what remains, so no
// length taken from the input can cause a large allocation or a panic.
type decoder struct{ b []byte }

func (d *decoder) len() int   { return len(d.b) }
func (d *decoder) done() bool { return len(d.b) == 0 }

func (d *decoder) byte() (byte, bool) {
	if len(d.b) == 0 {
		return 0, false
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c, true
}

func (d *decoder) uvarint() (uint64, bool) {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		return 0, false
	}
	d.b = d.b[n:]
	return v, true
}

func (d *decoder) bytes() ([]byte, bool) {
	l, ok := d.uvarint()
	if !ok || l > uint64(len(d.b)) {
		return nil, false
	}
	out := d.b[:l:l]
	d.b = d.b[l:]
	return out, true
}

// String formats o for logs and test failures, without the value bytes.
func (o Op) String() string {
	s := fmt.Sprintf("%s %q", o.Kind, o.Key)
	if o.IfVersion != nil {
		s += fmt.Sprintf(" if_version=%d", *o.IfVersion)
	}
	if o.Kind == OpPut {
		s += fmt.Sprintf(" (%d-byte value)", len(o.Value))
	}
	return s
}
