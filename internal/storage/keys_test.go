package storage

import (
	"bytes"
	"math"
	"testing"

	"pgregory.net/rapid"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

func TestPrefixEnd(t *testing.T) {
	cases := []struct{ in, want []byte }{
		{[]byte{0x01}, []byte{0x02}},
		{[]byte{0x01, 0x02}, []byte{0x01, 0x03}},
		{[]byte{0x01, 0xff}, []byte{0x02}},
		{[]byte{0x01, 0xfe, 0xff, 0xff}, []byte{0x01, 0xff}},
		{[]byte{0x00, 0xff}, []byte{0x01}},
		{[]byte{0x00}, []byte{0x01}},
		{[]byte{0xfe}, []byte{0xff}},
		{[]byte{0xff}, nil},
		{[]byte{0xff, 0xff, 0xff}, nil},
		{nil, nil},
		{[]byte{}, nil},
	}
	for _, c := range cases {
		in := bytes.Clone(c.in)
		got := prefixEnd(in)
		if !bytes.Equal(got, c.want) || (c.want == nil) != (got == nil) {
			t.Errorf("prefixEnd(%x) = %x (nil %v), want %x (nil %v)", c.in, got, got == nil, c.want, c.want == nil)
		}
		if !bytes.Equal(in, c.in) {
			t.Errorf("prefixEnd(%x) modified its argument to %x", c.in, in)
		}
		if g := PrefixEnd(c.in); !bytes.Equal(g, got) {
			t.Errorf("PrefixEnd(%x) = %x, prefixEnd = %x", c.in, g, got)
		}
	}
}

// TestPrefixEndBoundsPrefix: prefixEnd(p) is above every key with prefix p
// and is the smallest such bound: no key outside the prefix lies between.
func TestPrefixEndBoundsPrefix(t *testing.T) {
	bytesGen := rapid.SliceOfN(rapid.OneOf(rapid.Byte(), rapid.Just[byte](0xff), rapid.Just[byte](0)), 0, 6)
	rapid.Check(t, func(t *rapid.T) {
		p := bytesGen.Draw(t, "prefix")
		suffix := bytesGen.Draw(t, "suffix")
		other := bytesGen.Draw(t, "other")
		end := prefixEnd(p)
		k := append(bytes.Clone(p), suffix...)
		if end != nil && bytes.Compare(k, end) >= 0 {
			t.Fatalf("key %x with prefix %x is not below prefixEnd %x", k, p, end)
		}
		if end == nil && len(p) > 0 && bytes.Count(p, []byte{0xff}) != len(p) {
			t.Fatalf("prefixEnd(%x) = nil, but the prefix is not all 0xff", p)
		}
		// other is in [p, end) exactly when it has prefix p.
		inRange := bytes.Compare(other, p) >= 0 && (end == nil || bytes.Compare(other, end) < 0)
		if inRange != bytes.HasPrefix(other, p) {
			t.Fatalf("key %x: in [%x, %x) = %v, has prefix = %v", other, p, end, inRange, !inRange)
		}
	})
}

func TestEntryKeysSortByIndex(t *testing.T) {
	idx := []uint64{0, 1, 2, 255, 256, 257, 1 << 16, 1<<32 - 1, 1 << 32, 1 << 56, math.MaxUint64 - 1, math.MaxUint64}
	groups := []ids.GroupID{0, 1, 2, 255, 256, math.MaxUint64}
	for gi, g := range groups {
		for i := 1; i < len(idx); i++ {
			a, b := entryKey(nil, g, idx[i-1]), entryKey(nil, g, idx[i])
			if bytes.Compare(a, b) >= 0 {
				t.Fatalf("entryKey(%s, %d) = %x does not sort below entryKey(%s, %d) = %x", g, idx[i-1], a, g, idx[i], b)
			}
		}
		// Every entry of a group sorts below every entry of the next one,
		// and inside the group's Raft range, with its other Raft records.
		start, end := raftRange(g)
		for _, k := range [][]byte{entryKey(nil, g, 0), entryKey(nil, g, math.MaxUint64), hardStateKey(g), truncatedKey(g)} {
			if bytes.Compare(k, start) < 0 || (end != nil && bytes.Compare(k, end) >= 0) {
				t.Fatalf("key %x of %s outside its Raft range [%x, %x)", k, g, start, end)
			}
		}
		// Hard state and truncated state are not entries.
		for _, k := range [][]byte{hardStateKey(g), truncatedKey(g)} {
			if bytes.Compare(k, entryKey(nil, g, 0)) >= 0 && bytes.Compare(k, entryKey(nil, g, math.MaxUint64)) <= 0 {
				t.Fatalf("Raft record %x of %s falls among its entries", k, g)
			}
		}
		if gi > 0 {
			prev := groups[gi-1]
			if bytes.Compare(entryKey(nil, prev, math.MaxUint64), entryKey(nil, g, 0)) >= 0 {
				t.Fatalf("entries of %s and %s interleave", prev, g)
			}
			if _, pend := raftRange(prev); bytes.Compare(pend, start) > 0 {
				t.Fatalf("Raft ranges of %s and %s overlap", prev, g)
			}
		}
	}
	// entryKey appends to dst.
	if k := entryKey([]byte("pre"), 1, 2); !bytes.HasPrefix(k, []byte("pre")) || !bytes.Equal(k[3:], entryKey(nil, 1, 2)) {
		t.Fatalf("entryKey did not append to dst: %x", k)
	}
	rapid.Check(t, func(t *rapid.T) {
		g := ids.GroupID(rapid.Uint64().Draw(t, "g"))
		a, b := rapid.Uint64().Draw(t, "a"), rapid.Uint64().Draw(t, "b")
		if c := bytes.Compare(entryKey(nil, g, a), entryKey(nil, g, b)); c != cmpUint(a, b) {
			t.Fatalf("entry keys of %d and %d compare %d", a, b, c)
		}
	})
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

type vshardID struct {
	g ids.GroupID
	v uint32
}

func genVShard() *rapid.Generator[vshardID] {
	return rapid.Custom(func(t *rapid.T) vshardID {
		return vshardID{
			g: ids.GroupID(rapid.OneOf(rapid.Uint64Range(0, 3), rapid.Uint64(), rapid.Just[uint64](math.MaxUint64)).Draw(t, "g")),
			v: rapid.OneOf(rapid.Uint32Range(0, 3), rapid.Uint32(), rapid.Just[uint32](math.MaxUint32)).Draw(t, "v"),
		}
	})
}

// inPrefixRange reports whether k lies in [p, prefixEnd(p)).
func inPrefixRange(k, p []byte) bool {
	end := prefixEnd(p)
	return bytes.Compare(k, p) >= 0 && (end == nil || bytes.Compare(k, end) < 0)
}

func TestVShardRangesDoNotOverlap(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		a, b := genVShard().Draw(t, "a"), genVShard().Draw(t, "b")
		pa, pb := VShardPrefix(a.g, a.v), VShardPrefix(b.g, b.v)
		key := rapid.SliceOfN(rapid.Byte(), 0, 4).Draw(t, "key")
		sub := rapid.SampledFrom([]byte{SubUser, SubDedup, SubWatermark}).Draw(t, "sub")
		ka := append(VShardSubPrefix(a.g, a.v, sub), key...)

		if !bytes.HasPrefix(ka, pa) || !inPrefixRange(ka, pa) {
			t.Fatalf("key %x of %v is outside its vShard range", ka, a)
		}
		if !inPrefixRange(ka, GroupStatePrefix(a.g)) {
			t.Fatalf("key %x of %v is outside its group's state range", ka, a)
		}
		if a != b {
			if inPrefixRange(ka, pb) {
				t.Fatalf("key %x of %v lies in the range of %v", ka, a, b)
			}
			// The two ranges are disjoint: one ends before the other starts.
			ea, eb := prefixEnd(pa), prefixEnd(pb)
			if !(ea != nil && bytes.Compare(ea, pb) <= 0) && !(eb != nil && bytes.Compare(eb, pa) <= 0) {
				t.Fatalf("ranges of %v [%x, %x) and %v [%x, %x) overlap", a, pa, ea, b, pb, eb)
			}
		}
		if a.g != b.g && inPrefixRange(ka, GroupStatePrefix(b.g)) {
			t.Fatalf("key %x of %v lies in the state range of group %s", ka, a, b.g)
		}
		// The group's state range contains the whole vShard range.
		gp := GroupStatePrefix(a.g)
		if !bytes.HasPrefix(pa, gp) {
			t.Fatalf("VShardPrefix %x does not extend GroupStatePrefix %x", pa, gp)
		}
		if ge, ve := prefixEnd(gp), prefixEnd(pa); ge != nil && (ve == nil || bytes.Compare(ve, ge) > 0) {
			t.Fatalf("vShard range of %v ends at %x, beyond its group's range end %x", a, ve, ge)
		}
		// Sub-areas of one vShard are disjoint.
		for _, other := range []byte{SubUser, SubDedup, SubWatermark} {
			if other != sub && inPrefixRange(ka, VShardSubPrefix(a.g, a.v, other)) {
				t.Fatalf("key %x of sub-area %q lies in sub-area %q", ka, sub, other)
			}
		}
	})
}

func TestKeyKindsAreSeparate(t *testing.T) {
	g := ids.GroupID(0x0102030405060708)
	kinds := map[string][]byte{
		"entry":     entryKey(nil, g, 1),
		"hardstate": hardStateKey(g),
		"truncated": truncatedKey(g),
		"applied":   appliedKey(g),
		"state":     VShardSubPrefix(g, 1, SubUser),
		"node":      NodeKey("identity"),
		"tombstone": tombstoneKey(g),
		"replica":   replicaKey(g),
	}
	ranges := map[string][]byte{
		"raft":      raftKey(g, 0)[:9],
		"applied":   appliedKey(g),
		"state":     GroupStatePrefix(g),
		"node":      {prefixNode},
		"tombstone": tombstoneKey(g),
		"replica":   replicaKey(g),
	}
	owner := map[string]string{
		"entry": "raft", "hardstate": "raft", "truncated": "raft", "applied": "applied",
		"state": "state", "node": "node", "tombstone": "tombstone", "replica": "replica",
	}
	for kind, k := range kinds {
		for name, p := range ranges {
			if got, want := inPrefixRange(k, p), owner[kind] == name; got != want {
				t.Errorf("%s key %x in %s range %x: %v, want %v", kind, k, name, p, got, want)
			}
		}
	}
	if !bytes.Equal(AppliedKey(g), appliedKey(g)) {
		t.Errorf("AppliedKey = %x, appliedKey = %x", AppliedKey(g), appliedKey(g))
	}
	if len(replicaKey(g)) != 9 || len(tombstoneKey(g)) != 9 || len(appliedKey(g)) != 9 {
		t.Errorf("fixed-size keys have unexpected lengths")
	}
}
