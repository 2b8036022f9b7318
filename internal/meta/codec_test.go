package meta

import (
	"bytes"
	"errors"
	"hash/crc32"
	"maps"
	"slices"
	"testing"

	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"google.golang.org/protobuf/proto"
)

func TestEntryCodec(t *testing.T) {
	e := NewBeginJoin("t", HashSecret("s"), key("k"), "a:1", "b:2", "z")
	b, err := EncodeEntry(e)
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeEntry(b)
	if err != nil || !proto.Equal(back, e) {
		t.Fatalf("round trip: %v", err)
	}
	raw := func(e *metapb.Entry) []byte {
		b, err := proto.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	v2 := NewActivateNode(1)
	v2.Version = 2
	for _, c := range []struct {
		name string
		b    []byte
		want error
	}{
		{"too large", make([]byte, MaxEntryBytes+1), ErrTooLarge},
		{"garbage", []byte{0xff, 0xff, 0xff}, ErrMalformed},
		{"empty", nil, ErrUnsupportedVersion},
		{"version 2", raw(v2), ErrUnsupportedVersion},
		{"no kind", raw(&metapb.Entry{Version: 1}), ErrInvalidArgument},
		{"bad enum", raw(NewSetNodeState(1, 42)), ErrInvalidArgument},
		{"nested batch", raw(NewBatch(NewBatch())), ErrNestedBatch},
		{"bad checksum", raw(NewPutCheckpoint(&metapb.Checkpoint{Id: "m", Kind: 1, Phase: "p", Crc32C: 7})), ErrBadChecksum},
	} {
		if _, err := DecodeEntry(c.b); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	if _, err := EncodeEntry(NewSetRoute(0, 0, 1)); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("encode of an invalid entry: %v", err)
	}
	if _, err := EncodeEntry(NewPutCheckpoint(NewCheckpoint("m", 1, "p", 1, make([]byte, MaxEntryBytes)))); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("encode of a large entry: %v", err)
	}
}

func TestStateCodec(t *testing.T) {
	st := base(t)
	b := encoded(t, st)
	// Deterministic: the same content built in another order encodes the same.
	other := &metapb.State{}
	proto.Merge(other, st)
	other.Tokens = map[string]*metapb.Token{}
	keys := slices.Sorted(maps.Keys(st.GetTokens()))
	for i := len(keys) - 1; i >= 0; i-- {
		other.Tokens[keys[i]] = st.GetTokens()[keys[i]]
	}
	if b2 := encoded(t, other); !bytes.Equal(b, b2) {
		t.Fatal("equal states encode differently")
	}

	if st, err := DecodeState(nil); err != nil || proto.Size(st) != 0 {
		t.Fatalf("empty state: %v", err)
	}
	bad := func(name string, want error, mod func(st *metapb.State)) {
		t.Helper()
		st := base(t)
		mod(st)
		b, err := proto.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := DecodeState(b); !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", name, err, want)
		}
	}
	bad("format 2", ErrUnsupportedVersion, func(st *metapb.State) { st.FormatVersion = 2 })
	bad("content without format", ErrInvalidState, func(st *metapb.State) { st.FormatVersion = 0 })
	bad("vShards not a power of two", ErrInvalidArgument, func(st *metapb.State) { st.Settings.VshardCount = 24 })
	bad("routing shorter than vShards", ErrInvalidState, func(st *metapb.State) { st.Routing = st.Routing[:3] })
	bad("route to unknown group", ErrInvalidState, func(st *metapb.State) { st.Routing[2].Group = 42 })
	bad("route to metadata group", ErrInvalidState, func(st *metapb.State) { st.Routing[2].Group = 0 })
	bad("no metadata group", ErrInvalidState, func(st *metapb.State) { delete(st.Groups, 0) })
	bad("node id not below next", ErrInvalidState, func(st *metapb.State) { st.NextNodeId = 3 })
	bad("node key and id differ", ErrInvalidState, func(st *metapb.State) { st.Nodes[2].Id = 9 })
	bad("node state out of range", ErrInvalidState, func(st *metapb.State) { st.Nodes[2].State = 17 })
	bad("replica on unknown node", ErrInvalidState, func(st *metapb.State) { st.Groups[1].Replicas[0].Node = 77 })
	bad("replica id not below next", ErrInvalidState, func(st *metapb.State) { st.Groups[1].NextReplicaId = 1 })
	bad("two replicas on a node", ErrInvalidState, func(st *metapb.State) {
		st.Groups[1].Replicas = append(st.Groups[1].Replicas, &metapb.Replica{Id: 5, Node: 1, Role: metapb.Role_ROLE_LEARNER})
		st.Groups[1].NextReplicaId = 6
	})
	bad("role out of range", ErrInvalidState, func(st *metapb.State) { st.Groups[1].Replicas[0].Role = 9 })
	bad("group id not below next", ErrInvalidState, func(st *metapb.State) { st.NextGroupId = 2 })
	bad("ghost out of range", ErrInvalidState, func(st *metapb.State) {
		st.Ghosts = map[uint32]*metapb.Ghost{testV: {NewGroup: 1, NewEpoch: 2}}
	})
	bad("token state out of range", ErrInvalidState, func(st *metapb.State) { st.Tokens["free"].State = 0 })
	bad("two rows hold a group", ErrInvalidState, func(st *metapb.State) {
		st.Migrations = map[string]*metapb.Checkpoint{
			"a": NewFencingCheckpoint("a", 1, "p", 1, nil, 2),
			"b": NewFencingCheckpoint("b", 1, "p", 1, nil, 2),
		}
	})
	bad("a row holds an unknown group", ErrInvalidState, func(st *metapb.State) {
		st.Migrations = map[string]*metapb.Checkpoint{"a": NewFencingCheckpoint("a", 1, "p", 1, nil, 42)}
	})

	for _, c := range []struct {
		name string
		b    []byte
		want error
	}{
		{"too large", make([]byte, MaxStateBytes+1), ErrTooLarge},
		{"garbage", []byte{0x0a, 0xff}, ErrMalformed},
	} {
		if _, err := DecodeState(c.b); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
}

func TestResultCodec(t *testing.T) {
	res := &metapb.Result{Code: metapb.Code_CODE_REPLICA_EXISTS, Message: "m", NodeId: 3, ReplicaId: 4}
	back, err := DecodeResult(EncodeResult(res))
	if err != nil || !proto.Equal(back, res) {
		t.Fatalf("round trip: %v", err)
	}
	if _, err := DecodeResult(make([]byte, MaxResultBytes+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatal(err)
	}
	if _, err := DecodeResult([]byte{0xff}); !errors.Is(err, ErrMalformed) {
		t.Fatal(err)
	}
}

// The checksum covers every field it names, and only those.
func TestCheckpointCRC(t *testing.T) {
	c := NewCheckpoint("m", metapb.MigrationKind_MIGRATION_KIND_VSHARD_MOVE, "copy", 3, []byte("payload"))
	sum := c.GetCrc32C()
	for _, mod := range []func(c *metapb.Checkpoint){
		func(c *metapb.Checkpoint) { c.Id = "n" },
		func(c *metapb.Checkpoint) { c.Kind = metapb.MigrationKind_MIGRATION_KIND_REPLICA_MOVE },
		func(c *metapb.Checkpoint) { c.Phase = "cop" },
		func(c *metapb.Checkpoint) { c.Attempt = 4 },
		func(c *metapb.Checkpoint) { c.Payload = []byte("payloae") },
		func(c *metapb.Checkpoint) { c.FenceGroup = 1 },
		// Moving a byte between fields changes the sum (length prefixes).
		func(c *metapb.Checkpoint) { c.Id, c.Phase = "mc", "opy" },
	} {
		d := proto.Clone(c).(*metapb.Checkpoint)
		mod(d)
		if CheckpointCRC(d) == sum {
			t.Fatalf("%v has the same checksum", d)
		}
	}
	d := proto.Clone(c).(*metapb.Checkpoint)
	d.TimestampUnixNanos = 99
	if CheckpointCRC(d) != sum {
		t.Fatal("the timestamp is covered")
	}
	// The documented bytes, spelled out.
	want := []byte{0, 0, 0, 1, 'm', 0, 0, 0, 2, 0, 0, 0, 4, 'c', 'o', 'p', 'y', 0, 0, 0, 3, 0, 0, 0, 7}
	want = append(want, "payload"...)
	if got := crc32.Checksum(want, crc32.MakeTable(crc32.Castagnoli)); got != sum || sum != 0x9b822797 {
		t.Fatalf("checksum %08x, the documented bytes give %08x, the documented value is 9b822797", sum, got)
	}
	// A fence group appends be64(group).
	f := NewFencingCheckpoint("m", metapb.MigrationKind_MIGRATION_KIND_VSHARD_MOVE, "copy", 3, []byte("payload"), 7)
	want = append(want, 0, 0, 0, 0, 0, 0, 0, 7)
	if got := crc32.Checksum(want, crc32.MakeTable(crc32.Castagnoli)); got != f.GetCrc32C() || got != 0x9922677e {
		t.Fatalf("checksum with fence group 7: %08x, the documented bytes give %08x", f.GetCrc32C(), got)
	}
}

// One corrupt row does not make the state unloadable: a state holding rows
// that fail VerifyCheckpoint (a bad checksum, a key that disagrees with the
// id, a kind out of range under a broken checksum) round-trips through
// EncodeState/DecodeState unchanged, lists the rows as quarantined, and
// Apply keeps working on it.
func TestQuarantinedRowsRoundTrip(t *testing.T) {
	st := base(t)
	st, _, _ = mustApply(t, st, NewPutCheckpoint(NewFencingCheckpoint("good", 1, "copy", 1, []byte("x"), 1)), t0)
	rot := NewFencingCheckpoint("rot", 1, "copy", 1, []byte("payload"), 2)
	rot.Payload[3] ^= 0x20
	moved := NewCheckpoint("was-moved", 1, "copy", 1, nil)
	kind := NewCheckpoint("kind", 1, "copy", 1, nil)
	kind.Kind = 77
	st.Migrations["rot"], st.Migrations["moved"], st.Migrations["kind"] = rot, moved, kind
	b, err := EncodeState(st)
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeState(b)
	if err != nil {
		t.Fatalf("a state with quarantined rows does not decode: %v", err)
	}
	if !proto.Equal(back, st) {
		t.Fatal("the state changed through encode/decode")
	}
	if q := QuarantinedCheckpoints(back); !slices.Equal(q, []string{"kind", "moved", "rot"}) {
		t.Fatalf("quarantined %v", q)
	}
	if err := VerifyCheckpoint("rot", back.GetMigrations()["rot"]); !errors.Is(err, ErrBadChecksum) {
		t.Fatalf("rot: %v", err)
	}
	if err := VerifyCheckpoint("moved", back.GetMigrations()["moved"]); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("moved: %v", err)
	}
	if err := VerifyCheckpoint("good", back.GetMigrations()["good"]); err != nil {
		t.Fatalf("good: %v", err)
	}
	// The corrupt row held group 2 before it rotted: it holds nothing now.
	if _, ok := GroupFence(back, 2); ok {
		t.Fatal("a quarantined row holds a group")
	}
	if id, ok := GroupFence(back, 1); !ok || id != "good" {
		t.Fatalf("group 1 held by %q %v", id, ok)
	}
	next, _, _ := mustApply(t, back, NewAddReplica(2, 2, metapb.Role_ROLE_LEARNER), t0)
	next, _, _ = mustApply(t, next, NewDeleteCheckpoint("rot"), t0)
	if q := QuarantinedCheckpoints(encodedState(t, next)); !slices.Equal(q, []string{"kind", "moved"}) {
		t.Fatalf("quarantined after a delete: %v", q)
	}
}

// encodedState round-trips st through its encoding.
func encodedState(t *testing.T, st *metapb.State) *metapb.State {
	t.Helper()
	back, err := DecodeState(encoded(t, st))
	if err != nil {
		t.Fatal(err)
	}
	return back
}
