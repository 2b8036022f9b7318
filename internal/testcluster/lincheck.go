package testcluster

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// A linearizability model of the key-value store for porcupine: a register
// per key with etcd-style versions, put, compare-and-set, delete and get.

// OpKind names a recorded operation.
type OpKind string

// Recorded operation kinds.
const (
	OpGet    OpKind = "get"
	OpPut    OpKind = "put"
	OpCAS    OpKind = "cas"
	OpDelete OpKind = "del"
)

// KVInput is what a client asked.
type KVInput struct {
	Kind      OpKind
	Key       string
	Value     string
	IfVersion uint64 // for OpCAS: 0 means "only if absent"
}

// KVOutput is what it was told. Unknown marks a write whose outcome the
// client never learned; the checker lets it take effect at any point after
// its call, or never.
type KVOutput struct {
	Unknown bool
	OK      bool // cas: condition held; del: key existed
	Found   bool
	Value   string
	Version uint64 // new version after a write; current version on a failed cas or a get
}

type kvState struct {
	exists  bool
	value   string
	version uint64
}

// KVModel is the porcupine model, partitioned by key.
var KVModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(KVInput).Key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return kvState{} },
	Step: func(state, input, output any) (bool, any) {
		s := state.(kvState)
		in := input.(KVInput)
		out := output.(KVOutput)
		switch in.Kind {
		case OpGet:
			if !s.exists {
				return !out.Found, s
			}
			return out.Found && out.Value == s.value && out.Version == s.version, s
		case OpPut:
			next := kvState{exists: true, value: in.Value, version: s.version + 1}
			if !s.exists {
				next.version = 1
			}
			return out.Unknown || out.Version == next.version, next
		case OpCAS:
			holds := (in.IfVersion == 0 && !s.exists) || (s.exists && s.version == in.IfVersion)
			if out.Unknown {
				if !holds {
					return true, s
				}
				return true, kvState{exists: true, value: in.Value, version: s.version + 1}
			}
			if out.OK != holds {
				return false, s
			}
			if !holds {
				cur := uint64(0)
				if s.exists {
					cur = s.version
				}
				return out.Version == cur, s
			}
			next := kvState{exists: true, value: in.Value, version: s.version + 1}
			if !s.exists {
				next.version = 1
			}
			return out.Version == next.version, next
		case OpDelete:
			return out.Unknown || out.OK == s.exists, kvState{}
		}
		return false, s
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(KVInput), output.(KVOutput)
		res := fmt.Sprintf("ok=%v found=%v v=%q ver=%d", out.OK, out.Found, out.Value, out.Version)
		if out.Unknown {
			res = "unknown"
		}
		switch in.Kind {
		case OpGet:
			return fmt.Sprintf("get(%s) -> %s", in.Key, res)
		case OpCAS:
			return fmt.Sprintf("cas(%s, %q if %d) -> %s", in.Key, in.Value, in.IfVersion, res)
		case OpPut:
			return fmt.Sprintf("put(%s, %q) -> %s", in.Key, in.Value, res)
		default:
			return fmt.Sprintf("%s(%s) -> %s", in.Kind, in.Key, res)
		}
	},
	DescribeState: func(state any) string {
		s := state.(kvState)
		if !s.exists {
			return "absent"
		}
		return fmt.Sprintf("%q@%d", s.value, s.version)
	},
}

// History records operations from concurrent clients.
type History struct {
	mu    sync.Mutex
	start time.Time
	ops   []porcupine.Operation
}

// NewHistory starts an empty history.
func NewHistory() *History { return &History{start: time.Now()} }

// Now returns a timestamp for Call or Return.
func (h *History) Now() int64 { return int64(time.Since(h.start)) }

// Add records a completed operation. An Unknown output is recorded as never
// returning.
func (h *History) Add(client int, in KVInput, call int64, out KVOutput, ret int64) {
	if out.Unknown {
		ret = math.MaxInt64
	}
	h.mu.Lock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
	h.mu.Unlock()
}

// Len returns the number of recorded operations.
func (h *History) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.ops)
}

// Check fails t if the history is not linearizable, writing a visualization
// next to the test's temp files.
func (h *History) Check(t testing.TB, timeout time.Duration) {
	t.Helper()
	h.mu.Lock()
	ops := append([]porcupine.Operation(nil), h.ops...)
	h.mu.Unlock()
	res, info := porcupine.CheckOperationsVerbose(KVModel, ops, timeout)
	switch res {
	case porcupine.Ok:
	case porcupine.Unknown:
		t.Errorf("linearizability check of %d operations did not finish within %v", len(ops), timeout)
	default:
		path := filepath.Join(os.TempDir(), fmt.Sprintf("nodedb-lin-%s-%d.html", sanitize(t.Name()), time.Now().UnixNano()))
		if err := porcupine.VisualizePath(KVModel, info, path); err == nil {
			t.Errorf("history of %d operations is not linearizable; visualization: %s", len(ops), path)
		} else {
			t.Errorf("history of %d operations is not linearizable (visualization failed: %v)", len(ops), err)
		}
	}
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			b[i] = '_'
		}
	}
	return string(b)
}
