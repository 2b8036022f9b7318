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
	cache  *ReadCache // see ResetCached
}

var _ statemachine.Reader = (*VShardReader)(nil)

// Reset points v at the user area of vshard in group g, read through r.
func (v *VShardReader) Reset(r pebble.Reader, g ids.GroupID, vshard uint32) {
	v.r = r
	v.prefix = AppendVShardSubPrefix(v.prefix[:0], g, vshard, SubUser)
	v.cache = nil
}

// ResetCached is Reset for a reader of the database itself (not of a batch)
// whose point reads go through the group's ReadCache.
func (v *VShardReader) ResetCached(db *pebble.DB, g ids.GroupID, vshard uint32, cache *ReadCache) {
	v.Reset(db, g, vshard)
	v.cache = cache
}

func (v *VShardReader) key(k []byte) []byte {
	v.buf = append(append(v.buf[:0], v.prefix...), k...)
	return v.buf
}

// Get implements statemachine.Reader.
func (v *VShardReader) Get(key []byte) ([]byte, error) {
	k := v.key(key)
	if v.cache != nil {
		cv, hit, gen := v.cache.lookup(k)
		if !hit {
			val, present, err := getCopy(v.r, k)
			if err != nil {
				return nil, err
			}
			cv = cachedValue{val: val, present: present}
			v.cache.fill(k, cv, gen)
		}
		if !cv.present {
			return nil, statemachine.ErrNotFound
		}
		return append([]byte(nil), cv.val...), nil // a copy, as Reader promises
	}
	val, ok, err := getCopy(v.r, k)
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
	b     *pebble.Batch
	cache *ValueCache
	reads *ReadCache // told of every key written, see Invalidates
}

var _ statemachine.Writer = (*VShardWriter)(nil)

// Reset points w at vshard of group g inside batch b. cache, when not nil,
// is the group's ValueCache: Get consults it and Set and Delete keep it in
// step with the batch.
func (w *VShardWriter) Reset(b *pebble.Batch, g ids.GroupID, vshard uint32, cache *ValueCache) {
	w.VShardReader.Reset(b, g, vshard)
	w.b = b
	w.cache = cache
	w.reads = nil
}

// Invalidates makes w record every key it writes in rc (ReadCache.Touch), so
// that committing the batch drops them from the group's read cache.
func (w *VShardWriter) Invalidates(rc *ReadCache) { w.reads = rc }

// Get implements statemachine.Reader, through the cache when there is one.
func (w *VShardWriter) Get(key []byte) ([]byte, error) {
	if w.cache == nil {
		return w.VShardReader.Get(key)
	}
	k := w.key(key)
	v, ok := w.cache.get(k)
	if !ok {
		val, present, err := getCopy(w.b, k)
		if err != nil {
			return nil, err
		}
		v = cachedValue{val: val, present: present}
		w.cache.put(k, v)
	}
	if !v.present {
		return nil, statemachine.ErrNotFound
	}
	return append([]byte(nil), v.val...), nil // a copy, as Reader promises
}

// Set implements statemachine.Writer.
func (w *VShardWriter) Set(key, value []byte) error {
	k := w.key(key)
	if err := w.b.Set(k, value, nil); err != nil {
		return err
	}
	w.reads.Touch(k)
	if w.cache != nil {
		w.cache.put(k, cachedValue{val: append([]byte(nil), value...), present: true})
	}
	return nil
}

// Delete implements statemachine.Writer.
func (w *VShardWriter) Delete(key []byte) error {
	k := w.key(key)
	if err := w.b.Delete(k, nil); err != nil {
		return err
	}
	w.reads.Touch(k)
	if w.cache != nil {
		w.cache.put(k, cachedValue{})
	}
	return nil
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
