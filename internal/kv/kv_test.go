package kv

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"

	"github.com/nodedb/nodedb-cluster/statemachine"
	"github.com/nodedb/nodedb-cluster/vshard"
)

func TestPutGetDeleteVersions(t *testing.T) {
	m, w := &StateMachine{}, newMemStore()

	if g := readGet(t, m, w, "a"); g.Found {
		t.Fatalf("get of absent key found %+v", g)
	}
	steps := []struct {
		name              string
		do                func() (Result, error)
		wantVer, wantPrev uint64
		wantValue         string // "" with wantVer 0: expect absent
	}{
		{"first put", func() (Result, error) { return put(t, m, w, "a", "v1", nil) }, 1, 0, "v1"},
		{"second put", func() (Result, error) { return put(t, m, w, "a", "v2", nil) }, 2, 1, "v2"},
		{"third put, empty value", func() (Result, error) { return put(t, m, w, "a", "", nil) }, 3, 2, ""},
		{"delete", func() (Result, error) { return del(t, m, w, "a", nil) }, 0, 3, ""},
		{"delete absent", func() (Result, error) { return del(t, m, w, "a", nil) }, 0, 0, ""},
		{"put after delete restarts at 1", func() (Result, error) { return put(t, m, w, "a", "again", nil) }, 1, 0, "again"},
	}
	for _, s := range steps {
		r := oneOp(t)(s.do())
		if r.Version != s.wantVer || r.PrevVersion != s.wantPrev {
			t.Fatalf("%s: got %+v, want version %d prev %d", s.name, r, s.wantVer, s.wantPrev)
		}
		if r.Existed() != (s.wantPrev != 0) {
			t.Fatalf("%s: Existed() = %v", s.name, r.Existed())
		}
		g := readGet(t, m, w, "a")
		if s.wantVer == 0 {
			if g.Found {
				t.Fatalf("%s: key still found: %+v", s.name, g)
			}
			continue
		}
		if !g.Found || g.Version != s.wantVer || string(g.Value) != s.wantValue {
			t.Fatalf("%s: get = %+v, want version %d value %q", s.name, g, s.wantVer, s.wantValue)
		}
	}
	// Layout: 'k' + key -> uvarint(version) + value.
	if got, want := w.snapshot(), map[string]string{"ka": "\x01again"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("storage = %q, want %q", got, want)
	}
}

func TestConditional(t *testing.T) {
	type step struct {
		del     bool
		cond    *uint64
		wantErr bool
		wantVer uint64 // resulting version, or the conflict's current version
	}
	tests := []struct {
		name  string
		setup int // number of unconditional puts before the step
		step  step
	}{
		{"put if absent on absent", 0, step{cond: ver(0), wantVer: 1}},
		{"put if absent on existing", 2, step{cond: ver(0), wantErr: true, wantVer: 2}},
		{"put if version matches", 2, step{cond: ver(2), wantVer: 3}},
		{"put if version is stale", 3, step{cond: ver(2), wantErr: true, wantVer: 3}},
		{"put if version is ahead", 1, step{cond: ver(2), wantErr: true, wantVer: 1}},
		{"put if version on absent", 0, step{cond: ver(1), wantErr: true, wantVer: 0}},
		{"delete if version matches", 2, step{del: true, cond: ver(2), wantVer: 0}},
		{"delete if version is stale", 2, step{del: true, cond: ver(1), wantErr: true, wantVer: 2}},
		{"delete if absent on absent", 0, step{del: true, cond: ver(0), wantVer: 0}},
		{"delete if absent on existing", 1, step{del: true, cond: ver(0), wantErr: true, wantVer: 1}},
		{"delete if version on absent", 0, step{del: true, cond: ver(3), wantErr: true, wantVer: 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, w := &StateMachine{}, newMemStore()
			for i := range tc.setup {
				oneOp(t)(put(t, m, w, "k", fmt.Sprint("v", i), nil))
			}
			before := w.snapshot()
			var res Result
			var err error
			if tc.step.del {
				res, err = del(t, m, w, "k", tc.step.cond)
			} else {
				res, err = put(t, m, w, "k", "new", tc.step.cond)
			}
			if tc.step.wantErr {
				e := wantCode(t, err, CodeConflict)
				if e.CurrentVersion != tc.step.wantVer || e.FailedOp != 0 {
					t.Fatalf("conflict = %+v, want current version %d, failed op 0", e, tc.step.wantVer)
				}
				if !errors.Is(err, ErrConflict) || !IsCode(err, CodeConflict) {
					t.Fatalf("errors.Is/IsCode do not recognise %v", err)
				}
				if fmt.Sprint(w.snapshot()) != fmt.Sprint(before) {
					t.Fatalf("failed condition wrote: %q -> %q", before, w.snapshot())
				}
				return
			}
			if r := oneOp(t)(res, err); r.Version != tc.step.wantVer {
				t.Fatalf("result %+v, want version %d", r, tc.step.wantVer)
			}
		})
	}
}

func TestBatch(t *testing.T) {
	m, w := &StateMachine{}, newMemStore()
	oneOp(t)(put(t, m, w, "{u}a", "a1", nil)) // version 1
	oneOp(t)(put(t, m, w, "{u}b", "b1", nil)) // version 1

	t.Run("all or nothing", func(t *testing.T) {
		before := w.snapshot()
		_, err := batch(t, m, w,
			PutOp([]byte("{u}a"), []byte("a2"), ver(1)),
			PutOp([]byte("{u}c"), []byte("c1"), nil),
			DeleteOp([]byte("{u}b"), ver(7)), // fails: b is at 1
			PutOp([]byte("{u}d"), []byte("d1"), nil),
		)
		e := wantCode(t, err, CodeConflict)
		if e.FailedOp != 2 || e.CurrentVersion != 1 {
			t.Fatalf("conflict = %+v, want op 2 at version 1", e)
		}
		if fmt.Sprint(w.snapshot()) != fmt.Sprint(before) {
			t.Fatalf("failed batch wrote: %q -> %q", before, w.snapshot())
		}
	})

	t.Run("sequential semantics", func(t *testing.T) {
		res, err := batch(t, m, w,
			PutOp([]byte("{u}a"), []byte("a2"), ver(1)),    // a: 1 -> 2
			PutOp([]byte("{u}a"), []byte("a3"), ver(2)),    // sees the put above: 2 -> 3
			DeleteOp([]byte("{u}b"), ver(1)),               // b: 1 -> deleted
			PutOp([]byte("{u}b"), []byte("b-new"), ver(0)), // b is absent now: -> 1
			PutOp([]byte("{u}c"), []byte("c1"), ver(0)),    // c absent: -> 1
			DeleteOp([]byte("{u}c"), nil),                  // c: 1 -> deleted
			DeleteOp([]byte("{u}zz"), nil),                 // absent, no condition: ok
		)
		if err != nil {
			t.Fatalf("batch: %v", err)
		}
		want := []OpResult{{2, 1}, {3, 2}, {0, 1}, {1, 0}, {1, 0}, {0, 1}, {0, 0}}
		if fmt.Sprint(res.Ops) != fmt.Sprint(want) {
			t.Fatalf("results = %v, want %v", res.Ops, want)
		}
		for key, want := range map[string]GetResponse{
			"{u}a": {Found: true, Version: 3, Value: []byte("a3")},
			"{u}b": {Found: true, Version: 1, Value: []byte("b-new")},
			"{u}c": {},
		} {
			g := readGet(t, m, w, key)
			if g.Found != want.Found || g.Version != want.Version || !bytes.Equal(g.Value, want.Value) {
				t.Errorf("get %q = %+v, want %+v", key, g, want)
			}
		}
	})

	t.Run("sequential conflict", func(t *testing.T) {
		// The second op's condition is checked against the first op's
		// effect, not against storage.
		_, err := batch(t, m, w,
			DeleteOp([]byte("{u}a"), nil),
			PutOp([]byte("{u}a"), []byte("x"), ver(3)),
		)
		if e := wantCode(t, err, CodeConflict); e.FailedOp != 1 || e.CurrentVersion != 0 {
			t.Fatalf("conflict = %+v, want op 1 at version 0", e)
		}
		if g := readGet(t, m, w, "{u}a"); g.Version != 3 {
			t.Fatalf("failed batch changed a: %+v", g)
		}
	})
}

func TestScan(t *testing.T) {
	m, w := &StateMachine{}, newMemStore()
	keys := []string{"a", "app", "apple", "apple\xff", "apple\xff\xff", "apply", "b", "ba", "\xff", "\xff\xff"}
	for _, k := range keys {
		oneOp(t)(put(t, m, w, k, "v:"+k, nil))
	}
	oneOp(t)(put(t, m, w, "apply", "v:apply", nil)) // version 2
	// Non-user-data keys must never show up in a scan.
	w.Set([]byte("j-meta"), []byte("x"))
	w.Set([]byte("l-meta"), []byte("x"))

	names := func(s ScanResponse) string {
		var out []string
		for _, e := range s.Entries {
			if string(e.Value) != "v:"+string(e.Key) {
				t.Fatalf("entry %q has value %q", e.Key, e.Value)
			}
			out = append(out, fmt.Sprintf("%q", e.Key))
		}
		return strings.Join(out, " ")
	}
	tests := []struct {
		prefix, after string
		limit         int
		want          string
		more          bool
	}{
		{"", "", 0, `"a" "app" "apple" "apple\xff" "apple\xff\xff" "apply" "b" "ba" "\xff" "\xff\xff"`, false},
		{"ap", "", 0, `"app" "apple" "apple\xff" "apple\xff\xff" "apply"`, false},
		{"ap", "", 2, `"app" "apple"`, true},
		{"ap", "apple", 2, `"apple\xff" "apple\xff\xff"`, true},
		{"ap", "apple\xff\xff", 2, `"apply"`, false},
		{"ap", "apply", 2, ``, false},
		{"ap", "b", 0, ``, false},        // cursor beyond the prefix
		{"b", "a", 0, `"b" "ba"`, false}, // cursor before the prefix
		{"apple", "", 3, `"apple" "apple\xff" "apple\xff\xff"`, false},
		{"apple\xff", "", 0, `"apple\xff" "apple\xff\xff"`, false},
		{"\xff", "", 0, `"\xff" "\xff\xff"`, false},
		{"\xff\xff", "", 0, `"\xff\xff"`, false},
		{"c", "", 0, ``, false},
		{"", "", 10, `"a" "app" "apple" "apple\xff" "apple\xff\xff" "apply" "b" "ba" "\xff" "\xff\xff"`, false},
		{"", "", 9, `"a" "app" "apple" "apple\xff" "apple\xff\xff" "apply" "b" "ba" "\xff"`, true},
		{"", "\xff\xff", 0, ``, false},
	}
	for _, tc := range tests {
		s := scanPage(t, m, w, tc.prefix, tc.after, tc.limit)
		if got := names(s); got != tc.want || s.More != tc.more {
			t.Errorf("scan(%q, after %q, limit %d) = [%s] more=%v, want [%s] more=%v", tc.prefix, tc.after, tc.limit, got, s.More, tc.want, tc.more)
		}
	}
	if s := scanPage(t, m, w, "apply", "", 0); len(s.Entries) != 1 || s.Entries[0].Version != 2 {
		t.Fatalf("scan apply = %+v, want version 2", s)
	}

	// Paginate with every page size: the pages concatenate to the full scan.
	for limit := 1; limit <= len(keys)+1; limit++ {
		var all []string
		after := ""
		for pages := 0; ; pages++ {
			if pages > len(keys)+1 {
				t.Fatalf("limit %d: pagination does not terminate", limit)
			}
			s := scanPage(t, m, w, "", after, limit)
			for _, e := range s.Entries {
				all = append(all, string(e.Key))
			}
			if !s.More {
				break
			}
			after = string(s.Entries[len(s.Entries)-1].Key)
		}
		if fmt.Sprint(all) != fmt.Sprint(keys) {
			t.Fatalf("limit %d: paginated %q, want %q", limit, all, keys)
		}
	}
}

func TestScanCaps(t *testing.T) {
	m, w := &StateMachine{}, newMemStore()
	big := strings.Repeat("x", 1<<20)
	for i := range 6 {
		oneOp(t)(put(t, m, w, fmt.Sprint("big", i), big, nil))
	}
	s := scanPage(t, m, w, "big", "", 0)
	if len(s.Entries) != 3 || !s.More {
		t.Fatalf("byte-capped scan returned %d entries, more=%v; want 3, true", len(s.Entries), s.More)
	}

	// One entry above the byte budget is still returned, so pagination
	// always progresses.
	huge := append([]byte{0x01}, strings.Repeat("y", MaxScanBytes+1)...)
	w.Set([]byte("khuge"), huge)
	w.Set([]byte("khuge2"), huge)
	s = scanPage(t, m, w, "huge", "", 0)
	if len(s.Entries) != 1 || !s.More || len(s.Entries[0].Value) != MaxScanBytes+1 {
		t.Fatalf("huge scan: %d entries, more=%v", len(s.Entries), s.More)
	}

	// The entry count is capped at MaxScanLimit whatever the request.
	w2 := newMemStore()
	for i := range MaxScanLimit + 1 {
		w2.Set(fmt.Appendf(nil, "kn%06d", i), []byte{1})
	}
	for _, limit := range []int{0, MaxScanLimit, MaxScanLimit + 1, 1 << 40} {
		s := scanPage(t, m, w2, "", "", limit)
		if len(s.Entries) != MaxScanLimit || !s.More {
			t.Fatalf("limit %d: %d entries, more=%v", limit, len(s.Entries), s.More)
		}
	}
}

func TestEncoderLimits(t *testing.T) {
	lim := DefaultLimits()
	key := []byte("k")
	bigKey := bytes.Repeat([]byte("k"), DefaultMaxKeySize+1)
	bigValue := make([]byte, DefaultMaxValueSize+1)
	manyOps := make([]Op, DefaultMaxBatchOps+1)
	for i := range manyOps {
		manyOps[i] = DeleteOp(key, nil)
	}
	tests := []struct {
		name     string
		err      error
		code     Code
		failedOp int
	}{
		{"put big key", second(EncodePut(bigKey, nil, nil, lim)), CodeTooLarge, 0},
		{"put big value", second(EncodePut(key, bigValue, nil, lim)), CodeTooLarge, 0},
		{"put empty key", second(EncodePut(nil, []byte("v"), nil, lim)), CodeInvalidArgument, 0},
		{"delete big key", second(EncodeDelete(bigKey, nil, lim)), CodeTooLarge, 0},
		{"delete empty key", second(EncodeDelete([]byte{}, nil, lim)), CodeInvalidArgument, 0},
		{"batch empty", second(EncodeBatch(nil, lim)), CodeInvalidArgument, -1},
		{"batch too many ops", second(EncodeBatch(manyOps, lim)), CodeTooLarge, -1},
		{"batch big value", second(EncodeBatch([]Op{PutOp(key, nil, nil), PutOp(key, bigValue, nil)}, lim)), CodeTooLarge, 1},
		{"batch empty key", second(EncodeBatch([]Op{PutOp(key, nil, nil), DeleteOp(nil, nil)}, lim)), CodeInvalidArgument, 1},
		{"batch bad kind", second(EncodeBatch([]Op{{Kind: 9, Key: key}}, lim)), CodeInvalidArgument, 0},
		{"batch delete with value", second(EncodeBatch([]Op{{Kind: OpDelete, Key: key, Value: []byte("v")}}, lim)), CodeInvalidArgument, 0},
		{"get big key", second(EncodeGet(bigKey, lim)), CodeTooLarge, -1},
		{"get empty key", second(EncodeGet(nil, lim)), CodeInvalidArgument, -1},
		{"scan big prefix", second(EncodeScan(bigKey, nil, 0, lim)), CodeTooLarge, -1},
		{"scan big cursor", second(EncodeScan(nil, bigKey, 0, lim)), CodeTooLarge, -1},
		{"scan negative limit", second(EncodeScan(nil, nil, -1, lim)), CodeInvalidArgument, -1},
		{"custom limits", second(EncodePut(key, []byte("12345"), nil, Limits{MaxValueSize: 4})), CodeTooLarge, 0},
		{"limits above hard cap are capped", second(EncodePut(bytes.Repeat([]byte("k"), HardMaxKeySize+1), nil, nil, Limits{MaxKeySize: 1 << 30})), CodeTooLarge, 0},
	}
	for _, tc := range tests {
		e := wantCode(t, tc.err, tc.code)
		if e.FailedOp != tc.failedOp {
			t.Errorf("%s: FailedOp = %d, want %d (%v)", tc.name, e.FailedOp, tc.failedOp, e)
		}
	}
	// Zero Limits mean the defaults.
	if _, err := EncodePut(bytes.Repeat([]byte("k"), DefaultMaxKeySize), nil, nil, Limits{}); err != nil {
		t.Fatalf("zero limits: %v", err)
	}
	if _, err := EncodePut(bigKey, nil, nil, Limits{}); !IsCode(err, CodeTooLarge) {
		t.Fatalf("zero limits accepted an oversized key: %v", err)
	}
}

func second(_ []byte, err error) error { return err }

func TestMalformedCommands(t *testing.T) {
	valid := must(t)(EncodePut([]byte("k"), []byte("v"), ver(0), DefaultLimits()))
	overHardKey := append([]byte{formatVersion, opDelete, condNone}, appendBytes(nil, bytes.Repeat([]byte("k"), HardMaxKeySize+1))...)
	tests := []struct {
		name     string
		data     []byte
		code     Code
		failedOp int
	}{
		{"empty", nil, CodeInvalidArgument, -1},
		{"version only", []byte{formatVersion}, CodeInvalidArgument, -1},
		{"bad version", append([]byte{2}, valid[1:]...), CodeInvalidArgument, -1},
		{"bad op code", []byte{formatVersion, 0x7f, condNone, 1, 'k'}, CodeInvalidArgument, -1},
		{"query op code", []byte{formatVersion, queryGet, 1, 'k'}, CodeInvalidArgument, -1},
		{"truncated", valid[:len(valid)-1], CodeInvalidArgument, 0},
		{"trailing bytes", append(bytes.Clone(valid), 0), CodeInvalidArgument, -1},
		{"bad cond marker", []byte{formatVersion, opPut, 7, 1, 'k', 1, 'v'}, CodeInvalidArgument, 0},
		{"truncated cond", []byte{formatVersion, opPut, condVersion}, CodeInvalidArgument, 0},
		{"key length beyond input", []byte{formatVersion, opPut, condNone, 100, 'k', 1, 'v'}, CodeInvalidArgument, 0},
		{"huge key length", []byte{formatVersion, opDelete, condNone, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, CodeInvalidArgument, 0},
		{"overlong varint", []byte{formatVersion, opDelete, condNone, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, CodeInvalidArgument, 0},
		{"value length beyond input", []byte{formatVersion, opPut, condNone, 1, 'k', 5, 'v'}, CodeInvalidArgument, 0},
		{"empty key", []byte{formatVersion, opPut, condNone, 0, 1, 'v'}, CodeInvalidArgument, 0},
		{"key over hard cap", overHardKey, CodeTooLarge, 0},
		{"empty batch", []byte{formatVersion, opBatch, 0}, CodeInvalidArgument, -1},
		{"batch count beyond input", []byte{formatVersion, opBatch, 100, opDelete, condNone, 1, 'k'}, CodeInvalidArgument, -1},
		{"batch huge count", []byte{formatVersion, opBatch, 0xff, 0xff, 0xff, 0xff, 0x0f}, CodeInvalidArgument, -1},
		{"batch bad inner op", []byte{formatVersion, opBatch, 2, opDelete, condNone, 1, 'a', opBatch, condNone, 1, 'b'}, CodeInvalidArgument, 1},
		{"batch truncated op", []byte{formatVersion, opBatch, 2, opDelete, condNone, 1, 'a', opPut, condNone, 1, 'b', 3}, CodeInvalidArgument, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, w := &StateMachine{}, newMemStore()
			oneOp(t)(put(t, m, w, "pre", "existing", nil))
			before := w.snapshot()
			results := make([][]byte, 2)
			err := m.Apply(w, 0, []statemachine.Command{{Index: 7, Data: tc.data}, {Index: 8, Data: valid}}, results)
			if err != nil {
				t.Fatalf("Apply returned a Go error for a malformed command: %v", err)
			}
			_, err = DecodeResult(results[0])
			if e := wantCode(t, err, tc.code); e.FailedOp != tc.failedOp {
				t.Fatalf("FailedOp = %d, want %d (%v)", e.FailedOp, tc.failedOp, e)
			}
			// The malformed command wrote nothing; the next one applied.
			after := w.snapshot()
			delete(after, "kk")
			if fmt.Sprint(after) != fmt.Sprint(before) {
				t.Fatalf("malformed command wrote: %q -> %q", before, after)
			}
			if r, err := DecodeResult(results[1]); err != nil || r.Ops[0].Version != 1 {
				t.Fatalf("next command: %+v, %v", r, err)
			}
		})
	}
}

func TestHardCapsAtApply(t *testing.T) {
	m, w := &StateMachine{}, newMemStore()
	// A value over the hard cap, encoded by hand since the encoders refuse it.
	cmd := []byte{formatVersion, opPut, condNone, 1, 'k'}
	cmd = appendBytes(cmd, make([]byte, HardMaxValueSize+1))
	if _, err := applyCmd(t, m, w, 0, cmd); !IsCode(err, CodeTooLarge) {
		t.Fatalf("over-cap value: %v", err)
	}
	// At the hard caps exactly, Apply accepts what tighter configured limits
	// would refuse at the encoder: replicas never depend on configuration.
	cmd = []byte{formatVersion, opPut, condNone}
	cmd = appendBytes(cmd, bytes.Repeat([]byte("k"), HardMaxKeySize))
	cmd = appendBytes(cmd, make([]byte, DefaultMaxValueSize+1))
	if _, err := applyCmd(t, m, w, 0, cmd); err != nil {
		t.Fatalf("command within hard caps refused: %v", err)
	}
	// A batch over the op cap.
	cmd = []byte{formatVersion, opBatch}
	cmd = binaryAppendUvarintForTest(cmd, HardMaxBatchOps+1)
	for range HardMaxBatchOps + 1 {
		cmd = append(cmd, opDelete, condNone, 1, 'k')
	}
	if _, err := applyCmd(t, m, w, 0, cmd); !IsCode(err, CodeTooLarge) {
		t.Fatalf("over-cap batch: %v", err)
	}
}

func TestRouting(t *testing.T) {
	if _, err := New(1000); !errors.Is(err, vshard.ErrBadCount) {
		t.Fatalf("New(1000) = %v, want ErrBadCount", err)
	}
	const count = 64
	m, err := New(count)
	if err != nil {
		t.Fatal(err)
	}
	w := newMemStore()
	lim := DefaultLimits()
	vs := vshard.ForKey([]byte("{user1}"), count)
	other := (vs + 1) % count

	// Keys sharing a tag apply together in their vShard.
	cmd := must(t)(EncodeBatch([]Op{PutOp([]byte("{user1}.a"), nil, nil), PutOp([]byte("{user1}.b"), nil, nil)}, lim))
	if _, err := applyCmd(t, m, w, vs, cmd); err != nil {
		t.Fatalf("batch in its vShard: %v", err)
	}
	// The same command in another vShard is refused.
	before := w.snapshot()
	if _, err := applyCmd(t, m, w, other, cmd); !IsCode(err, CodeInvalidArgument) {
		t.Fatalf("misrouted batch: %v", err)
	}
	// A batch spanning vShards is refused, naming the op that does not fit.
	var stray []byte
	for i := 0; stray == nil; i++ {
		if k := fmt.Appendf(nil, "stray%d", i); vshard.ForKey(k, count) != vs {
			stray = k
		}
	}
	cmd = must(t)(EncodeBatch([]Op{PutOp([]byte("{user1}.c"), nil, nil), DeleteOp(stray, nil)}, lim))
	_, err = applyCmd(t, m, w, vs, cmd)
	if e := wantCode(t, err, CodeInvalidArgument); e.FailedOp != 1 {
		t.Fatalf("spanning batch: FailedOp %d", e.FailedOp)
	}
	if fmt.Sprint(w.snapshot()) != fmt.Sprint(before) {
		t.Fatalf("refused commands wrote")
	}
	// Reads are checked too: a misrouted get must not answer "absent".
	q := must(t)(EncodeGet([]byte("{user1}.a"), lim))
	if _, err := m.Read(w, other, q); !IsCode(err, CodeInvalidArgument) {
		t.Fatalf("misrouted get: %v", err)
	}
	if resp, err := m.Read(w, vs, q); err != nil {
		t.Fatalf("get: %v", err)
	} else if g, _ := DecodeGetResponse(resp); !g.Found {
		t.Fatalf("get in its vShard: %+v", g)
	}
}

func TestStorageFailure(t *testing.T) {
	m := &StateMachine{}
	base := newMemStore()
	oneOp(t)(put(t, m, base, "a", "1", nil))
	for _, tc := range []struct {
		name string
		fs   *faultyStore
		cmd  []byte
	}{
		{"get", &faultyStore{memStore: base, failGet: true}, must(t)(EncodePut([]byte("a"), nil, nil, DefaultLimits()))},
		{"set", &faultyStore{memStore: base, failSet: true}, must(t)(EncodePut([]byte("a"), nil, nil, DefaultLimits()))},
		{"delete", &faultyStore{memStore: base, failDelete: true}, must(t)(EncodeDelete([]byte("a"), nil, DefaultLimits()))},
	} {
		results := make([][]byte, 1)
		err := m.Apply(tc.fs, 3, []statemachine.Command{{Index: 42, Data: tc.cmd}}, results)
		if !errors.Is(err, errDisk) || CodeOf(err) != "" {
			t.Errorf("%s: Apply = %v, want a wrapped storage error", tc.name, err)
		}
	}
	fs := &faultyStore{memStore: base, failGet: true, failScan: true}
	if _, err := m.Read(fs, 0, must(t)(EncodeGet([]byte("a"), DefaultLimits()))); !errors.Is(err, errDisk) {
		t.Errorf("Read get = %v, want storage error", err)
	}
	if _, err := m.Read(fs, 0, must(t)(EncodeScan(nil, nil, 0, DefaultLimits()))); !errors.Is(err, errDisk) {
		t.Errorf("Read scan = %v, want storage error", err)
	}
	if err := m.Apply(base, 0, make([]statemachine.Command, 2), make([][]byte, 1)); err == nil {
		t.Errorf("Apply accepted mismatched results length")
	}
}

func TestCorruptRecord(t *testing.T) {
	m, w := &StateMachine{}, newMemStore()
	w.Set([]byte("kbad"), []byte{0x00, 'v'}) // version 0 is never stored
	w.Set([]byte("kbad2"), []byte{0x80})     // truncated varint
	for _, key := range []string{"bad", "bad2"} {
		results := make([][]byte, 1)
		cmd := must(t)(EncodePut([]byte(key), nil, nil, DefaultLimits()))
		if err := m.Apply(w, 0, []statemachine.Command{{Data: cmd}}, results); !errors.Is(err, ErrMalformed) {
			t.Errorf("Apply over corrupt %q = %v, want ErrMalformed", key, err)
		}
		if _, err := m.Read(w, 0, must(t)(EncodeGet([]byte(key), DefaultLimits()))); !errors.Is(err, ErrMalformed) {
			t.Errorf("Read corrupt %q = %v, want ErrMalformed", key, err)
		}
	}
	if _, err := m.Read(w, 0, must(t)(EncodeScan(nil, nil, 0, DefaultLimits()))); !errors.Is(err, ErrMalformed) {
		t.Errorf("scan over corrupt records = %v, want ErrMalformed", err)
	}
}

func TestMalformedQueries(t *testing.T) {
	m, w := &StateMachine{}, newMemStore()
	for _, q := range [][]byte{
		nil,
		{formatVersion},
		{2, queryGet, 1, 'k'},
		{formatVersion, opPut, condNone, 1, 'k', 0},
		{formatVersion, queryGet},
		{formatVersion, queryGet, 0},
		{formatVersion, queryGet, 5, 'k'},
		{formatVersion, queryGet, 1, 'k', 0},
		{formatVersion, queryScan, 0, 0},
		{formatVersion, queryScan, 0, 0, 0x80},
		{formatVersion, queryScan, 9, 'p', 0, 0},
		{formatVersion, queryScan, 0, 0, 0, 0},
	} {
		_, err := m.Read(w, 0, q)
		if !IsCode(err, CodeInvalidArgument) {
			t.Errorf("Read(%x) = %v, want invalid_argument", q, err)
		}
	}
}

func TestErrors(t *testing.T) {
	err := fmt.Errorf("request 7: %w", &Error{Code: CodeTooLarge, Message: "value is 5 bytes", FailedOp: 2})
	if !errors.Is(err, ErrTooLarge) || errors.Is(err, ErrConflict) {
		t.Fatalf("errors.Is by code broken")
	}
	if CodeOf(err) != CodeTooLarge || !IsCode(err, CodeTooLarge) || IsCode(nil, "") || CodeOf(errDisk) != "" {
		t.Fatalf("CodeOf/IsCode broken")
	}
	if got := err.Error(); got != "request 7: kv: too_large: value is 5 bytes" {
		t.Fatalf("Error() = %q", got)
	}
	// Every code survives a round trip through a result.
	for _, code := range []Code{CodeInvalidArgument, CodeNotFound, CodeConflict, CodeTooLarge} {
		in := &Error{Code: code, Message: "m", CurrentVersion: 9, FailedOp: 3}
		_, out := DecodeResult(encodeErrorResult(in))
		if e, ok := errors.AsType[*Error](out); !ok || *e != *in {
			t.Fatalf("round trip of %+v gave %v", in, out)
		}
	}
}

func TestDecodeMalformedResults(t *testing.T) {
	ok := encodeOKResult([]OpResult{{1, 0}})
	for _, b := range [][]byte{
		nil, {2, 0, 0}, {formatVersion}, {formatVersion, 9}, ok[:len(ok)-1], append(bytes.Clone(ok), 0),
		{formatVersion, 0, 200, 1, 1}, {formatVersion, 3, 1, 1}, {formatVersion, 3, 1, 1, 5, 'x'},
	} {
		if _, err := DecodeResult(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("DecodeResult(%x) = %v, want ErrMalformed", b, err)
		}
	}
	for _, b := range [][]byte{nil, {formatVersion, respGet}, {formatVersion, respScan, 0}, {formatVersion, respGet, 2}, {formatVersion, respGet, 1, 0, 0}, {formatVersion, respGet, 1, 1, 3}, {formatVersion, respGet, 0, 0}} {
		if _, err := DecodeGetResponse(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("DecodeGetResponse(%x) = %v, want ErrMalformed", b, err)
		}
	}
	for _, b := range [][]byte{nil, {formatVersion, respGet, 0}, {formatVersion, respScan, 2}, {formatVersion, respScan, 0, 0, 1, 0}, {formatVersion, respScan, 0, 1, 'k', 0, 0}, {formatVersion, respScan, 0, 1, 'k', 1, 4}} {
		if _, err := DecodeScanResponse(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("DecodeScanResponse(%x) = %v, want ErrMalformed", b, err)
		}
	}
}

func TestConcurrentStateMachineIsStateless(t *testing.T) {
	// One StateMachine serves many vShards at once: it keeps no state.
	m := &StateMachine{}
	done := make(chan struct{})
	for i := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			w := newMemStore()
			for j := range 100 {
				cmd, _ := EncodePut(fmt.Appendf(nil, "k%d", j), []byte{byte(i)}, nil, DefaultLimits())
				res := make([][]byte, 1)
				if err := m.Apply(w, uint32(i), []statemachine.Command{{Data: cmd}}, res); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for range 4 {
		<-done
	}
}

func TestVersionOverflow(t *testing.T) {
	m, w := &StateMachine{}, newMemStore()
	w.Set([]byte("kmax"), appendRecord(nil, 1<<64-1, []byte("v")))
	before := w.snapshot()
	_, err := put(t, m, w, "max", "next", nil)
	wantCode(t, err, CodeInvalidArgument)
	if !maps.Equal(w.snapshot(), before) {
		t.Fatalf("overflowing put wrote")
	}
	// Deleting the key is still possible and resets its version.
	if r := oneOp(t)(del(t, m, w, "max", ver(1<<64-1))); r.PrevVersion != 1<<64-1 {
		t.Fatalf("delete = %+v", r)
	}
}

func TestLongKeysAreShortenedInErrors(t *testing.T) {
	m := &StateMachine{}
	fs := &faultyStore{memStore: newMemStore(), failGet: true}
	key := bytes.Repeat([]byte("k"), 1000)
	results := make([][]byte, 1)
	err := m.Apply(fs, 0, []statemachine.Command{{Data: must(t)(EncodePut(key, nil, nil, DefaultLimits()))}}, results)
	if err == nil || len(err.Error()) > 300 || !strings.Contains(err.Error(), "...") {
		t.Fatalf("error message not shortened: %.400v", err)
	}
}

func TestOpString(t *testing.T) {
	for _, tc := range []struct {
		op   Op
		want string
	}{
		{PutOp([]byte("a"), []byte("xyz"), ver(2)), `put "a" if_version=2 (3-byte value)`},
		{DeleteOp([]byte("b"), nil), `delete "b"`},
		{Op{Kind: 9, Key: []byte("c")}, `unknown "c"`},
	} {
		if got := tc.op.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}
}
