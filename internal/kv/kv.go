package kv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/nodedb/nodedb-cluster/statemachine"
	"github.com/nodedb/nodedb-cluster/vshard"
)

// dataPrefix is the first byte of every user-data key in a vShard's keyspace
// (see the package documentation for the layout).
const dataPrefix = 'k'

// StateMachine is the built-in key-value state machine. It holds no state of
// its own beyond the configured vShard count; everything lives in the host's
// storage, so one value serves every vShard and every group of a node and is
// safe for concurrent use.
//
// Build it with New. The zero value also works but does not check that keys
// belong to the vShard they are applied to; it suits tests and hosts that
// route keys by other means.
type StateMachine struct {
	vshards int
}

var _ statemachine.StateMachine = (*StateMachine)(nil)

// New returns the state machine for a cluster of vshards vShards (the count
// fixed at bootstrap). Apply and Read use it to refuse any key that does not
// belong to the vShard they were called for: a misrouted write would
// otherwise be stored where routing will never look for it, and a batch
// spanning vShards would silently lose its atomicity once the vShards move
// apart.
func New(vshards int) (*StateMachine, error) {
	if err := vshard.ValidateCount(vshards); err != nil {
		return nil, fmt.Errorf("kv: new state machine: %w", err)
	}
	return &StateMachine{vshards: vshards}, nil
}

// Apply implements statemachine.StateMachine. Each command's result is an
// encoded result (see DecodeResult): refused commands (malformed, too large,
// misrouted, failed condition) get an error result, write nothing and do not
// affect the commands after them. Apply returns an error only when storage
// fails or holds a corrupt record; the writes of the batch are then partial
// and the host must discard the batch.
func (m *StateMachine) Apply(w statemachine.Writer, vs uint32, cmds []statemachine.Command, results [][]byte) error {
	if len(results) != len(cmds) {
		return fmt.Errorf("kv: apply to vShard %d: %d result slots for %d commands", vs, len(results), len(cmds))
	}
	for i := range cmds {
		res, err := m.applyOne(w, vs, cmds[i].Data)
		if err != nil {
			return fmt.Errorf("kv: apply to vShard %d, entry %d: %w", vs, cmds[i].Index, err)
		}
		results[i] = res
	}
	return nil
}

func (m *StateMachine) applyOne(w statemachine.Writer, vs uint32, data []byte) ([]byte, error) {
	ops, cerr := decodeCommand(data)
	if cerr == nil {
		cerr = m.checkRouting(ops, vs)
	}
	if cerr != nil {
		return encodeErrorResult(cerr), nil
	}
	res, cerr, err := plan(w, ops)
	if err != nil {
		return nil, err
	}
	if cerr != nil {
		return encodeErrorResult(cerr), nil
	}
	// Every condition held: write. Ops are written in order, so a key
	// touched twice ends with its last op's state, as in the plan.
	for i, o := range ops {
		sk := storageKey(o.key)
		switch o.kind {
		case OpPut:
			rec := appendRecord(make([]byte, 0, 10+len(o.value)), res[i].Version, o.value)
			if err := w.Set(sk, rec); err != nil {
				return nil, fmt.Errorf("set key %q: %w", logKey(o.key), err)
			}
		case OpDelete:
			if res[i].PrevVersion == 0 {
				continue // nothing to delete; do not write a tombstone
			}
			if err := w.Delete(sk); err != nil {
				return nil, fmt.Errorf("delete key %q: %w", logKey(o.key), err)
			}
		}
	}
	return encodeOKResult(res), nil
}

// plan checks every op's condition against the state left by the ops before
// it and computes each op's outcome, without writing. It returns the
// conflict of the first op whose condition fails.
func plan(r statemachine.Reader, ops []op) ([]OpResult, *Error, error) {
	res := make([]OpResult, len(ops))
	// overlay holds the versions the batch has produced so far; a single op
	// needs none.
	var overlay map[string]uint64
	if len(ops) > 1 {
		overlay = make(map[string]uint64, len(ops))
	}
	for i, o := range ops {
		cur, ok := overlay[string(o.key)]
		if !ok {
			var err error
			if cur, err = currentVersion(r, o.key); err != nil {
				return nil, nil, err
			}
		}
		if o.hasCond && o.ifVersion != cur {
			return nil, conflict(i, o, cur), nil
		}
		next := uint64(0)
		if o.kind == OpPut {
			if cur == math.MaxUint64 {
				return nil, errorf(CodeInvalidArgument, i, "version overflow"), nil
			}
			next = cur + 1
		}
		res[i] = OpResult{Version: next, PrevVersion: cur}
		if overlay != nil {
			overlay[string(o.key)] = next
		}
	}
	return res, nil, nil
}

func conflict(i int, o op, cur uint64) *Error {
	var e *Error
	switch {
	case o.ifVersion == 0:
		e = errorf(CodeConflict, i, "%s requires the key to be absent, but it exists at version %d", o.kind, cur)
	case cur == 0:
		e = errorf(CodeConflict, i, "%s requires version %d, but the key does not exist", o.kind, o.ifVersion)
	default:
		e = errorf(CodeConflict, i, "%s requires version %d, but the key is at version %d", o.kind, o.ifVersion, cur)
	}
	e.CurrentVersion = cur
	return e
}

// currentVersion returns key's stored version, 0 if absent.
func currentVersion(r statemachine.Reader, key []byte) (uint64, error) {
	rec, err := r.Get(storageKey(key))
	if errors.Is(err, statemachine.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("get key %q: %w", logKey(key), err)
	}
	v, _, err := decodeRecord(rec)
	if err != nil {
		return 0, fmt.Errorf("key %q: %w", logKey(key), err)
	}
	return v, nil
}

func (m *StateMachine) checkRouting(ops []op, vs uint32) *Error {
	for i, o := range ops {
		if err := m.checkKeyRouting(o.key, vs, i); err != nil {
			return err
		}
	}
	return nil
}

func (m *StateMachine) checkKeyRouting(key []byte, vs uint32, i int) *Error {
	if m.vshards == 0 {
		return nil // zero StateMachine: routing is not checked
	}
	if got := vshard.ForKey(key, m.vshards); got != vs {
		return errorf(CodeInvalidArgument, i, "key belongs to vShard %d, not %d (keys of one batch must share a hash tag)", got, vs)
	}
	return nil
}

// Read implements statemachine.StateMachine. A malformed query yields an
// *Error with CodeInvalidArgument (or CodeTooLarge); a storage failure or a
// corrupt record yields any other error.
func (m *StateMachine) Read(r statemachine.Reader, vs uint32, q []byte) ([]byte, error) {
	qq, qerr := decodeQuery(q)
	if qerr != nil {
		return nil, qerr
	}
	switch qq.kind {
	case queryGet:
		if err := m.checkKeyRouting(qq.key, vs, -1); err != nil {
			return nil, err
		}
		return get(r, qq.key)
	default: // queryScan; decodeQuery admits nothing else
		return scan(r, qq)
	}
}

func get(r statemachine.Reader, key []byte) ([]byte, error) {
	rec, err := r.Get(storageKey(key))
	if errors.Is(err, statemachine.ErrNotFound) {
		return encodeGetResponse(false, 0, nil), nil
	}
	if err != nil {
		return nil, fmt.Errorf("kv: get key %q: %w", logKey(key), err)
	}
	v, val, err := decodeRecord(rec)
	if err != nil {
		return nil, fmt.Errorf("kv: get key %q: %w", logKey(key), err)
	}
	return encodeGetResponse(true, v, val), nil
}

// scanEntryOverhead approximates the encoding overhead of one entry (three
// varints) when accounting for MaxScanBytes.
const scanEntryOverhead = 12

func scan(r statemachine.Reader, q query) ([]byte, error) {
	start := storageKey(q.prefix)
	if len(q.after) > 0 && bytes.Compare(q.after, q.prefix) >= 0 {
		// The smallest key strictly greater than after.
		start = append(storageKey(q.after), 0)
	}
	end := prefixEnd(storageKey(q.prefix))
	out := []byte{formatVersion, respScan, 0} // out[2] is More, set below
	if bytes.Compare(start, end) >= 0 {
		return out, nil
	}
	var (
		n       int
		more    bool
		scanErr error
	)
	err := r.Scan(start, end, func(sk, rec []byte) bool {
		if len(sk) == 0 || sk[0] != dataPrefix {
			return false // outside user data: the reader broke [start, end)
		}
		key := sk[1:]
		if !bytes.HasPrefix(key, q.prefix) {
			return false
		}
		if bytes.Compare(key, q.after) <= 0 {
			return true
		}
		if n == q.limit {
			more = true
			return false
		}
		v, val, err := decodeRecord(rec)
		if err != nil {
			scanErr = fmt.Errorf("key %q: %w", logKey(key), err)
			return false
		}
		if n > 0 && len(out)+len(key)+len(val)+scanEntryOverhead > MaxScanBytes {
			more = true
			return false
		}
		out = appendBytes(out, key)
		out = binary.AppendUvarint(out, v)
		out = appendBytes(out, val)
		n++
		return true
	})
	if err == nil {
		err = scanErr
	}
	if err != nil {
		return nil, fmt.Errorf("kv: scan prefix %q after %q: %w", logKey(q.prefix), logKey(q.after), err)
	}
	if more {
		out[2] = 1
	}
	return out, nil
}

// storageKey returns dataPrefix + key in a new slice.
func storageKey(key []byte) []byte {
	sk := make([]byte, 1+len(key), 2+len(key)) // room for scan's trailing 0
	sk[0] = dataPrefix
	copy(sk[1:], key)
	return sk
}

// prefixEnd returns the smallest key greater than every key that starts
// with p. p starts with dataPrefix, which is below 0xff, so the result always
// exists.
func prefixEnd(p []byte) []byte {
	end := bytes.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] != 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil // unreachable for keys starting with dataPrefix
}

// logKey shortens a key for an error message: keys may be up to 64 KiB, and
// error messages end up in logs.
func logKey(k []byte) []byte {
	const n = 64
	if len(k) <= n {
		return k
	}
	return append(k[:n:n], "..."...)
}
