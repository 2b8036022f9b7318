package meta

import (
	"bytes"
	"errors"
	"maps"
	"slices"
	"testing"

	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"github.com/nodedb/nodedb-cluster/statemachine"
	"google.golang.org/protobuf/proto"
)

// memStore is an in-memory statemachine.Writer that counts writes and can
// fail on demand.
type memStore struct {
	kv      map[string][]byte
	sets    int
	failGet error
	failSet error
}

func newMemStore() *memStore { return &memStore{kv: map[string][]byte{}} }

func (m *memStore) Get(k []byte) ([]byte, error) {
	if m.failGet != nil {
		return nil, m.failGet
	}
	v, ok := m.kv[string(k)]
	if !ok {
		return nil, statemachine.ErrNotFound
	}
	return bytes.Clone(v), nil
}

func (m *memStore) Scan(start, end []byte, fn func(k, v []byte) bool) error {
	keys := slices.Sorted(maps.Keys(m.kv))
	for _, k := range keys {
		if k >= string(start) && (end == nil || k < string(end)) && !fn([]byte(k), m.kv[k]) {
			break
		}
	}
	return nil
}

func (m *memStore) Set(k, v []byte) error {
	if m.failSet != nil {
		return m.failSet
	}
	m.sets++
	m.kv[string(k)] = bytes.Clone(v)
	return nil
}

func (m *memStore) Delete(k []byte) error {
	delete(m.kv, string(k))
	return nil
}

func cmds(t *testing.T, now int64, es ...any) []statemachine.Command {
	t.Helper()
	var out []statemachine.Command
	for i, e := range es {
		var b []byte
		switch e := e.(type) {
		case *metapb.Entry:
			var err error
			if b, err = proto.Marshal(e); err != nil {
				t.Fatal(err)
			}
		case []byte:
			b = e
		}
		out = append(out, statemachine.Command{Index: uint64(i + 1), Timestamp: now, Data: b})
	}
	return out
}

func codes(t *testing.T, results [][]byte) []metapb.Code {
	t.Helper()
	var out []metapb.Code
	for _, b := range results {
		res, err := DecodeResult(b)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, res.GetCode())
	}
	return out
}

func TestStateMachine(t *testing.T) {
	var seen []*metapb.State
	sm := NewStateMachine(func(st *metapb.State) { seen = append(seen, st) })
	w := newMemStore()

	// Before bootstrap a read is the empty state.
	b, err := sm.Read(w, 0, nil)
	if err != nil || len(b) != 0 {
		t.Fatalf("read before bootstrap: %q, %v", b, err)
	}

	c := cmds(t, t0,
		bootstrapEntry(),
		NewCreateToken("t", HashSecret("s"), t0+hour),
		[]byte("garbage"),
		NewSetRoute(0, 1, 1), // refused: stale epoch
		NewBeginJoin("t", HashSecret("s"), key("n2"), "n2:1", "", ""),
	)
	results := make([][]byte, len(c))
	if err := sm.Apply(w, 0, c, results); err != nil {
		t.Fatal(err)
	}
	want := []metapb.Code{metapb.Code_CODE_OK, metapb.Code_CODE_OK, metapb.Code_CODE_MALFORMED, metapb.Code_CODE_BAD_EPOCH, metapb.Code_CODE_OK}
	if got := codes(t, results); !slices.Equal(got, want) {
		t.Fatalf("codes %v, want %v", got, want)
	}
	if res, _ := DecodeResult(results[4]); res.GetNodeId() != 2 {
		t.Fatalf("begin join result %v", res)
	}
	if w.sets != 1 || len(seen) != 1 {
		t.Fatalf("%d writes, %d notifications; want one each", w.sets, len(seen))
	}
	b, err = sm.Read(w, 0, []byte(QueryState))
	if err != nil {
		t.Fatal(err)
	}
	st, err := DecodeState(b)
	if err != nil || !proto.Equal(st, seen[0]) || st.GetAppliedEntries() != 3 {
		t.Fatalf("stored state %v (err %v) differs from the notified one", st, err)
	}

	// Nothing applied: no write, no notification.
	c = cmds(t, t0, NewSetRoute(0, 1, 1), []byte{0xff})
	if err := sm.Apply(w, 0, c, make([][]byte, 2)); err != nil {
		t.Fatal(err)
	}
	if w.sets != 1 || len(seen) != 1 {
		t.Fatalf("refused entries wrote (%d writes, %d notifications)", w.sets, len(seen))
	}

	// The state carries over between calls.
	c = cmds(t, t0, NewActivateNode(2))
	results = make([][]byte, 1)
	if err := sm.Apply(w, 0, c, results); err != nil || codes(t, results)[0] != metapb.Code_CODE_OK {
		t.Fatalf("activate: %v %v", err, codes(t, results))
	}
	if seen[1].GetNodes()[2].GetState() != metapb.NodeState_NODE_STATE_ACTIVE || seen[0].GetNodes()[2].GetState() != metapb.NodeState_NODE_STATE_JOINING {
		t.Fatal("states handed out were modified or not advanced")
	}
}

func TestStateMachineErrors(t *testing.T) {
	sm := NewStateMachine(nil)
	boom := errors.New("disk on fire")

	// Another vShard: every command is refused, nothing stored.
	w := newMemStore()
	results := make([][]byte, 1)
	if err := sm.Apply(w, 1, cmds(t, t0, bootstrapEntry()), results); err != nil || codes(t, results)[0] != metapb.Code_CODE_INVALID_ARGUMENT || w.sets != 0 {
		t.Fatalf("vShard 1: %v %v", err, codes(t, results))
	}
	if _, err := sm.Read(w, 1, nil); err == nil {
		t.Fatal("read of vShard 1")
	}
	if _, err := sm.Read(w, 0, []byte("nodes")); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("unknown query: %v", err)
	}

	// Storage errors are returned.
	w = newMemStore()
	w.failGet = boom
	if err := sm.Apply(w, 0, cmds(t, t0, bootstrapEntry()), make([][]byte, 1)); !errors.Is(err, boom) {
		t.Fatalf("failed read: %v", err)
	}
	if _, err := sm.Read(w, 0, nil); !errors.Is(err, boom) {
		t.Fatalf("failed read: %v", err)
	}
	w = newMemStore()
	w.failSet = boom
	if err := sm.Apply(w, 0, cmds(t, t0, bootstrapEntry()), make([][]byte, 1)); !errors.Is(err, boom) {
		t.Fatalf("failed write: %v", err)
	}

	// A stored state that does not decode is corruption, not a result.
	w = newMemStore()
	w.kv[StateKey] = []byte{0xff, 0x01}
	if err := sm.Apply(w, 0, cmds(t, t0, bootstrapEntry()), make([][]byte, 1)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("corrupt state: %v", err)
	}
}

// A stored state holding a corrupt row (storage rot under a replica, or a
// snapshot that carried it) loads: the state machine applies entries over
// it, keeps the row as it is, and serves it to readers.
func TestStateMachineKeepsQuarantinedRow(t *testing.T) {
	st := base(t)
	st, _, _ = mustApply(t, st, NewPutCheckpoint(NewFencingCheckpoint("mv", 1, "copy", 1, []byte("payload"), 1)), t0)
	st.Migrations["mv"].Payload[0] ^= 1
	b, err := EncodeState(st)
	if err != nil {
		t.Fatal(err)
	}
	w := newMemStore()
	w.kv[StateKey] = b
	var seen *metapb.State
	sm := NewStateMachine(func(s *metapb.State) { seen = s })
	c := cmds(t, t0, NewActivateNode(4), NewAddReplica(1, 2, metapb.Role_ROLE_LEARNER), NewPutCheckpoint(NewCheckpoint("mv", 1, "copy", 2, nil)))
	results := make([][]byte, len(c))
	if err := sm.Apply(w, 0, c, results); err != nil {
		t.Fatalf("apply over a quarantined row: %v", err)
	}
	want := []metapb.Code{metapb.Code_CODE_OK, metapb.Code_CODE_OK, metapb.Code_CODE_BAD_CHECKSUM}
	if got := codes(t, results); !slices.Equal(got, want) {
		t.Fatalf("codes %v, want %v", got, want)
	}
	if seen == nil || !proto.Equal(seen.GetMigrations()["mv"], st.GetMigrations()["mv"]) {
		t.Fatal("the quarantined row was not kept as it was")
	}
	loaded, err := LoadState(w)
	if err != nil || len(QuarantinedCheckpoints(loaded)) != 1 {
		t.Fatalf("load: %v", err)
	}
	rb, err := sm.Read(w, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeState(rb); err != nil {
		t.Fatalf("read state: %v", err)
	}
}
