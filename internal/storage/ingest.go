package storage

import (
	"context"
	"fmt"

	"github.com/cockroachdb/pebble/v2/objstorage/objstorageprovider"
	"github.com/cockroachdb/pebble/v2/sstable"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// SnapshotSST builds the table file that installs a Raft snapshot of one
// group: ingested, it replaces the group's log by the snapshot's truncation
// point, its applied state by the snapshot's, and its replicated state by the
// snapshot's data, all at one sequence number. Ingestion is atomic and
// durable when it returns, so a crash leaves either the old group or the new
// one, never a mix, and a snapshot of any size installs without holding its
// data in memory (a batch of 500 MB needed three times that in heap and
// stalled the node for seconds).
//
// The table's range deletions cover only older data: Pebble gives every key
// of an ingested table the same sequence number, and a range deletion hides
// only keys below its own, so the table's points survive its deletions.
type SnapshotSST struct {
	w      *sstable.Writer
	path   string
	prefix []byte
	key    []byte
	last   []byte
	n      int
}

// NewSnapshotSST starts the table of group g's snapshot at index/term with
// applied state st, in a new file at path. Add the state's pairs in
// increasing key order, then Finish.
func (e *Engine) NewSnapshotSST(path string, g ids.GroupID, index, term uint64, st *AppliedState) (*SnapshotSST, error) {
	f, err := e.opts.FS.Create(path, "snapshot")
	if err != nil {
		return nil, fmt.Errorf("create snapshot table: %w", err)
	}
	wo := e.opts.MakeWriterOptions(0, e.db.FormatMajorVersion().MaxTableFormat())
	w := sstable.NewWriter(objstorageprovider.NewFileWritable(f), wo)
	s := &SnapshotSST{w: w, path: path, prefix: GroupStatePrefix(g)}
	fail := func(err error) (*SnapshotSST, error) {
		_ = w.Close()
		_ = e.opts.FS.Remove(path)
		return nil, fmt.Errorf("group %s: snapshot table: %w", g, err)
	}
	// Range deletions, sorted and disjoint: the whole log, the whole state.
	if err := w.DeleteRange(entryKey(nil, g, 0), entryKey(nil, g, ^uint64(0))); err != nil {
		return fail(err)
	}
	if err := w.DeleteRange(s.prefix, prefixEnd(s.prefix)); err != nil {
		return fail(err)
	}
	// Points, in key order: truncation point (0x01), applied state (0x02),
	// then the state (0x03, added by Add).
	if err := w.Set(truncatedKey(g), truncatedValue(index, term)); err != nil {
		return fail(err)
	}
	v, err := EncodeAppliedState(nil, st)
	if err != nil {
		return fail(err)
	}
	if err := w.Set(appliedKey(g), v); err != nil {
		return fail(err)
	}
	s.key = append([]byte(nil), s.prefix...)
	return s, nil
}

// Add adds one pair of the group's state; k is relative to the group's state
// prefix. Keys must increase strictly: a snapshot that breaks the order is
// refused.
func (s *SnapshotSST) Add(k, v []byte) error {
	s.key = append(s.key[:len(s.prefix)], k...)
	if s.n > 0 && string(s.key) <= string(s.last) {
		return fmt.Errorf("%w: snapshot keys out of order", ErrCorrupt)
	}
	s.last = append(s.last[:0], s.key...)
	s.n++
	return s.w.Set(s.key, v)
}

// Finish completes and syncs the file.
func (s *SnapshotSST) Finish() error {
	if err := s.w.Close(); err != nil {
		return fmt.Errorf("finish snapshot table: %w", err)
	}
	return nil
}

// Abort closes and removes an unfinished table.
func (s *SnapshotSST) Abort(e *Engine) {
	_ = s.w.Close()
	_ = e.opts.FS.Remove(s.path)
}

// Ingest atomically adds the tables at paths to the engine (see
// SnapshotSST). The files are linked into the store; the caller may remove
// its paths afterwards.
func (e *Engine) Ingest(ctx context.Context, paths ...string) error {
	if err := e.db.Ingest(ctx, paths); err != nil {
		return fmt.Errorf("ingest %v: %w", paths, err)
	}
	return nil
}

// StageSnapshotInstall tells the log that a snapshot at index replaces it,
// before the table that installs it is ingested (see DidInstallSnapshot).
func (l *RaftLog) StageSnapshotInstall(index uint64) {
	l.mu.Lock()
	l.stagedLast = index
	l.mu.Unlock()
}
