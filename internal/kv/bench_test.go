package kv

import (
	"fmt"
	"testing"

	"github.com/nodedb/nodedb-cluster/statemachine"
)

func benchKeys(n int) [][]byte {
	keys := make([][]byte, n)
	for i := range keys {
		keys[i] = fmt.Appendf(nil, "user:%08d", i)
	}
	return keys
}

func BenchmarkEncodePut256(b *testing.B) {
	key, value := []byte("user:00000001"), make([]byte, 256)
	lim := DefaultLimits()
	b.ReportAllocs()
	b.SetBytes(int64(len(value)))
	for b.Loop() {
		if _, err := EncodePut(key, value, nil, lim); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEncodeApplyPut256 measures the state machine's share of a write:
// encoding a 256-byte put and applying it (over an in-memory store, so the
// numbers exclude Pebble).
func BenchmarkEncodeApplyPut256(b *testing.B) {
	for _, cond := range []bool{false, true} {
		b.Run(fmt.Sprintf("cond=%v", cond), func(b *testing.B) {
			m, w := &StateMachine{}, newMemStore()
			keys := benchKeys(1024)
			value := make([]byte, 256)
			lim := DefaultLimits()
			cmds := make([]statemachine.Command, 1)
			results := make([][]byte, 1)
			versions := make([]uint64, len(keys))
			b.ReportAllocs()
			b.SetBytes(int64(len(value)))
			i := 0
			for b.Loop() {
				k := i % len(keys)
				var ifv *uint64
				if cond {
					ifv = &versions[k]
				}
				data, err := EncodePut(keys[k], value, ifv, lim)
				if err != nil {
					b.Fatal(err)
				}
				cmds[0].Data = data
				if err := m.Apply(w, 0, cmds, results); err != nil {
					b.Fatal(err)
				}
				versions[k]++
				i++
			}
		})
	}
}

func BenchmarkApplyBatch16(b *testing.B) {
	m, w := &StateMachine{}, newMemStore()
	keys := benchKeys(16)
	ops := make([]Op, len(keys))
	for i, k := range keys {
		ops[i] = PutOp(k, make([]byte, 256), nil)
	}
	data, err := EncodeBatch(ops, DefaultLimits())
	if err != nil {
		b.Fatal(err)
	}
	cmds := []statemachine.Command{{Data: data}}
	results := make([][]byte, 1)
	b.ReportAllocs()
	for b.Loop() {
		if err := m.Apply(w, 0, cmds, results); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadGet(b *testing.B) {
	m, w := &StateMachine{}, newMemStore()
	for _, k := range benchKeys(1024) {
		data, _ := EncodePut(k, make([]byte, 256), nil, DefaultLimits())
		if err := m.Apply(w, 0, []statemachine.Command{{Data: data}}, make([][]byte, 1)); err != nil {
			b.Fatal(err)
		}
	}
	q, _ := EncodeGet([]byte("user:00000500"), DefaultLimits())
	b.ReportAllocs()
	for b.Loop() {
		resp, err := m.Read(w, 0, q)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := DecodeGetResponse(resp); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadScan100(b *testing.B) {
	m, w := &StateMachine{}, newMemStore()
	for _, k := range benchKeys(1024) {
		data, _ := EncodePut(k, make([]byte, 256), nil, DefaultLimits())
		if err := m.Apply(w, 0, []statemachine.Command{{Data: data}}, make([][]byte, 1)); err != nil {
			b.Fatal(err)
		}
	}
	q, _ := EncodeScan([]byte("user:"), []byte("user:00000100"), 100, DefaultLimits())
	b.ReportAllocs()
	for b.Loop() {
		resp, err := m.Read(w, 0, q)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := DecodeScanResponse(resp); err != nil {
			b.Fatal(err)
		}
	}
}
