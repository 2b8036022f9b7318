package storage

import (
	"bytes"
	"errors"
	"math"
	"reflect"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"pgregory.net/rapid"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

const noLimit = math.MaxUint64

// maxSizesFor returns the size limits worth trying on ents: zero, each
// boundary around the running totals of the first entries, and no limit.
func maxSizesFor(ents []raftpb.Entry) []uint64 {
	sizes := []uint64{0, 1, noLimit}
	var total uint64
	for i := range ents {
		total += uint64(ents[i].Size())
		if i < 3 {
			sizes = append(sizes, total-1, total, total+1)
		}
	}
	return append(sizes, total)
}

// checkEntries checks Entries(lo, hi, maxSize) against want, the log held
// from first on.
func checkEntries(t tb, l *RaftLog, first uint64, want []raftpb.Entry, lo, hi, maxSize uint64) {
	t.Helper()
	got, err := l.Entries(lo, hi, maxSize)
	if err != nil {
		t.Fatalf("Entries(%d, %d, %d): %v", lo, hi, maxSize, err)
	}
	exp := limitRef(want[lo-first:hi-first], maxSize)
	if !entsEqual(got, exp) {
		t.Fatalf("Entries(%d, %d, %d) = %s, want %s", lo, hi, maxSize, describe(got), describe(exp))
	}
	if lo < hi && len(got) == 0 {
		t.Fatalf("Entries(%d, %d, %d) returned nothing; raft needs at least one entry", lo, hi, maxSize)
	}
}

// checkLog verifies that l holds exactly want (the entries after truncIndex)
// and answers for the truncated state (truncIndex, truncTerm). With
// exhaustive it reads every sub-range with every interesting size limit.
func checkLog(t tb, l *RaftLog, truncIndex, truncTerm uint64, want []raftpb.Entry, exhaustive bool) {
	t.Helper()
	first := truncIndex + 1
	last := truncIndex + uint64(len(want))
	if got, err := l.FirstIndex(); err != nil || got != first {
		t.Fatalf("FirstIndex = %d, %v; want %d", got, err, first)
	}
	if got, err := l.LastIndex(); err != nil || got != last {
		t.Fatalf("LastIndex = %d, %v; want %d", got, err, last)
	}
	if bf, bl := l.Bounds(); bf != first || bl != last {
		t.Fatalf("Bounds = %d, %d; want %d, %d", bf, bl, first, last)
	}
	checkCache(t, l, first, want)
	// raft compares these errors with ==, so they must not be wrapped.
	if got, err := l.Term(truncIndex); err != nil || got != truncTerm {
		t.Fatalf("Term(%d) = %d, %v; want truncated term %d", truncIndex, got, err, truncTerm)
	}
	if truncIndex > 0 {
		if _, err := l.Term(truncIndex - 1); err != raft.ErrCompacted {
			t.Fatalf("Term(%d) below the log: err %v, want ErrCompacted", truncIndex-1, err)
		}
		if _, err := l.Entries(truncIndex, last+1, noLimit); err != raft.ErrCompacted {
			t.Fatalf("Entries(%d, ...) at the truncated index: err %v, want ErrCompacted", truncIndex, err)
		}
		if _, err := l.Entries(1, last+1, noLimit); err != raft.ErrCompacted {
			t.Fatalf("Entries(1, ...) below the log: err %v, want ErrCompacted", err)
		}
	}
	if _, err := l.Term(last + 1); err != raft.ErrUnavailable {
		t.Fatalf("Term(%d) beyond the log: err %v, want ErrUnavailable", last+1, err)
	}
	if _, err := l.Entries(first, last+2, noLimit); !errors.Is(err, raft.ErrUnavailable) {
		t.Fatalf("Entries(%d, %d) beyond the log: err %v, want ErrUnavailable", first, last+2, err)
	}
	for i := first; i <= last; i++ {
		if got, err := l.Term(i); err != nil || got != want[i-first].Term {
			t.Fatalf("Term(%d) = %d, %v; want %d", i, got, err, want[i-first].Term)
		}
	}
	if got, err := l.Entries(first, first, noLimit); err != nil || len(got) != 0 {
		t.Fatalf("Entries of an empty range = %s, %v", describe(got), err)
	}
	if !exhaustive {
		if len(want) > 0 {
			for _, ms := range maxSizesFor(want) {
				checkEntries(t, l, first, want, first, last+1, ms)
			}
		}
		return
	}
	for lo := first; lo <= last; lo++ {
		for hi := lo + 1; hi <= last+1; hi++ {
			for _, ms := range maxSizesFor(want[lo-first : hi-first]) {
				checkEntries(t, l, first, want, lo, hi, ms)
			}
		}
	}
}

// checkCache checks the cache's invariant: a contiguous run of the log's
// entries ending at the last index, with its size accounted exactly.
func checkCache(t tb, l *RaftLog, first uint64, want []raftpb.Entry) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.cache) == 0 {
		if l.cacheBytes != 0 {
			t.Fatalf("empty cache accounts for %d bytes", l.cacheBytes)
		}
		return
	}
	c0 := l.cache[0].Index
	if c0 < first || c0+uint64(len(l.cache))-1 != l.lastIndex {
		t.Fatalf("cache holds [%d, %d], log is [%d, %d]", c0, c0+uint64(len(l.cache))-1, first, l.lastIndex)
	}
	if !entsEqual(l.cache, want[c0-first:]) {
		t.Fatalf("cache = %s, log from %d = %s", describe(l.cache), c0, describe(want[c0-first:]))
	}
	size := 0
	for i := range l.cache {
		size += l.cache[i].Size()
	}
	if size != l.cacheBytes {
		t.Fatalf("cacheBytes = %d, cached entries hold %d", l.cacheBytes, size)
	}
}

func TestRaftLogEmpty(t *testing.T) {
	e := newTestEngine(t)
	l, st := loadLog(t, e.Engine, 1)
	if !reflect.DeepEqual(st, AppliedState{}) {
		t.Fatalf("applied state of a new group = %+v, want zero", st)
	}
	hs, cs, err := l.InitialState()
	if err != nil || !raft.IsEmptyHardState(hs) || len(cs.Voters)+len(cs.Learners) != 0 {
		t.Fatalf("InitialState = %+v, %+v, %v; want empty", hs, cs, err)
	}
	checkLog(t, l, 0, 0, nil, true)
	if _, err := l.Entries(0, 1, noLimit); err != raft.ErrCompacted {
		t.Fatalf("Entries(0, 1): err %v, want ErrCompacted", err)
	}
	if _, err := l.Snapshot(); err != raft.ErrSnapshotTemporarilyUnavailable {
		t.Fatalf("Snapshot without a snapshot func: err %v, want ErrSnapshotTemporarilyUnavailable", err)
	}
	want := raftpb.Snapshot{Metadata: raftpb.SnapshotMetadata{Index: 7, Term: 2}}
	l.SetSnapshotFunc(func() (raftpb.Snapshot, error) { return want, nil })
	if got, err := l.Snapshot(); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("Snapshot = %+v, %v; want %+v", got, err, want)
	}
}

func TestRaftLogAppendAndRead(t *testing.T) {
	e := newTestEngine(t)
	l, _ := loadLog(t, e.Engine, 3)
	want := append(mkEnts(1, 6, 1), mkEnts(6, 12, 2)...)
	appendEnts(t, e.Engine, l, want[:5])
	appendEnts(t, e.Engine, l, want[5:])
	if len(l.cache) != len(want) {
		t.Fatalf("cache holds %d entries after appends, want %d", len(l.cache), len(want))
	}
	checkLog(t, l, 0, 0, want, true)

	// Another group's log is separate.
	other, _ := loadLog(t, e.Engine, 4)
	checkLog(t, other, 0, 0, nil, false)

	e.reopen()
	l, _ = loadLog(t, e.Engine, 3)
	if len(l.cache) != 0 {
		t.Fatalf("a freshly loaded log has %d cached entries; the reads below would not touch Pebble", len(l.cache))
	}
	checkLog(t, l, 0, 0, want, true)

	// Appending after a reload extends the stored log.
	more := mkEnts(12, 15, 3)
	appendEnts(t, e.Engine, l, more)
	want = append(want, more...)
	checkLog(t, l, 0, 0, want, true)
}

func TestRaftLogHandedOutSlicesNeverChange(t *testing.T) {
	e := newTestEngine(t)
	l, _ := loadLog(t, e.Engine, 1)
	appendEnts(t, e.Engine, l, mkEnts(1, 11, 1))

	got, err := l.Entries(3, 8, noLimit)
	if err != nil {
		t.Fatal(err)
	}
	snapshot := cloneEnts(got)
	check := func(step string) {
		t.Helper()
		if !reflect.DeepEqual(got, snapshot) {
			t.Fatalf("after %s, a slice returned earlier changed: %s, was %s", step, describe(got), describe(snapshot))
		}
	}

	// The caller may append to what it got without touching the log.
	_ = append(got, raftpb.Entry{Index: 99, Term: 99, Data: []byte("bogus")})
	checkLog(t, l, 0, 0, mkEnts(1, 11, 1), false)
	check("append to the returned slice")

	appendEnts(t, e.Engine, l, mkEnts(11, 13, 1))
	check("an extending append")

	// Overwrite 5.. with a shorter tail of a new term.
	appendEnts(t, e.Engine, l, mkEnts(5, 7, 2))
	check("a conflicting append")

	commit(t, e.Engine, func(b *pebble.Batch) error { return l.WriteTruncate(b, 4, 1) })
	l.DidTruncate(4, 1)
	check("a truncation")

	appendEnts(t, e.Engine, l, mkEnts(5, 6, 3))
	check("a second conflicting append")
}

func TestRaftLogConflictingAppend(t *testing.T) {
	e := newTestEngine(t)
	const g = ids.GroupID(2)
	l, _ := loadLog(t, e.Engine, g)
	appendEnts(t, e.Engine, l, mkEnts(1, 11, 1))

	// A new leader overwrites 4.. with a shorter tail: 7..10 must go.
	appendEnts(t, e.Engine, l, mkEnts(4, 7, 2))
	want := append(mkEnts(1, 4, 1), mkEnts(4, 7, 2)...)
	checkLog(t, l, 0, 0, want, true)
	checkNoEntriesAbove(t, e.Engine, g, 6)

	e.reopen()
	l, _ = loadLog(t, e.Engine, g)
	checkLog(t, l, 0, 0, want, true)

	// Extending after the reload must not bring back the stale entries.
	appendEnts(t, e.Engine, l, mkEnts(7, 8, 2))
	want = append(want, mkEnts(7, 8, 2)...)
	checkLog(t, l, 0, 0, want, true)
	checkNoEntriesAbove(t, e.Engine, g, 7)

	// Overwrite with the cache empty (fresh load) ...
	e.reopen()
	l, _ = loadLog(t, e.Engine, g)
	appendEnts(t, e.Engine, l, mkEnts(6, 7, 3))
	want = append(want[:5], mkEnts(6, 7, 3)...)
	checkLog(t, l, 0, 0, want, true)
	checkNoEntriesAbove(t, e.Engine, g, 6)

	// ... and with a tail starting before the cached entries.
	appendEnts(t, e.Engine, l, mkEnts(2, 4, 4))
	want = append(want[:1], mkEnts(2, 4, 4)...)
	checkLog(t, l, 0, 0, want, true)
	checkNoEntriesAbove(t, e.Engine, g, 3)

	// A conflicting tail as long as the old one replaces it in place.
	appendEnts(t, e.Engine, l, mkEnts(2, 4, 5))
	want = append(want[:1], mkEnts(2, 4, 5)...)
	checkLog(t, l, 0, 0, want, true)

	e.reopen()
	l, _ = loadLog(t, e.Engine, g)
	checkLog(t, l, 0, 0, want, true)
}

// checkNoEntriesAbove asserts that Pebble holds no entry of g above last.
func checkNoEntriesAbove(t tb, e *Engine, g ids.GroupID, last uint64) {
	t.Helper()
	if ks := keysIn(t, e.DB(), entryKey(nil, g, last+1), entryKey(nil, g, math.MaxUint64)); len(ks) != 0 {
		t.Fatalf("%d stale entries of %s above %d remain in Pebble, first %x", len(ks), g, last, ks[0])
	}
}

func TestRaftLogTruncate(t *testing.T) {
	e := newTestEngine(t)
	const g = ids.GroupID(5)
	l, _ := loadLog(t, e.Engine, g)
	all := append(mkEnts(1, 4, 1), mkEnts(4, 11, 2)...)
	appendEnts(t, e.Engine, l, all)

	truncate := func(index, term uint64) {
		t.Helper()
		// The host truncates only up to the applied index, written with it.
		commit(t, e.Engine, func(b *pebble.Batch) error {
			if err := WriteAppliedState(b, g, &AppliedState{Index: index, Term: term}); err != nil {
				return err
			}
			return l.WriteTruncate(b, index, term)
		})
		l.DidTruncate(index, term)
	}
	truncate(3, 1)
	checkLog(t, l, 3, 1, all[3:], true)
	if ks := keysIn(t, e.DB(), entryKey(nil, g, 0), entryKey(nil, g, 4)); len(ks) != 0 {
		t.Fatalf("%d truncated entries remain in Pebble", len(ks))
	}

	e.reopen()
	l, _ = loadLog(t, e.Engine, g)
	checkLog(t, l, 3, 1, all[3:], true)

	// Truncating at or below the truncated index stages nothing.
	b := e.DB().NewBatch()
	if err := l.WriteTruncate(b, 3, 1); err != nil || !b.Empty() {
		t.Fatalf("WriteTruncate at the truncated index: err %v, batch empty %v", err, b.Empty())
	}
	_ = b.Close()
	l.DidTruncate(2, 1)
	checkLog(t, l, 3, 1, all[3:], false)

	// Truncate from a reloaded log (empty cache), then up to the last index.
	truncate(7, 2)
	checkLog(t, l, 7, 2, all[7:], true)
	appendEnts(t, e.Engine, l, mkEnts(11, 13, 3))
	all = append(all, mkEnts(11, 13, 3)...)
	checkLog(t, l, 7, 2, all[7:], true)
	truncate(12, 3)
	checkLog(t, l, 12, 3, nil, true)

	e.reopen()
	l, _ = loadLog(t, e.Engine, g)
	checkLog(t, l, 12, 3, nil, true)
	appendEnts(t, e.Engine, l, mkEnts(13, 15, 3))
	checkLog(t, l, 12, 3, mkEnts(13, 15, 3), true)
}

func TestRaftLogSnapshotInstall(t *testing.T) {
	e := newTestEngine(t)
	const g = ids.GroupID(6)
	l, _ := loadLog(t, e.Engine, g)
	appendEnts(t, e.Engine, l, mkEnts(1, 11, 1))

	install := func(index, term uint64) {
		t.Helper()
		commit(t, e.Engine, func(b *pebble.Batch) error {
			if err := WriteAppliedState(b, g, &AppliedState{Index: index, Term: term}); err != nil {
				return err
			}
			return l.WriteSnapshotInstall(b, index, term)
		})
		l.DidInstallSnapshot(index, term)
	}

	// A snapshot beyond the log.
	install(20, 3)
	checkLog(t, l, 20, 3, nil, true)
	if ks := keysIn(t, e.DB(), entryKey(nil, g, 0), entryKey(nil, g, math.MaxUint64)); len(ks) != 0 {
		t.Fatalf("%d entries remain in Pebble after a snapshot install", len(ks))
	}
	e.reopen()
	l, st := loadLog(t, e.Engine, g)
	if st.Index != 20 {
		t.Fatalf("applied index after reload = %d, want 20", st.Index)
	}
	checkLog(t, l, 20, 3, nil, true)

	// The log restarts after the snapshot.
	appendEnts(t, e.Engine, l, mkEnts(21, 26, 3))
	checkLog(t, l, 20, 3, mkEnts(21, 26, 3), true)

	// A snapshot inside the log drops the entries after it too.
	install(23, 3)
	checkLog(t, l, 23, 3, nil, true)
	e.reopen()
	l, _ = loadLog(t, e.Engine, g)
	checkLog(t, l, 23, 3, nil, true)
	if ks := keysIn(t, e.DB(), entryKey(nil, g, 0), entryKey(nil, g, math.MaxUint64)); len(ks) != 0 {
		t.Fatalf("%d entries remain in Pebble after a snapshot install inside the log", len(ks))
	}
}

func TestRaftLogHardStateAndConfState(t *testing.T) {
	e := newTestEngine(t)
	const g = ids.GroupID(7)
	l, _ := loadLog(t, e.Engine, g)
	appendEnts(t, e.Engine, l, mkEnts(1, 6, 2))
	hs := raftpb.HardState{Term: 3, Vote: 2, Commit: 4}
	st := AppliedState{
		Index:        3,
		Term:         2,
		ConfState:    raftpb.ConfState{Voters: []uint64{1, 2, 3}, Learners: []uint64{4}},
		Replicas:     []ReplicaDesc{{1, 10}, {2, 20}, {3, 30}, {4, 40}},
		MaxReplicaID: 4,
	}
	commit(t, e.Engine, func(b *pebble.Batch) error {
		if err := l.WriteHardState(b, hs); err != nil {
			return err
		}
		return WriteAppliedState(b, g, &st)
	})
	l.DidWriteHardState(hs)
	if got := l.HardState(); got != hs {
		t.Fatalf("HardState after DidWriteHardState = %+v, want %+v", got, hs)
	}

	e.reopen()
	l, gotSt := loadLog(t, e.Engine, g)
	if !reflect.DeepEqual(gotSt, st) {
		t.Fatalf("applied state after reload = %+v, want %+v", gotSt, st)
	}
	gotHS, gotCS, err := l.InitialState()
	if err != nil || gotHS != hs || !reflect.DeepEqual(gotCS, st.ConfState) {
		t.Fatalf("InitialState = %+v, %+v, %v; want %+v, %+v", gotHS, gotCS, err, hs, st.ConfState)
	}
	if got := l.HardState(); got != hs {
		t.Fatalf("HardState after reload = %+v, want %+v", got, hs)
	}
	// The conf state handed out is a copy.
	gotCS.Voters[0] = 99
	gotSt.ConfState.Voters[1] = 98
	if _, cs, _ := l.InitialState(); !reflect.DeepEqual(cs, st.ConfState) {
		t.Fatalf("InitialState conf state changed by its caller: %+v", cs)
	}

	// The applied index reached disk before the hard state that committed
	// it: loading raises the commit index, leaving term and vote alone.
	st.Index, st.Term = 5, 2
	commit(t, e.Engine, func(b *pebble.Batch) error { return WriteAppliedState(b, g, &st) })
	e.reopen()
	l, _ = loadLog(t, e.Engine, g)
	want := raftpb.HardState{Term: 3, Vote: 2, Commit: 5}
	if gotHS, _, _ := l.InitialState(); gotHS != want {
		t.Fatalf("InitialState hard state with applied index 5 > commit 4 = %+v, want %+v", gotHS, want)
	}

	// A commit index above the applied index is left as is.
	hs = raftpb.HardState{Term: 4, Vote: 3, Commit: 5}
	commit(t, e.Engine, func(b *pebble.Batch) error {
		if err := WriteAppliedState(b, g, &AppliedState{Index: 2, Term: 1}); err != nil {
			return err
		}
		return l.WriteHardState(b, hs)
	})
	e.reopen()
	l, _ = loadLog(t, e.Engine, g)
	if gotHS, _, _ := l.InitialState(); gotHS != hs {
		t.Fatalf("InitialState hard state = %+v, want %+v", gotHS, hs)
	}
}

func TestLoadRaftLogRefusesCorruptRecords(t *testing.T) {
	enc := func(st AppliedState) []byte {
		v, err := EncodeAppliedState(nil, &st)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	entry := func(i, term uint64) []byte {
		e := raftpb.Entry{Index: i, Term: term}
		v, err := e.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	const g = ids.GroupID(9)
	cases := []struct {
		name string
		kvs  [][2][]byte
	}{
		{"truncated state too short", [][2][]byte{{truncatedKey(g), make([]byte, 15)}}},
		{"truncated state too long", [][2][]byte{{truncatedKey(g), make([]byte, 17)}}},
		{"empty truncated state", [][2][]byte{{truncatedKey(g), {}}}},
		{"undecodable hard state", [][2][]byte{{hardStateKey(g), {0xff, 0xff, 0xff}}}},
		{"applied state of unknown version", [][2][]byte{{appliedKey(g), {9, 0, 0, 0, 0}}}},
		{"empty applied state", [][2][]byte{{appliedKey(g), {}}}},
		{"truncated applied state", [][2][]byte{{appliedKey(g), enc(AppliedState{Index: 1 << 40})[:3]}}},
		{"applied index beyond the log", [][2][]byte{
			{entryKey(nil, g, 1), entry(1, 1)},
			{entryKey(nil, g, 2), entry(2, 1)},
			{appliedKey(g), enc(AppliedState{Index: 3, Term: 1})},
		}},
		{"applied index beyond an empty log", [][2][]byte{{appliedKey(g), enc(AppliedState{Index: 1, Term: 1})}}},
		{"applied index below the truncated index", [][2][]byte{
			{truncatedKey(g), truncatedValue(5, 1)},
			{entryKey(nil, g, 6), entry(6, 1)},
			{appliedKey(g), enc(AppliedState{Index: 4, Term: 1})},
		}},
		{"entries only below the truncated index", [][2][]byte{
			{truncatedKey(g), truncatedValue(10, 1)},
			{entryKey(nil, g, 3), entry(3, 1)},
			{appliedKey(g), enc(AppliedState{Index: 10, Term: 1})},
		}},
	}
	e := newTestEngine(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Start from a clean slate for g, with a healthy neighbour.
			commit(t, e.Engine, func(b *pebble.Batch) error {
				for _, k := range [][]byte{truncatedKey(g), hardStateKey(g), appliedKey(g)} {
					if err := b.Delete(k, nil); err != nil {
						return err
					}
				}
				if err := b.DeleteRange(entryKey(nil, g, 0), entryKey(nil, g, math.MaxUint64), nil); err != nil {
					return err
				}
				for _, kv := range c.kvs {
					if err := b.Set(kv[0], kv[1], nil); err != nil {
						return err
					}
				}
				return nil
			})
			l, _, err := LoadRaftLog(e.Engine, g)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("LoadRaftLog = %v, %v; want an error wrapping ErrCorrupt", l, err)
			}
			if l != nil {
				t.Fatalf("LoadRaftLog returned a log with error %v", err)
			}
			// Neighbouring groups are unaffected.
			loadLog(t, e.Engine, g+1)
			loadLog(t, e.Engine, g-1)
		})
	}
}

func TestRaftLogDetectsMissingEntries(t *testing.T) {
	e := newTestEngine(t)
	const g = ids.GroupID(1)
	l, _ := loadLog(t, e.Engine, g)
	appendEnts(t, e.Engine, l, mkEnts(1, 11, 1))
	if err := e.DB().Delete(entryKey(nil, g, 5), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	e.reopen()
	l, _ = loadLog(t, e.Engine, g)
	if _, err := l.Entries(1, 11, noLimit); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Entries across a hole: err %v, want ErrCorrupt", err)
	}
	if _, err := l.Entries(5, 7, noLimit); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Entries starting at a hole: err %v, want ErrCorrupt", err)
	}
	if _, err := l.Term(5); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Term of a missing entry: err %v, want ErrCorrupt", err)
	}
	// Reads that stop before the hole still work.
	all := mkEnts(1, 11, 1)
	checkEntries(t, l, 1, all, 1, 5, noLimit)
	checkEntries(t, l, 1, all, 6, 11, noLimit)
	// Whatever the size limit, a read across the hole either stops before
	// it or fails: it never skips the missing entry.
	for _, ms := range maxSizesFor(all) {
		got, err := l.Entries(1, 11, ms)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Entries(1, 11, %d) across a hole: err %v, want ErrCorrupt", ms, err)
			}
			continue
		}
		if !entsEqual(got, all[:len(got)]) || len(got) >= 5 {
			t.Fatalf("Entries(1, 11, %d) across a hole = %s", ms, describe(got))
		}
	}
	sizeTo6 := uint64(0)
	for _, e := range all[:6] {
		sizeTo6 += uint64(e.Size())
	}
	if got, err := l.Entries(1, 11, sizeTo6); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Entries(1, 11, %d) with room for entries 1-4 and 6 = %s, %v; want ErrCorrupt", sizeTo6, describe(got), err)
	}

	// The last entry vanishing under a loaded log is detected too.
	if err := e.DB().Delete(entryKey(nil, g, 10), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if got, err := l.Entries(6, 11, noLimit); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Entries(6, 11) with entry 10 missing = %s, %v; want ErrCorrupt", describe(got), err)
	}
	if _, err := l.Term(10); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Term of a missing last entry: err %v, want ErrCorrupt", err)
	}
}

func TestRaftLogCacheBound(t *testing.T) {
	e := newTestEngine(t)
	const g = ids.GroupID(11)
	l, _ := loadLog(t, e.Engine, g)
	n := uint64(maxCachedEntries + maxCachedEntries/2)
	var all []raftpb.Entry
	for lo := uint64(1); lo <= n; lo += 500 {
		ents := mkEnts(lo, min(lo+500, n+1), 1)
		appendEnts(t, e.Engine, l, ents)
		all = append(all, ents...)
	}
	if len(l.cache) > maxCachedEntries || l.cacheBytes > maxCachedBytes {
		t.Fatalf("cache holds %d entries, %d bytes; bounds %d, %d", len(l.cache), l.cacheBytes, maxCachedEntries, maxCachedBytes)
	}
	if len(l.cache) == 0 || l.cache[0].Index <= 1 || l.cache[len(l.cache)-1].Index != n {
		t.Fatalf("cache is not a trimmed suffix of the log ending at %d: %d entries from %d", n, len(l.cache), l.cache[0].Index)
	}
	checkLog(t, l, 0, 0, all, false)
	cached := l.cache[0].Index
	for _, r := range [][2]uint64{{1, 101}, {cached - 5, cached + 5}, {cached, cached + 1}, {n - 10, n + 1}, {1, n + 1}} {
		for _, ms := range []uint64{0, 1000, noLimit} {
			checkEntries(t, l, 1, all, r[0], r[1], ms)
		}
	}

	// The byte bound: a few large entries push the small ones out.
	big := make([]raftpb.Entry, 0, 24)
	for i := n + 1; i <= n+24; i++ {
		big = append(big, raftpb.Entry{Index: i, Term: 2, Data: bytes.Repeat([]byte{byte(i)}, 256<<10)})
	}
	for i := 0; i < len(big); i += 4 {
		appendEnts(t, e.Engine, l, big[i:i+4])
	}
	all = append(all, big...)
	if l.cacheBytes > maxCachedBytes || len(l.cache) == 0 {
		t.Fatalf("cache holds %d bytes in %d entries; byte bound %d", l.cacheBytes, len(l.cache), maxCachedBytes)
	}
	total := 0
	for i := range l.cache {
		total += l.cache[i].Size()
	}
	if total != l.cacheBytes {
		t.Fatalf("cacheBytes = %d, but the cached entries hold %d bytes", l.cacheBytes, total)
	}
	checkLog(t, l, 0, 0, all, false)
	for _, r := range [][2]uint64{{n - 3, n + 3}, {n + 1, n + 25}, {l.cache[0].Index - 1, l.cache[0].Index + 1}} {
		for _, ms := range []uint64{0, 300 << 10, 600 << 10, noLimit} {
			checkEntries(t, l, 1, all, r[0], r[1], ms)
		}
	}
}

// TestRaftLogModel drives a log with random appends (many of them
// overwriting a suffix), truncations, snapshot installs and reloads, and
// checks it against a plain slice after every step. Slices returned along
// the way must never change.
func TestRaftLogModel(t *testing.T) {
	// An in-memory filesystem keeps the many synced commits cheap; reloads
	// read back from Pebble all the same.
	e := newMemEngine(t)
	var group ids.GroupID
	rapid.Check(t, func(rt *rapid.T) {
		group++
		g := group
		l, _ := loadLog(rt, e, g)
		var (
			truncIndex, truncTerm uint64
			log                   []raftpb.Entry // entries after truncIndex
			term                  uint64         = 1
			handed                [][2][]raftpb.Entry
		)
		last := func() uint64 { return truncIndex + uint64(len(log)) }
		payload := rapid.SliceOfN(rapid.Byte(), 0, 300)
		steps := rapid.IntRange(1, 25).Draw(rt, "steps")
		for range steps {
			switch op := rapid.IntRange(0, 9).Draw(rt, "op"); {
			case op < 5: // append, possibly overwriting a suffix
				from := rapid.Uint64Range(truncIndex+1, last()+1).Draw(rt, "from")
				count := rapid.Uint64Range(1, 40).Draw(rt, "count")
				if from <= last() {
					term++
				}
				ents := make([]raftpb.Entry, 0, count)
				for i := from; i < from+count; i++ {
					d := payload.Draw(rt, "data")
					if len(d) == 0 {
						d = nil
					}
					ents = append(ents, raftpb.Entry{Index: i, Term: term, Data: d})
				}
				appendEnts(rt, e, l, ents)
				log = append(log[:from-truncIndex-1], cloneEnts(ents)...)
			case op < 7: // truncate up to an index the host has applied
				idx := rapid.Uint64Range(truncIndex, last()).Draw(rt, "truncate")
				tt := truncTerm
				if idx > truncIndex {
					tt = log[idx-truncIndex-1].Term
				}
				commit(rt, e, func(b *pebble.Batch) error {
					if err := WriteAppliedState(b, g, &AppliedState{Index: idx, Term: tt}); err != nil {
						return err
					}
					return l.WriteTruncate(b, idx, tt)
				})
				l.DidTruncate(idx, tt)
				log = log[idx-truncIndex:]
				truncIndex, truncTerm = idx, tt
			case op < 8: // install a snapshot
				idx := rapid.Uint64Range(truncIndex, last()+50).Draw(rt, "snapshot")
				term++
				commit(rt, e, func(b *pebble.Batch) error {
					if err := WriteAppliedState(b, g, &AppliedState{Index: idx, Term: term}); err != nil {
						return err
					}
					return l.WriteSnapshotInstall(b, idx, term)
				})
				l.DidInstallSnapshot(idx, term)
				log, truncIndex, truncTerm = nil, idx, term
			case op < 9: // reload from Pebble
				l, _ = loadLog(rt, e, g)
			default: // read, and remember what was read
				if len(log) == 0 {
					continue
				}
				lo := rapid.Uint64Range(truncIndex+1, last()).Draw(rt, "lo")
				hi := rapid.Uint64Range(lo+1, last()+1).Draw(rt, "hi")
				ms := rapid.SampledFrom(maxSizesFor(log[lo-truncIndex-1:hi-truncIndex-1])).Draw(rt, "maxSize")
				checkEntries(rt, l, truncIndex+1, log, lo, hi, ms)
				got, _ := l.Entries(lo, hi, ms)
				handed = append(handed, [2][]raftpb.Entry{got, cloneEnts(got)})
			}
			checkLog(rt, l, truncIndex, truncTerm, log, false)
		}
		for _, h := range handed {
			if !reflect.DeepEqual(h[0], h[1]) {
				rt.Fatalf("a slice returned by Entries changed: %s, was %s", describe(h[0]), describe(h[1]))
			}
		}
		loaded, _ := loadLog(rt, e, g)
		checkLog(rt, loaded, truncIndex, truncTerm, log, false)
		checkNoEntriesAbove(rt, e, g, last())
		if truncIndex > 0 {
			if ks := keysIn(rt, e.DB(), entryKey(nil, g, 0), entryKey(nil, g, truncIndex+1)); len(ks) != 0 {
				rt.Fatalf("%d entries at or below the truncated index %d remain in Pebble", len(ks), truncIndex)
			}
		}
	})
}
