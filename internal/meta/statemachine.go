package meta

import (
	"errors"
	"fmt"

	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"github.com/nodedb/nodedb-cluster/statemachine"
)

// StateKey is the key, in vShard 0 of group 0, under which the whole
// encoded State is stored. Metadata is small and written rarely, so one
// value is simpler than a keyspace and makes every apply atomic for free.
const StateKey = "state"

// QueryState is the Read query for the encoded state (an empty query means
// the same).
const QueryState = "state"

// StateMachine runs the metadata group: it implements
// statemachine.StateMachine over the single value StateKey in vShard 0.
type StateMachine struct {
	onApply func(*metapb.State)
}

var _ statemachine.StateMachine = (*StateMachine)(nil)

// NewStateMachine returns the metadata state machine. onApply, if not nil,
// is called with the new state at the end of every Apply call that changed
// it. It is a notification of what will be visible, not of what is
// durable: it runs inside Apply, before the host commits the batch that
// holds the state (should the node crash first, the entries are applied
// again after restart and the hook called again). It must not block, and
// must treat the state as read-only: it may keep it, since Apply never
// modifies a state it handed out.
func NewStateMachine(onApply func(*metapb.State)) *StateMachine {
	return &StateMachine{onApply: onApply}
}

// Apply implements statemachine.StateMachine. It reads the state once,
// applies every command in order (Data is an encoded Entry, the timestamp
// is the entry's clock), stores each command's encoded Result, and writes
// the state back once if anything was applied. A malformed or refused entry
// is a result with its code; only storage errors (and a stored state that
// does not decode, which is storage corruption) are returned.
func (m *StateMachine) Apply(w statemachine.Writer, vshard uint32, cmds []statemachine.Command, results [][]byte) error {
	if vshard != 0 {
		res := EncodeResult(resultOf(errorf(metapb.Code_CODE_INVALID_ARGUMENT, "the metadata group has only vShard 0, not %d", vshard)))
		for i := range cmds {
			results[i] = res
		}
		return nil
	}
	st, err := LoadState(w)
	if err != nil {
		return err
	}
	changed := false
	for i, c := range cmds {
		e, err := DecodeEntry(c.Data)
		if err != nil {
			results[i] = EncodeResult(resultOf(err))
			continue
		}
		next, res, _, err := Apply(st, e, c.Timestamp)
		results[i] = EncodeResult(res)
		if err == nil {
			st, changed = next, true
		}
	}
	if !changed {
		return nil
	}
	b, err := EncodeState(st)
	if err != nil {
		return fmt.Errorf("meta: store the state: %w", err)
	}
	if err := w.Set([]byte(StateKey), b); err != nil {
		return fmt.Errorf("meta: store the state: %w", err)
	}
	if m.onApply != nil {
		m.onApply(st)
	}
	return nil
}

// Read implements statemachine.StateMachine: the query QueryState (or an
// empty query) returns the encoded state, empty before bootstrap.
func (m *StateMachine) Read(r statemachine.Reader, vshard uint32, query []byte) ([]byte, error) {
	if vshard != 0 {
		return nil, errorf(metapb.Code_CODE_INVALID_ARGUMENT, "read: the metadata group has only vShard 0, not %d", vshard)
	}
	if q := string(query); q != "" && q != QueryState {
		return nil, errorf(metapb.Code_CODE_INVALID_ARGUMENT, "read: unknown query %q", clip(q, 64))
	}
	b, err := r.Get([]byte(StateKey))
	if errors.Is(err, statemachine.ErrNotFound) {
		return []byte{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("meta: read the state: %w", err)
	}
	return b, nil
}

// LoadState reads and decodes the state a metadata replica stores (absent:
// the empty state), for a node that opens its data dir.
func LoadState(r statemachine.Reader) (*metapb.State, error) {
	b, err := r.Get([]byte(StateKey))
	if errors.Is(err, statemachine.ErrNotFound) {
		return &metapb.State{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("meta: load the state: %w", err)
	}
	st, err := DecodeState(b)
	if err != nil {
		return nil, fmt.Errorf("meta: load the state: %w", err)
	}
	return st, nil
}
