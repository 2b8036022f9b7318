package storage

import (
	"bytes"
	"fmt"
	"log/slog"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// tb is the part of testing.TB and *rapid.T the helpers need.
type tb interface {
	Helper()
	Fatalf(format string, args ...any)
}

// testEngine is an engine in a temporary directory that can be closed and
// reopened to prove that state is durable.
type testEngine struct {
	t   *testing.T
	dir string
	*Engine
}

func newTestEngine(t *testing.T) *testEngine {
	t.Helper()
	te := &testEngine{t: t, dir: t.TempDir()}
	te.open()
	t.Cleanup(func() {
		if te.Engine != nil {
			if err := te.Engine.Close(); err != nil {
				t.Errorf("close engine: %v", err)
			}
		}
	})
	return te
}

func (te *testEngine) open() {
	te.t.Helper()
	e, err := Open(Options{
		Dir:          te.dir,
		CacheSize:    1 << 20,
		MemTableSize: 4 << 20,
		Logger:       slog.New(slog.DiscardHandler),
	})
	if err != nil {
		te.t.Fatalf("open engine: %v", err)
	}
	te.Engine = e
}

// reopen closes the engine and opens it again from its directory.
func (te *testEngine) reopen() {
	te.t.Helper()
	if err := te.Engine.Close(); err != nil {
		te.t.Fatalf("close engine: %v", err)
	}
	te.Engine = nil
	te.open()
}

// commit stages writes with fn into a fresh batch and commits it with a sync.
func commit(t tb, e *Engine, fn func(b *pebble.Batch) error) {
	t.Helper()
	b := e.DB().NewBatch()
	defer b.Close()
	if err := fn(b); err != nil {
		t.Fatalf("stage: %v", err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatalf("commit: %v", err)
	}
}

func loadLog(t tb, e *Engine, g ids.GroupID) (*RaftLog, AppliedState) {
	t.Helper()
	l, st, err := LoadRaftLog(e, g)
	if err != nil {
		t.Fatalf("LoadRaftLog(%s): %v", g, err)
	}
	return l, st
}

// appendEnts does what the host does for one Ready: stage, commit, report.
func appendEnts(t tb, e *Engine, l *RaftLog, ents []raftpb.Entry) {
	t.Helper()
	commit(t, e, func(b *pebble.Batch) error { return l.WriteAppend(b, ents) })
	l.DidAppend(ents)
}

// mkEnts returns entries [lo, hi) of term, each with a payload naming its
// index and term, padded so that sizes differ from entry to entry.
func mkEnts(lo, hi, term uint64) []raftpb.Entry {
	var ents []raftpb.Entry
	for i := lo; i < hi; i++ {
		data := fmt.Appendf(nil, "i%d-t%d-", i, term)
		data = append(data, bytes.Repeat([]byte{'x'}, int(i%7)*10)...)
		ents = append(ents, raftpb.Entry{Index: i, Term: term, Type: raftpb.EntryNormal, Data: data})
	}
	return ents
}

func cloneEnts(ents []raftpb.Entry) []raftpb.Entry {
	if ents == nil {
		return nil
	}
	out := make([]raftpb.Entry, len(ents))
	for i, e := range ents {
		out[i] = e
		out[i].Data = bytes.Clone(e.Data)
	}
	return out
}

// entsEqual compares entries field by field, treating nil and empty data
// alike (Pebble hands back empty payloads as nil).
func entsEqual(a, b []raftpb.Entry) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Index != b[i].Index || a[i].Term != b[i].Term || a[i].Type != b[i].Type ||
			!bytes.Equal(a[i].Data, b[i].Data) {
			return false
		}
	}
	return true
}

func describe(ents []raftpb.Entry) string {
	var buf bytes.Buffer
	for i, e := range ents {
		if i > 0 {
			buf.WriteByte(' ')
		}
		fmt.Fprintf(&buf, "%d/%d(%dB)", e.Index, e.Term, len(e.Data))
	}
	return "[" + buf.String() + "]"
}

// limitRef is raft's size limit, written independently: the first entry
// always, then more while the running total stays within maxSize.
func limitRef(ents []raftpb.Entry, maxSize uint64) []raftpb.Entry {
	var size uint64
	for i := range ents {
		size += uint64(ents[i].Size())
		if i > 0 && size > maxSize {
			return ents[:i]
		}
	}
	return ents
}

// keysIn returns every key stored in [start, end).
func keysIn(t tb, r pebble.Reader, start, end []byte) [][]byte {
	t.Helper()
	var out [][]byte
	err := ScanRange(r, start, end, func(k, _ []byte) error {
		out = append(out, bytes.Clone(k))
		return nil
	})
	if err != nil {
		t.Fatalf("scan: %v", err)
	}
	return out
}

// dump returns every key and value of the engine.
func dump(t tb, e *Engine) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := ScanRange(e.DB(), nil, nil, func(k, v []byte) error {
		out[string(k)] = string(v)
		return nil
	})
	if err != nil {
		t.Fatalf("dump: %v", err)
	}
	return out
}

// newMemEngine opens an engine on an in-memory filesystem.
func newMemEngine(t *testing.T) *Engine {
	t.Helper()
	e, err := Open(Options{Dir: "/db", FS: vfs.NewMem(), CacheSize: 1 << 20, MemTableSize: 4 << 20, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("open engine: %v", err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("close engine: %v", err)
		}
	})
	return e
}
