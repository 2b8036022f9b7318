package kv

import (
	"errors"
	"testing"

	"github.com/nodedb/nodedb-cluster/statemachine"
)

// tb is the part of testing.TB and *rapid.T the helpers need.
type tb interface {
	Helper()
	Fatalf(format string, args ...any)
}

func ver(v uint64) *uint64 { return &v }

// applyRaw applies one command and returns its raw result.
func applyRaw(t tb, m *StateMachine, w statemachine.Writer, vs uint32, cmd []byte) []byte {
	t.Helper()
	results := make([][]byte, 1)
	if err := m.Apply(w, vs, []statemachine.Command{{Index: 1, Data: cmd}}, results); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return results[0]
}

// applyCmd applies one command and decodes its result.
func applyCmd(t tb, m *StateMachine, w statemachine.Writer, vs uint32, cmd []byte) (Result, error) {
	t.Helper()
	res, err := DecodeResult(applyRaw(t, m, w, vs, cmd))
	if errors.Is(err, ErrMalformed) {
		t.Fatalf("Apply produced a malformed result: %v", err)
	}
	return res, err
}

// must returns a function that unwraps an encoder's result, failing t on
// error: must(t)(EncodePut(...)).
func must(t tb) func([]byte, error) []byte {
	return func(b []byte, err error) []byte {
		t.Helper()
		if err != nil {
			t.Fatalf("encode: %v", err)
		}
		return b
	}
}

func put(t tb, m *StateMachine, w statemachine.Writer, key, value string, cond *uint64) (Result, error) {
	t.Helper()
	return applyCmd(t, m, w, 0, must(t)(EncodePut([]byte(key), []byte(value), cond, DefaultLimits())))
}

func del(t tb, m *StateMachine, w statemachine.Writer, key string, cond *uint64) (Result, error) {
	t.Helper()
	return applyCmd(t, m, w, 0, must(t)(EncodeDelete([]byte(key), cond, DefaultLimits())))
}

func batch(t tb, m *StateMachine, w statemachine.Writer, ops ...Op) (Result, error) {
	t.Helper()
	return applyCmd(t, m, w, 0, must(t)(EncodeBatch(ops, DefaultLimits())))
}

func readGet(t tb, m *StateMachine, r statemachine.Reader, key string) GetResponse {
	t.Helper()
	resp, err := m.Read(r, 0, must(t)(EncodeGet([]byte(key), DefaultLimits())))
	if err != nil {
		t.Fatalf("Read get %q: %v", key, err)
	}
	g, err := DecodeGetResponse(resp)
	if err != nil {
		t.Fatalf("DecodeGetResponse: %v", err)
	}
	return g
}

func scanPage(t tb, m *StateMachine, r statemachine.Reader, prefix, after string, limit int) ScanResponse {
	t.Helper()
	resp, err := m.Read(r, 0, must(t)(EncodeScan([]byte(prefix), []byte(after), limit, DefaultLimits())))
	if err != nil {
		t.Fatalf("Read scan: %v", err)
	}
	s, err := DecodeScanResponse(resp)
	if err != nil {
		t.Fatalf("DecodeScanResponse: %v", err)
	}
	return s
}

// oneOp returns a function that checks a single-op command succeeded and
// returns its op result: oneOp(t)(put(...)).
func oneOp(t *testing.T) func(Result, error) OpResult {
	return func(res Result, err error) OpResult {
		t.Helper()
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		if len(res.Ops) != 1 {
			t.Fatalf("got %d op results, want 1", len(res.Ops))
		}
		return res.Ops[0]
	}
}

func wantCode(t *testing.T, err error, code Code) *Error {
	t.Helper()
	e, ok := errors.AsType[*Error](err)
	if !ok || e.Code != code {
		t.Fatalf("got error %v, want code %s", err, code)
	}
	return e
}

func binaryAppendUvarintForTest(dst []byte, v uint64) []byte {
	for v >= 0x80 {
		dst = append(dst, byte(v)|0x80)
		v >>= 7
	}
	return append(dst, byte(v))
}
