package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// Entry cache bounds per group. The cache holds the newest entries so that
// the common reads (appends to followers, applying just-committed entries)
// never touch Pebble.
const (
	maxCachedEntries = 4096
	maxCachedBytes   = 4 << 20
)

// RaftLog is the durable Raft log of one group on one node. It implements
// raft.Storage over the node's shared engine.
//
// Writes are staged into a caller-owned batch (Write* methods) so that many
// groups share one commit and one fsync; once that batch has committed the
// caller reports it with the matching Did* method, which updates the
// in-memory view. Until then raft keeps the entries in its unstable log and
// does not read them from here.
type RaftLog struct {
	db    *pebble.DB
	group ids.GroupID

	mu         sync.Mutex
	hardState  raftpb.HardState
	confState  raftpb.ConfState // as of the applied state at load time (InitialState)
	truncIndex uint64           // entries <= truncIndex are compacted away
	truncTerm  uint64
	lastIndex  uint64
	stagedLast uint64         // last index once every staged write has committed
	cache      []raftpb.Entry // a contiguous suffix of the log, ending at lastIndex
	cacheBytes int

	// snapshot builds the snapshot raft asks for; installed by the host.
	snapshot func() (raftpb.Snapshot, error)
}

var _ raft.Storage = (*RaftLog)(nil)

// LoadRaftLog reads group g's Raft state from the engine. A group with no
// stored state loads as an empty log (an uninitialized replica).
func LoadRaftLog(e *Engine, g ids.GroupID) (*RaftLog, AppliedState, error) {
	l := &RaftLog{db: e.db, group: g}
	var applied AppliedState
	if v, ok, err := getCopy(e.db, hardStateKey(g)); err != nil {
		return nil, applied, err
	} else if ok {
		if err := l.hardState.Unmarshal(v); err != nil {
			return nil, applied, fmt.Errorf("%w: group %s hard state: %v", ErrCorrupt, g, err)
		}
	}
	if v, ok, err := getCopy(e.db, truncatedKey(g)); err != nil {
		return nil, applied, err
	} else if ok {
		if len(v) != 16 {
			return nil, applied, fmt.Errorf("%w: group %s truncated state of %d bytes", ErrCorrupt, g, len(v))
		}
		l.truncIndex = binary.BigEndian.Uint64(v)
		l.truncTerm = binary.BigEndian.Uint64(v[8:])
	}
	if v, ok, err := getCopy(e.db, appliedKey(g)); err != nil {
		return nil, applied, err
	} else if ok {
		if applied, err = DecodeAppliedState(v); err != nil {
			return nil, applied, fmt.Errorf("group %s: %w", g, err)
		}
	}
	l.confState = cloneConfState(applied.ConfState)
	l.lastIndex = l.truncIndex
	lo := entryKey(nil, g, 0)
	hi := entryKey(nil, g, ^uint64(0))
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, applied, fmt.Errorf("group %s: open log iterator: %w", g, err)
	}
	if it.Last() {
		k := it.Key()
		l.lastIndex = binary.BigEndian.Uint64(k[len(k)-8:])
	}
	if err := it.Close(); err != nil {
		return nil, applied, fmt.Errorf("group %s: scan log: %w", g, err)
	}
	if l.lastIndex < l.truncIndex {
		return nil, applied, fmt.Errorf("%w: group %s last index %d below truncated index %d",
			ErrCorrupt, g, l.lastIndex, l.truncIndex)
	}
	// Committed entries that were already durable locally are applied while
	// the next append is being synced (see raftstore), so the applied index
	// can reach disk before the hard state that raised the commit index.
	// Those entries were committed, so the commit index is raised to match.
	if applied.Index > l.hardState.Commit {
		l.hardState.Commit = applied.Index
	}
	l.stagedLast = l.lastIndex
	if applied.Index > l.lastIndex || applied.Index < l.truncIndex {
		return nil, applied, fmt.Errorf("%w: group %s applied index %d outside log [%d, %d]",
			ErrCorrupt, g, applied.Index, l.truncIndex, l.lastIndex)
	}
	return l, applied, nil
}

// SetSnapshotFunc installs the function that builds snapshots on demand.
func (l *RaftLog) SetSnapshotFunc(f func() (raftpb.Snapshot, error)) {
	l.mu.Lock()
	l.snapshot = f
	l.mu.Unlock()
}

// InitialState implements raft.Storage.
func (l *RaftLog) InitialState() (raftpb.HardState, raftpb.ConfState, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.hardState, cloneConfState(l.confState), nil
}

// Entries implements raft.Storage.
func (l *RaftLog) Entries(lo, hi, maxSize uint64) ([]raftpb.Entry, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if lo <= l.truncIndex {
		return nil, raft.ErrCompacted
	}
	if hi > l.lastIndex+1 {
		return nil, fmt.Errorf("group %s: entries [%d, %d) beyond last index %d: %w",
			l.group, lo, hi, l.lastIndex, raft.ErrUnavailable)
	}
	if lo >= hi {
		return nil, nil
	}
	if n := len(l.cache); n > 0 && lo >= l.cache[0].Index {
		off := l.cache[0].Index
		ents := l.cache[lo-off : hi-off : hi-off]
		return limitSize(ents, maxSize), nil
	}
	return l.readEntries(lo, hi, maxSize)
}

func (l *RaftLog) readEntries(lo, hi, maxSize uint64) ([]raftpb.Entry, error) {
	it, err := l.db.NewIter(&pebble.IterOptions{
		LowerBound: entryKey(nil, l.group, lo),
		UpperBound: entryKey(nil, l.group, hi),
	})
	if err != nil {
		return nil, fmt.Errorf("group %s: open log iterator: %w", l.group, err)
	}
	defer it.Close()
	var ents []raftpb.Entry
	var size uint64
	next := lo
	for ok := it.First(); ok; ok = it.Next() {
		var e raftpb.Entry
		if err := e.Unmarshal(it.Value()); err != nil {
			return nil, fmt.Errorf("%w: group %s entry %d: %v", ErrCorrupt, l.group, next, err)
		}
		if e.Index != next {
			return nil, fmt.Errorf("%w: group %s log gap: found %d, want %d", ErrCorrupt, l.group, e.Index, next)
		}
		size += uint64(e.Size())
		if len(ents) > 0 && size > maxSize {
			break
		}
		ents = append(ents, e)
		next++
	}
	if err := it.Error(); err != nil {
		return nil, fmt.Errorf("group %s: read log: %w", l.group, err)
	}
	if len(ents) == 0 || (next < hi && size <= maxSize) {
		return nil, fmt.Errorf("%w: group %s log missing entries from %d", ErrCorrupt, l.group, next)
	}
	return ents, nil
}

func limitSize(ents []raftpb.Entry, maxSize uint64) []raftpb.Entry {
	if len(ents) == 0 {
		return ents
	}
	size := uint64(ents[0].Size())
	for i := 1; i < len(ents); i++ {
		size += uint64(ents[i].Size())
		if size > maxSize {
			return ents[:i:i]
		}
	}
	return ents
}

// Term implements raft.Storage.
func (l *RaftLog) Term(i uint64) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case i == l.truncIndex:
		return l.truncTerm, nil
	case i < l.truncIndex:
		return 0, raft.ErrCompacted
	case i > l.lastIndex:
		return 0, raft.ErrUnavailable
	}
	if n := len(l.cache); n > 0 && i >= l.cache[0].Index {
		return l.cache[i-l.cache[0].Index].Term, nil
	}
	v, ok, err := getCopy(l.db, entryKey(nil, l.group, i))
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("%w: group %s entry %d missing", ErrCorrupt, l.group, i)
	}
	var e raftpb.Entry
	if err := e.Unmarshal(v); err != nil {
		return 0, fmt.Errorf("%w: group %s entry %d: %v", ErrCorrupt, l.group, i, err)
	}
	return e.Term, nil
}

// LastIndex implements raft.Storage.
func (l *RaftLog) LastIndex() (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastIndex, nil
}

// FirstIndex implements raft.Storage.
func (l *RaftLog) FirstIndex() (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.truncIndex + 1, nil
}

// Snapshot implements raft.Storage. The snapshot's data is not built here:
// the host streams it to the follower from a consistent engine snapshot.
func (l *RaftLog) Snapshot() (raftpb.Snapshot, error) {
	l.mu.Lock()
	f := l.snapshot
	l.mu.Unlock()
	if f == nil {
		return raftpb.Snapshot{}, raft.ErrSnapshotTemporarilyUnavailable
	}
	return f()
}

// Bounds returns the first and last index held and the truncated term.
func (l *RaftLog) Bounds() (first, last uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.truncIndex + 1, l.lastIndex
}

// HardState returns the last persisted hard state.
func (l *RaftLog) HardState() raftpb.HardState {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.hardState
}

// WriteAppend stages ents (contiguous, as raft hands them out) into b,
// replacing any conflicting suffix of the stored log — including a suffix
// staged by an earlier WriteAppend whose batch has not committed yet, so
// several appends of one group can share a batch.
func (l *RaftLog) WriteAppend(b *pebble.Batch, ents []raftpb.Entry) error {
	if len(ents) == 0 {
		return nil
	}
	l.mu.Lock()
	last := l.stagedLast
	l.stagedLast = ents[len(ents)-1].Index
	l.mu.Unlock()
	var key [18]byte
	for i := range ents {
		e := &ents[i]
		k := entryKey(key[:0], l.group, e.Index)
		op := b.SetDeferred(len(k), e.Size())
		copy(op.Key, k)
		if _, err := e.MarshalTo(op.Value); err != nil {
			return fmt.Errorf("group %s: encode entry %d: %w", l.group, e.Index, err)
		}
		if err := op.Finish(); err != nil {
			return fmt.Errorf("group %s: stage entry %d: %w", l.group, e.Index, err)
		}
	}
	if newLast := ents[len(ents)-1].Index; newLast < last {
		// Entries after the new tail belong to an overwritten suffix.
		if err := b.DeleteRange(entryKey(nil, l.group, newLast+1), entryKey(nil, l.group, last+1), nil); err != nil {
			return fmt.Errorf("group %s: drop overwritten suffix: %w", l.group, err)
		}
	}
	return nil
}

// DidAppend records that a batch holding WriteAppend(ents) has committed.
func (l *RaftLog) DidAppend(ents []raftpb.Entry) {
	if len(ents) == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	first := ents[0].Index
	l.lastIndex = ents[len(ents)-1].Index
	// Keep the cache a contiguous suffix: drop what the append replaced. A
	// cache that is not simply extended is rebuilt in a fresh array, so that
	// slices handed out earlier never see their entries change under them.
	if n := len(l.cache); n > 0 && first != l.cache[n-1].Index+1 {
		off := l.cache[0].Index
		if first > off && first <= l.cache[n-1].Index {
			l.cache = append([]raftpb.Entry(nil), l.cache[:first-off]...)
		} else {
			l.cache = nil
		}
		l.cacheBytes = 0
		for i := range l.cache {
			l.cacheBytes += l.cache[i].Size()
		}
	}
	for i := range ents {
		l.cache = append(l.cache, ents[i])
		l.cacheBytes += ents[i].Size()
	}
	l.trimCacheLocked()
}

// trimCacheLocked drops the oldest entries once a bound is exceeded, down to
// three quarters of the bounds so the copy it makes is amortized.
func (l *RaftLog) trimCacheLocked() {
	if len(l.cache) <= maxCachedEntries && l.cacheBytes <= maxCachedBytes {
		return
	}
	drop := 0
	for drop < len(l.cache) && (len(l.cache)-drop > maxCachedEntries*3/4 || l.cacheBytes > maxCachedBytes*3/4) {
		l.cacheBytes -= l.cache[drop].Size()
		drop++
	}
	if drop > 0 {
		// Copy so the dropped prefix can be garbage collected.
		l.cache = append([]raftpb.Entry(nil), l.cache[drop:]...)
	}
}

// WriteHardState stages hs into b.
func (l *RaftLog) WriteHardState(b *pebble.Batch, hs raftpb.HardState) error {
	v, err := hs.Marshal()
	if err != nil {
		return fmt.Errorf("group %s: encode hard state: %w", l.group, err)
	}
	return b.Set(hardStateKey(l.group), v, nil)
}

// DidWriteHardState records that a batch holding WriteHardState(hs) committed.
func (l *RaftLog) DidWriteHardState(hs raftpb.HardState) {
	l.mu.Lock()
	l.hardState = hs
	l.mu.Unlock()
}

// WriteTruncate stages the removal of every entry up to and including index,
// whose term is term. The caller guarantees index <= the applied index.
func (l *RaftLog) WriteTruncate(b *pebble.Batch, index, term uint64) error {
	l.mu.Lock()
	from := l.truncIndex + 1
	l.mu.Unlock()
	if index < from {
		return nil
	}
	if err := b.DeleteRange(entryKey(nil, l.group, from), entryKey(nil, l.group, index+1), nil); err != nil {
		return fmt.Errorf("group %s: truncate log: %w", l.group, err)
	}
	return b.Set(truncatedKey(l.group), truncatedValue(index, term), nil)
}

// DidTruncate records that a batch holding WriteTruncate committed.
func (l *RaftLog) DidTruncate(index, term uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if index <= l.truncIndex {
		return
	}
	l.truncIndex, l.truncTerm = index, term
	if n := len(l.cache); n > 0 && l.cache[0].Index <= index {
		keep := l.cache[min(uint64(n), index+1-l.cache[0].Index):]
		l.cache = append([]raftpb.Entry(nil), keep...)
		l.cacheBytes = 0
		for i := range l.cache {
			l.cacheBytes += l.cache[i].Size()
		}
	}
}

// WriteSnapshotInstall stages the replacement of the whole log by a snapshot
// at (index, term): every entry goes, the log restarts after index.
func (l *RaftLog) WriteSnapshotInstall(b *pebble.Batch, index, term uint64) error {
	l.mu.Lock()
	l.stagedLast = index
	l.mu.Unlock()
	if err := b.DeleteRange(entryKey(nil, l.group, 0), entryKey(nil, l.group, ^uint64(0)), nil); err != nil {
		return fmt.Errorf("group %s: clear log for snapshot: %w", l.group, err)
	}
	return b.Set(truncatedKey(l.group), truncatedValue(index, term), nil)
}

// DidInstallSnapshot records that a batch holding WriteSnapshotInstall
// committed.
func (l *RaftLog) DidInstallSnapshot(index, term uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.truncIndex, l.truncTerm, l.lastIndex = index, term, index
	l.cache, l.cacheBytes = nil, 0
}

func truncatedValue(index, term uint64) []byte {
	v := binary.BigEndian.AppendUint64(make([]byte, 0, 16), index)
	return binary.BigEndian.AppendUint64(v, term)
}

// getCopy reads key from r and returns a copy of its value.
func getCopy(r pebble.Reader, key []byte) ([]byte, bool, error) {
	v, closer, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read %x: %w", key, err)
	}
	out := append([]byte(nil), v...)
	return out, true, closer.Close()
}
