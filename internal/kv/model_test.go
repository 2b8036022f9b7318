package kv

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"pgregory.net/rapid"
)

// modelEntry is the model's view of one key.
type modelEntry struct {
	value   string
	version uint64
}

// model is the obviously-correct specification the state machine is checked
// against: a map, updated op by op on a copy that is kept only if every
// condition held.
type model map[string]modelEntry

func (mo model) apply(ops []Op) (model, []OpResult, *Error) {
	next := maps.Clone(mo)
	res := make([]OpResult, len(ops))
	for i, o := range ops {
		cur := next[string(o.Key)].version
		if o.IfVersion != nil && *o.IfVersion != cur {
			return mo, nil, &Error{Code: CodeConflict, CurrentVersion: cur, FailedOp: i}
		}
		switch o.Kind {
		case OpPut:
			next[string(o.Key)] = modelEntry{value: string(o.Value), version: cur + 1}
			res[i] = OpResult{Version: cur + 1, PrevVersion: cur}
		case OpDelete:
			delete(next, string(o.Key))
			res[i] = OpResult{PrevVersion: cur}
		}
	}
	return next, res, nil
}

var modelKeys = []string{"a", "ab", "abc", "b", "ba", "{t}a", "{t}b", "\xff", "a\x00"}

func TestModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		m, w := &StateMachine{}, newMemStore()
		mo := model{}

		genKey := rapid.SampledFrom(modelKeys)
		genValue := rapid.StringN(0, 8, -1)
		genCond := func(t *rapid.T, key string) *uint64 {
			cur := mo[key].version
			switch rapid.IntRange(0, 5).Draw(t, "cond") {
			case 0, 1:
				return nil
			case 2:
				return ver(0)
			case 3:
				return ver(cur)
			case 4:
				return ver(cur + 1)
			default:
				return ver(rapid.Uint64Range(0, 4).Draw(t, "ifVersion"))
			}
		}
		genOp := func(t *rapid.T) Op {
			key := genKey.Draw(t, "key")
			if rapid.Bool().Draw(t, "isPut") {
				return PutOp([]byte(key), []byte(genValue.Draw(t, "value")), genCond(t, key))
			}
			return DeleteOp([]byte(key), genCond(t, key))
		}
		check := func(t *rapid.T, ops []Op, cmd []byte) {
			res, err := applyCmd(t, m, w, 0, cmd)
			next, want, werr := mo.apply(ops)
			if werr != nil {
				e, ok := errors.AsType[*Error](err)
				if !ok || e.Code != werr.Code || e.CurrentVersion != werr.CurrentVersion || e.FailedOp != werr.FailedOp {
					t.Fatalf("ops %v: got %v, want %+v", ops, err, werr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ops %v: unexpected error %v", ops, err)
			}
			if !slices.Equal(res.Ops, want) {
				t.Fatalf("ops %v: results %v, want %v", ops, res.Ops, want)
			}
			mo = next
		}

		t.Repeat(map[string]func(*rapid.T){
			"put": func(t *rapid.T) {
				o := genOp(t)
				o.Kind, o.Value = OpPut, []byte(genValue.Draw(t, "value"))
				check(t, []Op{o}, must(t)(EncodePut(o.Key, o.Value, o.IfVersion, DefaultLimits())))
			},
			"delete": func(t *rapid.T) {
				o := genOp(t)
				o.Kind, o.Value = OpDelete, nil
				check(t, []Op{o}, must(t)(EncodeDelete(o.Key, o.IfVersion, DefaultLimits())))
			},
			"batch": func(t *rapid.T) {
				ops := rapid.SliceOfN(rapid.Custom(genOp), 1, 6).Draw(t, "ops")
				check(t, ops, must(t)(EncodeBatch(ops, DefaultLimits())))
			},
			"get": func(t *rapid.T) {
				key := genKey.Draw(t, "key")
				g := readGet(t, m, w, key)
				want, ok := mo[key]
				if g.Found != ok || g.Version != want.version || string(g.Value) != want.value {
					t.Fatalf("get %q = %+v, model %+v (found %v)", key, g, want, ok)
				}
			},
			"scan": func(t *rapid.T) {
				prefix := rapid.SampledFrom([]string{"", "a", "ab", "b", "{", "\xff", "z"}).Draw(t, "prefix")
				limit := rapid.IntRange(0, 4).Draw(t, "limit")
				var want []string
				for _, k := range slices.Sorted(maps.Keys(mo)) {
					if strings.HasPrefix(k, prefix) {
						want = append(want, fmt.Sprintf("%s=%s@%d", k, mo[k].value, mo[k].version))
					}
				}
				var got []string
				after := ""
				for page := 0; ; page++ {
					if page > len(modelKeys)+1 {
						t.Fatalf("scan does not terminate")
					}
					s := scanPage(t, m, w, prefix, after, limit)
					if limit > 0 && len(s.Entries) > limit {
						t.Fatalf("scan returned %d entries for limit %d", len(s.Entries), limit)
					}
					for _, e := range s.Entries {
						got = append(got, fmt.Sprintf("%s=%s@%d", e.Key, e.Value, e.Version))
					}
					if !s.More {
						break
					}
					if len(s.Entries) == 0 {
						t.Fatalf("More with no entries")
					}
					after = string(s.Entries[len(s.Entries)-1].Key)
				}
				if !slices.Equal(got, want) {
					t.Fatalf("scan %q limit %d = %q, want %q", prefix, limit, got, want)
				}
			},
			"": func(t *rapid.T) {
				// Storage holds exactly the model, in the documented layout.
				want := map[string]string{}
				for k, e := range mo {
					want["k"+k] = string(appendRecord(nil, e.version, []byte(e.value)))
				}
				if got := w.snapshot(); !maps.Equal(got, want) {
					t.Fatalf("storage %q, model %q", got, want)
				}
			},
		})
	})
}

// TestResultRoundTrip checks that every successful result and error result
// encodes and decodes losslessly.
func TestResultRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		ops := rapid.SliceOfN(rapid.Custom(func(t *rapid.T) OpResult {
			return OpResult{Version: rapid.Uint64().Draw(t, "v"), PrevVersion: rapid.Uint64().Draw(t, "p")}
		}), 0, 50).Draw(t, "ops")
		res, err := DecodeResult(encodeOKResult(ops))
		if err != nil || len(res.Ops) != len(ops) || (len(ops) > 0 && !slices.Equal(res.Ops, ops)) {
			t.Fatalf("round trip %v -> %v, %v", ops, res.Ops, err)
		}
	})
}
