package storage

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/statemachine"
)

type kv struct{ k, v string }

func scanAll(t *testing.T, r statemachine.Reader, start, end []byte) []kv {
	t.Helper()
	var out []kv
	err := r.Scan(start, end, func(k, v []byte) bool {
		out = append(out, kv{string(k), string(v)})
		return true
	})
	if err != nil {
		t.Fatalf("Scan(%q, %q): %v", start, end, err)
	}
	return out
}

func mustGet(t *testing.T, r statemachine.Reader, key, want string) {
	t.Helper()
	got, err := r.Get([]byte(key))
	if err != nil || string(got) != want {
		t.Fatalf("Get(%q) = %q, %v; want %q", key, got, err, want)
	}
}

func mustMiss(t *testing.T, r statemachine.Reader, key string) {
	t.Helper()
	if got, err := r.Get([]byte(key)); !errors.Is(err, statemachine.ErrNotFound) {
		t.Fatalf("Get(%q) = %q, %v; want ErrNotFound", key, got, err)
	}
}

func TestVShardStore(t *testing.T) {
	e := newTestEngine(t)
	const g, vs = ids.GroupID(3), uint32(7)
	b := e.DB().NewIndexedBatch()
	defer b.Close()

	// Neighbours that must never show through: other vShards of the group,
	// the same vShard number in adjacent groups, the vShard's other
	// sub-areas and the keys just around its user area.
	up := VShardSubPrefix(g, vs, SubUser)
	neighbours := [][]byte{
		append(VShardSubPrefix(g, vs-1, SubUser), "a"...),
		append(VShardSubPrefix(g, vs+1, SubUser), ""...),
		append(VShardSubPrefix(g-1, vs, SubUser), "a"...),
		append(VShardSubPrefix(g+1, vs, SubUser), "a"...),
		append(VShardSubPrefix(g, vs, SubDedup), "a"...),
		append(VShardSubPrefix(g, vs, SubWatermark), "a"...),
		append(VShardPrefix(g, vs), 't', 0xff),
		append(VShardPrefix(g, vs), 'v'),
		VShardPrefix(g, vs),
		prefixEnd(up),
	}
	for _, k := range neighbours {
		if err := b.Set(k, []byte("neighbour"), nil); err != nil {
			t.Fatal(err)
		}
	}

	var w VShardWriter
	w.Reset(b, g, vs, nil)
	keyBuf := []byte("b")
	valBuf := []byte("B")
	for _, p := range []kv{{"a", "A"}, {"c", "C"}, {"", "empty key"}, {"\xff\xff", "high"}, {"a\x00", "A0"}, {"d", ""}} {
		if err := w.Set([]byte(p.k), []byte(p.v)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Set(keyBuf, valBuf); err != nil {
		t.Fatal(err)
	}
	// The writer keeps no reference to the caller's buffers.
	keyBuf[0], valBuf[0] = 'z', 'Z'
	mustGet(t, &w, "b", "B")
	mustMiss(t, &w, "z")

	all := []kv{{"", "empty key"}, {"a", "A"}, {"a\x00", "A0"}, {"b", "B"}, {"c", "C"}, {"d", ""}, {"\xff\xff", "high"}}
	if got := scanAll(t, &w, nil, nil); !reflect.DeepEqual(got, all) {
		t.Fatalf("Scan(nil, nil) = %q, want %q", got, all)
	}
	for _, c := range []struct {
		start, end []byte
		want       []kv
	}{
		{[]byte("a"), []byte("c"), all[1:4]},
		{[]byte("a\x00"), []byte("b"), all[2:3]},
		{[]byte("b"), nil, all[3:]},
		{nil, []byte("b"), all[:3]},
		{[]byte(""), []byte("a"), all[:1]},
		{[]byte("c"), []byte("c"), nil},
		{[]byte("c"), []byte("a"), nil},
		{[]byte("e"), nil, all[6:]},
		{[]byte("\xff\xff\x00"), nil, nil},
		// Only a nil end means "to the end of the vShard".
		{nil, []byte{}, nil},
	} {
		if got := scanAll(t, &w, c.start, c.end); !reflect.DeepEqual(got, c.want) {
			t.Errorf("Scan(%q, %q) = %q, want %q", c.start, c.end, got, c.want)
		}
	}

	// Stopping early.
	var seen []string
	if err := w.Scan(nil, nil, func(k, _ []byte) bool {
		seen = append(seen, string(k))
		return len(seen) < 2
	}); err != nil || !reflect.DeepEqual(seen, []string{"", "a"}) {
		t.Fatalf("Scan stopped after 2 keys: saw %q, err %v", seen, err)
	}

	mustGet(t, &w, "d", "")
	mustMiss(t, &w, "missing")
	mustMiss(t, &w, "t\xff") // the raw neighbour key, relative to the user area

	if err := w.Delete([]byte("a")); err != nil {
		t.Fatal(err)
	}
	if err := w.Delete([]byte("never written")); err != nil {
		t.Fatal(err)
	}
	mustMiss(t, &w, "a")
	mustGet(t, &w, "a\x00", "A0")
	want := append(all[:1:1], all[2:]...)
	if got := scanAll(t, &w, nil, nil); !reflect.DeepEqual(got, want) {
		t.Fatalf("Scan after Delete = %q, want %q", got, want)
	}

	// Get returns a copy the caller may change.
	v, err := w.Get([]byte("c"))
	if err != nil {
		t.Fatal(err)
	}
	v[0] = 'X'
	mustGet(t, &w, "c", "C")

	// Another vShard of the same batch sees none of it.
	var w2 VShardWriter
	w2.Reset(b, g, vs+1, nil)
	if got := scanAll(t, &w2, nil, nil); !reflect.DeepEqual(got, []kv{{"", "neighbour"}}) {
		t.Fatalf("vShard %d sees %q", vs+1, got)
	}
	mustMiss(t, &w2, "c")

	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	e.reopen()

	// A reader over the committed engine sees the same state, and so does
	// one over a Pebble snapshot.
	var r VShardReader
	r.Reset(e.DB(), g, vs)
	if got := scanAll(t, &r, nil, nil); !reflect.DeepEqual(got, want) {
		t.Fatalf("Scan after commit = %q, want %q", got, want)
	}
	snap := e.DB().NewSnapshot()
	defer snap.Close()
	var rs VShardReader
	rs.Reset(snap, g, vs)
	mustGet(t, &rs, "b", "B")
	mustMiss(t, &rs, "a")

	// Reset repoints a reader.
	r.Reset(e.DB(), g+1, vs)
	if got := scanAll(t, &r, nil, nil); !reflect.DeepEqual(got, []kv{{"a", "neighbour"}}) {
		t.Fatalf("group %s vShard %d sees %q", g+1, vs, got)
	}
	mustMiss(t, &r, "b")

	// The neighbours are untouched.
	for _, k := range neighbours {
		if v, ok, err := Get(e.DB(), k); err != nil || !ok || string(v) != "neighbour" {
			t.Fatalf("neighbour key %x = %q, %v, %v", k, v, ok, err)
		}
	}
}

func TestVShardStoreEdgeVShards(t *testing.T) {
	e := newTestEngine(t)
	b := e.DB().NewIndexedBatch()
	defer b.Close()
	// The last vShard of the last group has no upper neighbour: its user
	// area still ends where the next sub-area would start.
	targets := []struct {
		g  ids.GroupID
		vs uint32
	}{{0, 0}, {1<<64 - 1, 1<<32 - 1}, {1<<64 - 1, 0}, {0, 1<<32 - 1}}
	for i, tg := range targets {
		var w VShardWriter
		w.Reset(b, tg.g, tg.vs, nil)
		for j := range 3 {
			if err := w.Set([]byte{byte(j), 0xff}, fmt.Appendf(nil, "%d", i)); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Set(append(VShardSubPrefix(tg.g, tg.vs, SubWatermark), 0), []byte("wm"), nil); err != nil {
			t.Fatal(err)
		}
	}
	for i, tg := range targets {
		var w VShardWriter
		w.Reset(b, tg.g, tg.vs, nil)
		got := scanAll(t, &w, nil, nil)
		v := fmt.Sprint(i)
		want := []kv{{"\x00\xff", v}, {"\x01\xff", v}, {"\x02\xff", v}}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("group %s vShard %d: Scan = %q, want %q", tg.g, tg.vs, got, want)
		}
	}
}

func TestScanRangeAndGet(t *testing.T) {
	e := newTestEngine(t)
	for _, k := range []string{"a", "b", "c", "d"} {
		if err := e.DB().Set([]byte(k), []byte(k+k), pebble.NoSync); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	err := ScanRange(e.DB(), []byte("b"), []byte("d"), func(k, v []byte) error {
		got = append(got, string(k)+"="+string(v))
		return nil
	})
	if err != nil || !reflect.DeepEqual(got, []string{"b=bb", "c=cc"}) {
		t.Fatalf("ScanRange = %q, %v", got, err)
	}
	stop := errors.New("stop")
	n := 0
	err = ScanRange(e.DB(), nil, nil, func(k, v []byte) error {
		n++
		return stop
	})
	if !errors.Is(err, stop) || n != 1 {
		t.Fatalf("ScanRange with a failing callback: %d calls, err %v", n, err)
	}
	if v, ok, err := Get(e.DB(), []byte("c")); err != nil || !ok || !bytes.Equal(v, []byte("cc")) {
		t.Fatalf("Get(c) = %q, %v, %v", v, ok, err)
	}
	if v, ok, err := Get(e.DB(), []byte("x")); err != nil || ok || v != nil {
		t.Fatalf("Get(x) = %q, %v, %v; want not found", v, ok, err)
	}
}
