package kv

import (
	"bytes"
	"errors"
	"maps"
	"slices"
	"testing"

	"github.com/nodedb/nodedb-cluster/statemachine"
)

// fuzzSeeds returns a store holding "a" at version 1 and "b" at version 2,
// the model of that state and the state machine.
func fuzzSeeds(t *testing.T) (*StateMachine, *memStore, model) {
	m, w := &StateMachine{}, newMemStore()
	oneOp(t)(put(t, m, w, "a", "A", nil))
	oneOp(t)(put(t, m, w, "b", "B1", nil))
	oneOp(t)(put(t, m, w, "b", "B", nil))
	return m, w, model{"a": {"A", 1}, "b": {"B", 2}}
}

func commandSeeds() [][]byte {
	lim := DefaultLimits()
	var out [][]byte
	add := func(b []byte, _ error) { out = append(out, b) }
	add(EncodePut([]byte("a"), []byte("v"), nil, lim))
	add(EncodePut([]byte("a"), []byte("v"), ver(1), lim))
	add(EncodePut([]byte("c"), nil, ver(0), lim))
	add(EncodeDelete([]byte("b"), ver(2), lim))
	add(EncodeDelete([]byte("zz"), nil, lim))
	add(EncodeBatch([]Op{PutOp([]byte("a"), []byte("x"), ver(1)), PutOp([]byte("a"), []byte("y"), ver(2)), DeleteOp([]byte("b"), nil)}, lim))
	add(EncodeBatch([]Op{DeleteOp([]byte("a"), nil), PutOp([]byte("a"), []byte("y"), ver(5))}, lim))
	out = append(out, nil, []byte{formatVersion}, []byte{formatVersion, opBatch, 0xff, 0xff, 0x03}, []byte{2, opPut, condNone, 1, 'a', 0})
	return out
}

func querySeeds() [][]byte {
	lim := DefaultLimits()
	var out [][]byte
	add := func(b []byte, _ error) { out = append(out, b) }
	add(EncodeGet([]byte("a"), lim))
	add(EncodeGet([]byte("missing"), lim))
	add(EncodeScan(nil, nil, 0, lim))
	add(EncodeScan([]byte("a"), nil, 1, lim))
	add(EncodeScan(nil, []byte("a"), 1, lim))
	out = append(out, nil, []byte{formatVersion, queryScan, 0xff, 0x01}, []byte{formatVersion, opPut})
	return out
}

// FuzzDecodeCommand applies arbitrary bytes as a command. Whatever the
// input, Apply must not panic or fail, its result must decode, a refused
// command must write nothing, and an accepted one must do exactly what the
// model says.
func FuzzDecodeCommand(f *testing.F) {
	for _, s := range commandSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, w, mo := fuzzSeeds(t)
		before := w.snapshot()
		results := make([][]byte, 1)
		if err := m.Apply(w, 0, []statemachine.Command{{Data: data}}, results); err != nil {
			t.Fatalf("Apply: %v", err)
		}
		res, err := DecodeResult(results[0])
		if errors.Is(err, ErrMalformed) {
			t.Fatalf("Apply produced an undecodable result %x: %v", results[0], err)
		}
		ops, derr := decodeCommand(data)
		if err != nil {
			if !maps.Equal(w.snapshot(), before) {
				t.Fatalf("refused command (%v) wrote: %q -> %q", err, before, w.snapshot())
			}
			if derr != nil && CodeOf(err) != derr.Code {
				t.Fatalf("result %v disagrees with decode error %v", err, derr)
			}
			if derr == nil && !IsCode(err, CodeConflict) {
				t.Fatalf("well-formed command refused with %v", err)
			}
			return
		}
		if derr != nil {
			t.Fatalf("command accepted although it does not decode: %v", derr)
		}
		pub := make([]Op, len(ops))
		for i, o := range ops {
			pub[i] = Op{Kind: o.kind, Key: o.key, Value: o.value}
			if o.hasCond {
				pub[i].IfVersion = ver(o.ifVersion)
			}
		}
		next, want, werr := mo.apply(pub)
		if werr != nil || !slices.Equal(res.Ops, want) {
			t.Fatalf("ops %v: result %v, model %v %v", pub, res.Ops, want, werr)
		}
		got := w.snapshot()
		wantStore := map[string]string{}
		for k, e := range next {
			wantStore["k"+k] = string(appendRecord(nil, e.version, []byte(e.value)))
		}
		if !maps.Equal(got, wantStore) {
			t.Fatalf("ops %v: storage %q, model %q", pub, got, wantStore)
		}
	})
}

// FuzzDecodeQuery reads arbitrary bytes as a query. Read must not panic;
// a refused query is an *Error, and an answered one decodes with the
// decoder for its kind and respects the query's bounds.
func FuzzDecodeQuery(f *testing.F) {
	for _, s := range querySeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, w, _ := fuzzSeeds(t)
		resp, err := m.Read(w, 0, data)
		if err != nil {
			if c := CodeOf(err); c != CodeInvalidArgument && c != CodeTooLarge {
				t.Fatalf("Read(%x) = %v, want an invalid_argument or too_large *Error", data, err)
			}
			return
		}
		q, qerr := decodeQuery(data)
		if qerr != nil {
			t.Fatalf("query answered although it does not decode: %v", qerr)
		}
		switch q.kind {
		case queryGet:
			if _, err := DecodeGetResponse(resp); err != nil {
				t.Fatalf("get response: %v", err)
			}
		case queryScan:
			s, err := DecodeScanResponse(resp)
			if err != nil {
				t.Fatalf("scan response: %v", err)
			}
			prev := q.after
			for _, e := range s.Entries {
				if !bytes.HasPrefix(e.Key, q.prefix) || bytes.Compare(e.Key, prev) <= 0 {
					t.Fatalf("scan %+v returned %q out of bounds or order", q, e.Key)
				}
				prev = e.Key
			}
			if len(s.Entries) > q.limit {
				t.Fatalf("scan returned %d entries, limit %d", len(s.Entries), q.limit)
			}
		}
	})
}

// FuzzDecodeResponse feeds arbitrary bytes to the client-side decoders:
// they must not panic, and they fail only with ErrMalformed or, for
// results, a refused command's *Error.
func FuzzDecodeResponse(f *testing.F) {
	f.Add(encodeOKResult([]OpResult{{1, 0}, {0, 3}}))
	f.Add(encodeErrorResult(&Error{Code: CodeConflict, Message: "m", CurrentVersion: 4, FailedOp: 1}))
	f.Add(encodeGetResponse(true, 3, []byte("v")))
	f.Add([]byte{formatVersion, respScan, 1, 1, 'k', 1, 1, 'v'})
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := DecodeResult(data); err != nil && !errors.Is(err, ErrMalformed) && CodeOf(err) == "" {
			t.Fatalf("DecodeResult: unexpected error %v", err)
		}
		if _, err := DecodeGetResponse(data); err != nil && !errors.Is(err, ErrMalformed) {
			t.Fatalf("DecodeGetResponse: unexpected error %v", err)
		}
		if _, err := DecodeScanResponse(data); err != nil && !errors.Is(err, ErrMalformed) {
			t.Fatalf("DecodeScanResponse: unexpected error %v", err)
		}
	})
}
