package storage

import (
	"bytes"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
)

// KeyOrder rewrites batches in key order before they are committed.
//
// Why: Pebble inserts a batch into its memtable skiplist record by record,
// reusing the previous record's position only when the next key lands near
// it. In arbitrary order each insertion searches the skiplist from the top,
// one cache miss per level, and under load that search was the largest
// single cost of applying committed entries. In key order, consecutive
// insertions start from nearby positions.
//
// The rewrite keeps every record's effect: records of one key keep their
// order (later ones win, as before), and range deletions, which Pebble keeps
// in a skiplist of their own, go after the point records. A batch in which a
// range deletion covers one of its point records is left as it is, since
// moving either would change which one wins. A KeyOrder is not safe for
// concurrent use; it keeps its buffers between batches.
type KeyOrder struct {
	points []orderedRecord
	ranges []orderedRecord
	out    *pebble.Batch
}

type orderedRecord struct {
	kind       pebble.InternalKeyKind
	seq        int
	key, value []byte
}

// Rewrite returns a batch with src's records in key order, or src itself
// when it cannot be reordered (see KeyOrder). The returned batch is valid
// until the next call; src must stay unchanged until it is committed.
func (o *KeyOrder) Rewrite(db *pebble.DB, src *pebble.Batch) (*pebble.Batch, error) {
	o.points, o.ranges = o.points[:0], o.ranges[:0]
	r := src.Reader()
	for {
		kind, k, v, ok, err := r.Next()
		if err != nil {
			return nil, fmt.Errorf("read batch: %w", err)
		}
		if !ok {
			break
		}
		rec := orderedRecord{kind: kind, seq: len(o.points) + len(o.ranges), key: k, value: v}
		switch kind {
		case pebble.InternalKeyKindSet, pebble.InternalKeyKindDelete:
			o.points = append(o.points, rec)
		case pebble.InternalKeyKindRangeDelete:
			o.ranges = append(o.ranges, rec)
		default:
			return src, nil
		}
	}
	for _, rd := range o.ranges {
		for _, p := range o.points {
			if bytes.Compare(p.key, rd.key) >= 0 && bytes.Compare(p.key, rd.value) < 0 {
				return src, nil
			}
		}
	}
	if slices.IsSortedFunc(o.points, compareRecords) {
		return src, nil
	}
	slices.SortFunc(o.points, compareRecords)
	if o.out == nil {
		o.out = db.NewBatch()
	}
	o.out.Reset()
	for _, p := range o.points {
		var err error
		if p.kind == pebble.InternalKeyKindSet {
			err = o.out.Set(p.key, p.value, nil)
		} else {
			err = o.out.Delete(p.key, nil)
		}
		if err != nil {
			return nil, err
		}
	}
	for _, rd := range o.ranges {
		if err := o.out.DeleteRange(rd.key, rd.value, nil); err != nil {
			return nil, err
		}
	}
	clear(o.points)
	clear(o.ranges)
	return o.out, nil
}

func compareRecords(a, b orderedRecord) int {
	if c := bytes.Compare(a.key, b.key); c != 0 {
		return c
	}
	return a.seq - b.seq
}

// Close releases the rewritten batch.
func (o *KeyOrder) Close() error {
	if o.out == nil {
		return nil
	}
	err := o.out.Close()
	o.out = nil
	return err
}
