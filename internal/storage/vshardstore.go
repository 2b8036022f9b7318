package storage

import (
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/statemachine"
)

// VShardReader is a statemachine.Reader over one vShard's user area. The
// zero value is unusable; use Reset.
type VShardReader struct {
	r      pebble.Reader
	prefix []byte
	buf    []byte
}

var _ statemachine.Reader = (*VShardReader)(nil)

// Reset points v at the user area of vshard in group g, read through r.
func (v *VShardReader) Reset(r pebble.Reader, g ids.GroupID, vshard uint32) {
	v.r = r
	v.prefix = AppendVShardSubPrefix(v.prefix[:0], g, vshard, SubUser)
}

func (v *VShardReader) key(k []byte) []byte {
	v.buf = append(append(v.buf[:0], v.prefix...), k...)
	return v.buf
}

// Get implements statemachine.Reader.
func (v *VShardReader) Get(key []byte) ([]byte, error) {
	val, ok, err := getCopy(v.r, v.key(key))
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, statemachine.ErrNotFound
	}
	return val, nil
}

// Scan implements statemachine.Reader.
func (v *VShardReader) Scan(start, end []byte, fn func(key, value []byte) bool) error {
	lo := append(append([]byte(nil), v.prefix...), start...)
	var hi []byte
	if end == nil {
		hi = prefixEnd(v.prefix)
	} else {
		hi = append(append([]byte(nil), v.prefix...), end...)
	}
	it, err := v.r.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return fmt.Errorf("scan vshard: %w", err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		val, err := it.ValueAndErr()
		if err != nil {
			_ = it.Close()
			return fmt.Errorf("scan vshard: %w", err)
		}
		if !fn(it.Key()[len(v.prefix):], val) {
			break
		}
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("scan vshard: %w", err)
	}
	return nil
}

// VShardWriter is a statemachine.Writer over one vShard's user area inside a
// batch. The batch must be indexed so that reads see earlier writes.
type VShardWriter struct {
	VShardReader
	b *pebble.Batch
}

var _ statemachine.Writer = (*VShardWriter)(nil)

// Reset points w at vshard of group g inside batch b.
func (w *VShardWriter) Reset(b *pebble.Batch, g ids.GroupID, vshard uint32) {
	w.VShardReader.Reset(b, g, vshard)
	w.b = b
}

// Set implements statemachine.Writer.
func (w *VShardWriter) Set(key, value []byte) error {
	return w.b.Set(w.key(key), value, nil)
}

// Delete implements statemachine.Writer.
func (w *VShardWriter) Delete(key []byte) error {
	return w.b.Delete(w.key(key), nil)
}

// ScanRange calls fn for every key in [start, end) of r, in order. Slices
// passed to fn are valid only during the call.
func ScanRange(r pebble.Reader, start, end []byte, fn func(key, value []byte) error) error {
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: start, UpperBound: end})
	if err != nil {
		return fmt.Errorf("open iterator: %w", err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		val, err := it.ValueAndErr()
		if err == nil {
			err = fn(it.Key(), val)
		}
		if err != nil {
			return errors.Join(err, it.Close())
		}
	}
	return it.Close()
}

// Get reads one raw key, returning a copy of its value.
func Get(r pebble.Reader, key []byte) ([]byte, bool, error) { return getCopy(r, key) }
