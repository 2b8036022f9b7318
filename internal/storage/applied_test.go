package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
	"pgregory.net/rapid"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// nilIfEmpty makes generated slices compare like decoded ones: the decoder
// leaves absent lists nil.
func nilIfEmpty[S ~[]E, E any](s S) S {
	if len(s) == 0 {
		return nil
	}
	return s
}

func genIDs() *rapid.Generator[[]uint64] {
	return rapid.Map(rapid.SliceOfN(rapid.OneOf(rapid.Uint64Range(1, 10), rapid.Uint64()), 0, 8), nilIfEmpty[[]uint64])
}

func genAppliedState() *rapid.Generator[AppliedState] {
	return rapid.Custom(func(t *rapid.T) AppliedState {
		st := AppliedState{
			Index:        rapid.Uint64().Draw(t, "index"),
			Term:         rapid.Uint64().Draw(t, "term"),
			MaxReplicaID: ids.ReplicaID(rapid.Uint64().Draw(t, "maxReplica")),
			ConfState: raftpb.ConfState{
				Voters:         genIDs().Draw(t, "voters"),
				Learners:       genIDs().Draw(t, "learners"),
				VotersOutgoing: genIDs().Draw(t, "outgoing"),
				LearnersNext:   genIDs().Draw(t, "next"),
				AutoLeave:      rapid.Bool().Draw(t, "autoLeave"),
			},
		}
		n := rapid.IntRange(0, 12).Draw(t, "replicas")
		for range n {
			st.Replicas = append(st.Replicas, ReplicaDesc{
				Replica: ids.ReplicaID(rapid.Uint64().Draw(t, "replica")),
				Node:    ids.NodeID(rapid.Uint64().Draw(t, "node")),
			})
		}
		return st
	})
}

func TestAppliedStateRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		st := genAppliedState().Draw(t, "state")
		prefix := rapid.SliceOfN(rapid.Byte(), 0, 4).Draw(t, "prefix")
		enc, err := EncodeAppliedState(bytes.Clone(prefix), &st)
		if err != nil {
			t.Fatalf("EncodeAppliedState: %v", err)
		}
		if !bytes.Equal(enc[:len(prefix)], prefix) {
			t.Fatalf("EncodeAppliedState did not append to dst: %x", enc)
		}
		// The stored form ends with the conf state's protobuf, marshalled
		// in place.
		if cs, _ := st.ConfState.Marshal(); !bytes.HasSuffix(enc, cs) {
			t.Fatalf("encoding %x does not end with the conf state %x", enc, cs)
		}
		got, err := DecodeAppliedState(enc[len(prefix):])
		if err != nil {
			t.Fatalf("DecodeAppliedState: %v", err)
		}
		if !reflect.DeepEqual(got, st) {
			t.Fatalf("round trip = %+v, want %+v", got, st)
		}
		// Clone is deep: changing the clone leaves the original alone.
		c := got.Clone()
		if !reflect.DeepEqual(c, st) {
			t.Fatalf("Clone = %+v, want %+v", c, st)
		}
		if len(c.Replicas) > 0 {
			c.Replicas[0].Node++
		}
		if len(c.ConfState.Voters) > 0 {
			c.ConfState.Voters[0]++
		}
		if !reflect.DeepEqual(got, st) {
			t.Fatalf("changing a Clone changed the original: %+v", got)
		}
	})
}

func TestAppliedStateNodeOf(t *testing.T) {
	st := AppliedState{Replicas: []ReplicaDesc{{Replica: 1, Node: 10}, {Replica: 3, Node: 30}}}
	if n, ok := st.NodeOf(3); !ok || n != 30 {
		t.Fatalf("NodeOf(3) = %d, %v; want 30, true", n, ok)
	}
	if n, ok := st.NodeOf(2); ok {
		t.Fatalf("NodeOf(2) = %d, true; want not found", n)
	}
}

// TestDecodeAppliedStateTruncated cuts a valid record at every length: cuts
// inside the fixed part must be refused; cuts inside the trailing conf state
// may decode (protobuf has no end marker) but must never panic or return a
// non-ErrCorrupt error.
func TestDecodeAppliedStateTruncated(t *testing.T) {
	st := AppliedState{
		Index: 1 << 40, Term: 300, MaxReplicaID: 5,
		Replicas:  []ReplicaDesc{{Replica: 1, Node: 1 << 20}, {Replica: 5, Node: 2}},
		ConfState: raftpb.ConfState{Voters: []uint64{1, 5}, Learners: []uint64{7}, AutoLeave: true},
	}
	enc, err := EncodeAppliedState(nil, &st)
	if err != nil {
		t.Fatal(err)
	}
	cs, _ := st.ConfState.Marshal()
	fixed := len(enc) - len(cs)
	for n := range len(enc) {
		_, err := DecodeAppliedState(enc[:n])
		if n < fixed && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("decoding the first %d of %d bytes: err %v, want ErrCorrupt", n, len(enc), err)
		}
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("decoding the first %d bytes: err %v does not wrap ErrCorrupt", n, err)
		}
	}
}

func TestDecodeAppliedStateRefusesGarbage(t *testing.T) {
	uv := func(vs ...uint64) []byte {
		b := []byte{appliedStateVersion}
		for _, v := range vs {
			b = binary.AppendUvarint(b, v)
		}
		return b
	}
	replicas := func(n int) []byte {
		b := uv(1, 1, uint64(n), uint64(n))
		for i := range n {
			b = binary.AppendUvarint(b, uint64(i+1))
			b = binary.AppendUvarint(b, 1)
		}
		return b
	}
	cases := map[string][]byte{
		"nil":                      nil,
		"empty":                    {},
		"version 0":                {0, 0, 0, 0, 0},
		"version 2":                {2, 0, 0, 0, 0},
		"version only":             {appliedStateVersion},
		"overlong varint":          append([]byte{appliedStateVersion}, bytes.Repeat([]byte{0xff}, 11)...),
		"unterminated varint":      {appliedStateVersion, 0x80},
		"replica count huge":       uv(1, 1, 1, 1<<62),
		"replica count > input":    uv(1, 1, 1, 3, 1, 1, 2, 2),
		"replica count > max":      replicas(maxReplicas + 1),
		"replica truncated":        append(uv(1, 1, 2, 2, 1, 1, 2), 0x80, 0x80, 0x80),
		"conf state garbage":       append(uv(1, 1, 0, 0), 0xff, 0xff),
		"conf state truncated":     append(uv(1, 1, 0, 0), 0x08),
		"conf state bad wire type": append(uv(1, 1, 0, 0), 0x0f),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			st, err := DecodeAppliedState(b)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("DecodeAppliedState(%x) = %+v, %v; want an error wrapping ErrCorrupt", b, st, err)
			}
		})
	}
	// The largest replica list the decoder accepts.
	if st, err := DecodeAppliedState(replicas(maxReplicas)); err != nil || len(st.Replicas) != maxReplicas {
		t.Fatalf("decoding %d replicas: %d replicas, err %v", maxReplicas, len(st.Replicas), err)
	}
}

func appliedStateSeeds(t testing.TB) [][]byte {
	var out [][]byte
	for _, st := range []AppliedState{
		{},
		{Index: 5, Term: 2, ConfState: raftpb.ConfState{Voters: []uint64{1, 2, 3}}, Replicas: []ReplicaDesc{{1, 1}, {2, 2}, {3, 3}}, MaxReplicaID: 3},
		{Index: 1 << 40, Term: 7, ConfState: raftpb.ConfState{Voters: []uint64{1, 4}, VotersOutgoing: []uint64{1, 2}, Learners: []uint64{3}, LearnersNext: []uint64{2}, AutoLeave: true},
			Replicas: []ReplicaDesc{{1, 10}, {2, 20}, {3, 30}, {4, 40}}, MaxReplicaID: 4},
	} {
		b, err := EncodeAppliedState(nil, &st)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return append(out, nil, []byte{appliedStateVersion}, []byte{appliedStateVersion, 0, 0, 0, 0xff, 0xff, 0x03}, []byte{2, 0, 0, 0, 0})
}

// FuzzDecodeAppliedState: decoding never panics, refuses with ErrCorrupt,
// and whatever it accepts survives an encode/decode round trip unchanged.
func FuzzDecodeAppliedState(f *testing.F) {
	for _, s := range appliedStateSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := DecodeAppliedState(data)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if len(st.Replicas) > maxReplicas {
			t.Fatalf("accepted %d replicas, bound %d", len(st.Replicas), maxReplicas)
		}
		enc, err := EncodeAppliedState(nil, &st)
		if err != nil {
			t.Fatalf("re-encoding an accepted state: %v", err)
		}
		again, err := DecodeAppliedState(enc)
		if err != nil {
			t.Fatalf("decoding a re-encoded state: %v", err)
		}
		if !reflect.DeepEqual(again, st) {
			t.Fatalf("round trip changed the state: %+v, was %+v", again, st)
		}
	})
}

// TestAppendAppliedStateReusesScratch stages several groups' applied states
// through one scratch buffer: each record in the batch keeps its own key and
// value (the batch copies them before the scratch is overwritten).
func TestAppendAppliedStateReusesScratch(t *testing.T) {
	e := newTestEngine(t)
	b := e.DB().NewBatch()
	defer b.Close()
	want := map[ids.GroupID]AppliedState{}
	var scratch []byte
	for g := ids.GroupID(1); g <= 5; g++ {
		st := AppliedState{Index: uint64(g) * 100, Term: 3, MaxReplicaID: 3,
			ConfState: raftpb.ConfState{Voters: []uint64{1, 2, uint64(g)}}}
		var err error
		if scratch, err = AppendAppliedState(b, g, &st, scratch); err != nil {
			t.Fatal(err)
		}
		want[g] = st
	}
	if err := b.Commit(nil); err != nil {
		t.Fatal(err)
	}
	for g, st := range want {
		v, closer, err := e.DB().Get(AppliedKey(g))
		if err != nil {
			t.Fatalf("group %d: %v", g, err)
		}
		got, err := DecodeAppliedState(v)
		closer.Close()
		if err != nil || !reflect.DeepEqual(got, st) {
			t.Fatalf("group %d: %+v, %v; want %+v", g, got, err, st)
		}
	}
}
