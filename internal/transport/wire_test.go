package transport

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
	"pgregory.net/rapid"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// remoteTypes are the message types peers may send.
var remoteTypes = []raftpb.MessageType{
	raftpb.MsgApp, raftpb.MsgAppResp, raftpb.MsgVote, raftpb.MsgVoteResp,
	raftpb.MsgHeartbeat, raftpb.MsgHeartbeatResp, raftpb.MsgTransferLeader,
	raftpb.MsgTimeoutNow, raftpb.MsgReadIndex, raftpb.MsgReadIndexResp,
	raftpb.MsgPreVote, raftpb.MsgPreVoteResp,
}

// localTypes must never cross the network.
var localTypes = []raftpb.MessageType{
	raftpb.MsgHup, raftpb.MsgBeat, raftpb.MsgProp, raftpb.MsgSnap,
	raftpb.MsgUnreachable, raftpb.MsgSnapStatus, raftpb.MsgCheckQuorum,
	raftpb.MsgStorageAppend, raftpb.MsgStorageAppendResp,
	raftpb.MsgStorageApply, raftpb.MsgStorageApplyResp, raftpb.MsgForgetLeader,
	raftpb.MessageType(24), raftpb.MessageType(-1), raftpb.MessageType(1 << 30),
}

// nilIfEmpty makes generated slices compare like decoded ones: protobuf
// does not distinguish an empty repeated field from an absent one.
func nilIfEmpty[S ~[]E, E any](s S) S {
	if len(s) == 0 {
		return nil
	}
	return s
}

func genMessage() *rapid.Generator[Message] {
	return rapid.Custom(func(t *rapid.T) Message {
		id := rapid.OneOf(rapid.Uint64Range(1, 5), rapid.Uint64Range(1, 1<<64-1))
		big := rapid.OneOf(rapid.Uint64Range(0, 100), rapid.Uint64())
		// nil and empty payloads are distinct on the wire and both survive.
		payload := rapid.OneOf(rapid.Just[[]byte](nil), rapid.SliceOfN(rapid.Byte(), 0, 64))
		m := Message{
			Group: ids.GroupID(big.Draw(t, "group")),
			Msg: raftpb.Message{
				Type:       rapid.SampledFrom(remoteTypes).Draw(t, "type"),
				From:       id.Draw(t, "from"),
				To:         id.Draw(t, "to"),
				Term:       big.Draw(t, "term"),
				LogTerm:    big.Draw(t, "logTerm"),
				Index:      big.Draw(t, "index"),
				Commit:     big.Draw(t, "commit"),
				Vote:       big.Draw(t, "vote"),
				Reject:     rapid.Bool().Draw(t, "reject"),
				RejectHint: big.Draw(t, "rejectHint"),
				Context:    payload.Draw(t, "context"),
			},
		}
		n := rapid.IntRange(0, 5).Draw(t, "entries")
		for i := range n {
			m.Msg.Entries = append(m.Msg.Entries, raftpb.Entry{
				Index: m.Msg.Index + uint64(i) + 1,
				Term:  big.Draw(t, "entryTerm"),
				Type:  rapid.SampledFrom([]raftpb.EntryType{raftpb.EntryNormal, raftpb.EntryConfChange, raftpb.EntryConfChangeV2}).Draw(t, "entryType"),
				Data:  payload.Draw(t, "data"),
			})
		}
		return m
	})
}

func TestBatchRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		msgs := nilIfEmpty(rapid.SliceOfN(genMessage(), 0, 8).Draw(t, "msgs"))
		prefix := rapid.SliceOfN(rapid.Byte(), 0, 3).Draw(t, "prefix")
		enc, err := EncodeBatch(bytes.Clone(prefix), msgs)
		if err != nil {
			t.Fatalf("EncodeBatch: %v", err)
		}
		if !bytes.Equal(enc[:len(prefix)], prefix) {
			t.Fatalf("EncodeBatch did not append to dst")
		}
		wire := bytes.Clone(enc[len(prefix):])
		got, err := DecodeBatch(wire)
		if err != nil {
			t.Fatalf("DecodeBatch: %v", err)
		}
		if len(got) != len(msgs) {
			t.Fatalf("decoded %d messages, encoded %d", len(got), len(msgs))
		}
		for i := range msgs {
			if !reflect.DeepEqual(got[i], msgs[i]) {
				t.Fatalf("message %d: decoded %+v, encoded %+v", i, got[i], msgs[i])
			}
		}
		// The decoded messages own their payloads: the input may be reused.
		for i := range wire {
			wire[i] = 0xAA
		}
		for i := range msgs {
			if !reflect.DeepEqual(got[i], msgs[i]) {
				t.Fatalf("message %d changed when the input buffer was overwritten: %+v", i, got[i])
			}
		}
	})
}

func sampleBatch(t testing.TB) []Message {
	t.Helper()
	return []Message{
		{Group: 1, Msg: raftpb.Message{Type: raftpb.MsgApp, From: 1, To: 2, Term: 3, LogTerm: 3, Index: 10, Commit: 9,
			Entries: []raftpb.Entry{{Index: 11, Term: 3, Data: []byte("put a")}, {Index: 12, Term: 3, Type: raftpb.EntryConfChangeV2, Data: []byte{1, 2}}}}},
		{Group: 0, Msg: raftpb.Message{Type: raftpb.MsgHeartbeat, From: 1, To: 3, Term: 3, Commit: 9, Context: []byte("ctx")}},
		{Group: 1 << 40, Msg: raftpb.Message{Type: raftpb.MsgVoteResp, From: 4, To: 1, Term: 5, Reject: true}},
	}
}

func mustEncode(t testing.TB, msgs []Message) []byte {
	t.Helper()
	b, err := EncodeBatch(nil, msgs)
	if err != nil {
		t.Fatalf("EncodeBatch: %v", err)
	}
	return b
}

// encodeRaw builds a batch from already-marshalled messages, bypassing any
// check EncodeBatch might make.
func encodeRaw(t testing.TB, msgs ...Message) []byte {
	t.Helper()
	b := []byte{batchVersion}
	b = binary.AppendUvarint(b, uint64(len(msgs)))
	for _, m := range msgs {
		pb, err := m.Msg.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		b = binary.AppendUvarint(b, uint64(m.Group))
		b = binary.AppendUvarint(b, uint64(len(pb)))
		b = append(b, pb...)
	}
	return b
}

// heartbeats returns a valid batch of n heartbeats.
func heartbeats(t testing.TB, n int) []byte {
	t.Helper()
	msgs := make([]Message, n)
	for i := range msgs {
		msgs[i] = Message{Group: ids.GroupID(i), Msg: raftpb.Message{Type: raftpb.MsgHeartbeat, From: 1, To: 2, Term: 1}}
	}
	return mustEncode(t, msgs)
}

func TestDecodeBatchMaxMessages(t *testing.T) {
	got, err := DecodeBatch(heartbeats(t, MaxBatchMessages))
	if err != nil || len(got) != MaxBatchMessages {
		t.Fatalf("a batch of MaxBatchMessages heartbeats: %d messages, err %v", len(got), err)
	}
	if got[MaxBatchMessages-1].Group != MaxBatchMessages-1 {
		t.Fatalf("last message of group %s, want g%d", got[MaxBatchMessages-1].Group, MaxBatchMessages-1)
	}
}

func TestDecodeBatchEmpty(t *testing.T) {
	got, err := DecodeBatch(mustEncode(t, nil))
	if err != nil || len(got) != 0 {
		t.Fatalf("DecodeBatch of an empty batch = %v, %v", got, err)
	}
}

func TestDecodeBatchRefusesMalformed(t *testing.T) {
	valid := mustEncode(t, sampleBatch(t))
	if _, err := DecodeBatch(valid); err != nil {
		t.Fatalf("the valid sample does not decode: %v", err)
	}
	withCount := func(count uint64, rest ...byte) []byte {
		return append(binary.AppendUvarint([]byte{batchVersion}, count), rest...)
	}
	msg := func(typ raftpb.MessageType, from, to uint64) Message {
		return Message{Group: 1, Msg: raftpb.Message{Type: typ, From: from, To: to, Term: 1}}
	}
	cases := map[string][]byte{
		"nil":                     nil,
		"empty":                   {},
		"version 0":               append([]byte{0}, valid[1:]...),
		"version 2":               append([]byte{2}, valid[1:]...),
		"version only":            {batchVersion},
		"count overlong":          append([]byte{batchVersion}, bytes.Repeat([]byte{0xff}, 11)...),
		"count unterminated":      {batchVersion, 0x80},
		"count above input":       withCount(3, 1, 0, 1, 0),
		"count 1<<40 in 10 bytes": withCount(1<<40, 0, 0, 0, 0),
		"count above the maximum": heartbeats(t, MaxBatchMessages+1),
		"group unterminated":      withCount(1, 0x80, 0x80),
		"length beyond input":     withCount(1, 1, 5, 0, 0),
		"length overflows":        withCount(1, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01),
		"garbage message":         withCount(1, 1, 2, 0xff, 0xff),
		"trailing byte":           append(bytes.Clone(valid), 0),
		"trailing message":        append(bytes.Clone(valid), 1, 0),
		"one message missing":     append(withCount(4), valid[2:]...),
		"no sender":               encodeRaw(t, msg(raftpb.MsgHeartbeat, 0, 2)),
		"no recipient":            encodeRaw(t, msg(raftpb.MsgHeartbeat, 1, 0)),
		"zero-length message":     withCount(1, 1, 0),
		"snapshot on MsgApp":      encodeRaw(t, Message{Group: 1, Msg: raftpb.Message{Type: raftpb.MsgApp, From: 1, To: 2, Snapshot: &raftpb.Snapshot{Data: []byte("state")}}}),
		"empty snapshot":          encodeRaw(t, Message{Group: 1, Msg: raftpb.Message{Type: raftpb.MsgAppResp, From: 1, To: 2, Snapshot: &raftpb.Snapshot{}}}),
		"bad message after good":  encodeRaw(t, sampleBatch(t)[0], msg(raftpb.MsgProp, 1, 2)),
	}
	for _, typ := range localTypes {
		cases["type "+typ.String()] = encodeRaw(t, msg(typ, 1, 2))
	}
	for i := 1; i < len(valid); i++ {
		cases[fmt.Sprintf("truncated to %d of %d bytes", i, len(valid))] = valid[:i]
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			in := bytes.Clone(b)
			got, err := DecodeBatch(b)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("DecodeBatch(%x) = %+v, %v; want an error wrapping ErrMalformed", b, got, err)
			}
			if got != nil {
				t.Fatalf("DecodeBatch returned %d messages with its error", len(got))
			}
			if !bytes.Equal(in, b) {
				t.Fatalf("DecodeBatch modified its input")
			}
		})
	}
}

// TestDecodeBatchHostileCountAllocatesNothing: a count the input cannot
// hold is refused before anything is allocated for it.
func TestDecodeBatchHostileCountAllocatesNothing(t *testing.T) {
	for _, count := range []uint64{1 << 40, 1 << 62, MaxBatchMessages, MaxBatchMessages + 1, 1000} {
		b := binary.AppendUvarint([]byte{batchVersion}, count)
		b = append(b, make([]byte, 10-len(b))...)
		if _, err := DecodeBatch(b); !errors.Is(err, ErrMalformed) {
			t.Fatalf("a 10-byte batch claiming %d messages: err %v, want ErrMalformed", count, err)
		}
		// Average over many calls so that allocations by other goroutines
		// (the runtime, the test framework) do not count.
		const runs = 200
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range runs {
			_, _ = DecodeBatch(b)
		}
		runtime.ReadMemStats(&after)
		if d := (after.TotalAlloc - before.TotalAlloc) / runs; d > 4<<10 {
			t.Fatalf("refusing a batch claiming %d messages allocated %d bytes", count, d)
		}
	}
}

func TestValidateRemote(t *testing.T) {
	for _, typ := range remoteTypes {
		m := raftpb.Message{Type: typ, From: 1, To: 2}
		if err := ValidateRemote(&m); err != nil {
			t.Errorf("ValidateRemote refuses %s: %v", typ, err)
		}
		for _, bad := range []raftpb.Message{
			{Type: typ, From: 0, To: 2},
			{Type: typ, From: 1, To: 0},
			{Type: typ, From: 1, To: 2, Snapshot: &raftpb.Snapshot{}},
			{Type: typ, From: 1, To: 2, Responses: []raftpb.Message{{Type: raftpb.MsgAppResp}}},
		} {
			if err := ValidateRemote(&bad); err == nil {
				t.Errorf("ValidateRemote accepts %+v", bad)
			}
		}
	}
	for _, typ := range localTypes {
		m := raftpb.Message{Type: typ, From: 1, To: 2}
		if err := ValidateRemote(&m); err == nil {
			t.Errorf("ValidateRemote accepts a %s from the network", typ)
		}
	}
}

func batchSeeds(t testing.TB) [][]byte {
	valid := mustEncode(t, sampleBatch(t))
	return [][]byte{
		valid,
		mustEncode(t, nil),
		valid[:len(valid)/2],
		append([]byte{2}, valid[1:]...),
		{batchVersion, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0, 0, 0},
		encodeRaw(t, Message{Group: 1, Msg: raftpb.Message{Type: raftpb.MsgProp, From: 1, To: 2}}),
		encodeRaw(t, Message{Group: 1, Msg: raftpb.Message{Type: raftpb.MsgApp, From: 1, To: 2, Snapshot: &raftpb.Snapshot{}}}),
	}
}

// FuzzDecodeBatch: decoding never panics, refuses with ErrMalformed, accepts
// only messages ValidateRemote accepts, and whatever it accepts re-encodes
// and decodes to the same messages.
func FuzzDecodeBatch(f *testing.F) {
	for _, s := range batchSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		msgs, err := DecodeBatch(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if len(msgs) > MaxBatchMessages {
			t.Fatalf("accepted %d messages, bound %d", len(msgs), MaxBatchMessages)
		}
		for i := range msgs {
			if err := ValidateRemote(&msgs[i].Msg); err != nil {
				t.Fatalf("accepted message %d that ValidateRemote refuses: %v", i, err)
			}
		}
		enc, err := EncodeBatch(nil, msgs)
		if err != nil {
			t.Fatalf("re-encoding accepted messages: %v", err)
		}
		again, err := DecodeBatch(enc)
		if err != nil {
			t.Fatalf("decoding re-encoded messages: %v", err)
		}
		if len(again) != len(msgs) {
			t.Fatalf("round trip changed the count: %d, was %d", len(again), len(msgs))
		}
		for i := range msgs {
			if !reflect.DeepEqual(again[i], msgs[i]) {
				t.Fatalf("round trip changed message %d: %+v, was %+v", i, again[i], msgs[i])
			}
		}
	})
}
