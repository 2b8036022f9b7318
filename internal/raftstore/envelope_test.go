package raftstore

import (
	"bytes"
	"errors"
	"testing"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

func TestCommandRoundTrip(t *testing.T) {
	c := command{proposer: 3, proposal: 99, timestamp: -5, vshard: 1023, client: 7, seq: 8, ackedBelow: 6, payload: []byte("payload")}
	b := encodeCommand(nil, &c)
	got, err := decodeCommand(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.proposer != c.proposer || got.proposal != c.proposal || got.timestamp != c.timestamp ||
		got.vshard != c.vshard || got.client != c.client || got.seq != c.seq ||
		got.ackedBelow != c.ackedBelow || !bytes.Equal(got.payload, c.payload) {
		t.Fatalf("round trip: got %+v, want %+v", got, c)
	}
	node, id, ok := proposalOf(b)
	if !ok || node != 3 || id != 99 {
		t.Fatalf("proposalOf: %v %v %v", node, id, ok)
	}
	for _, bad := range [][]byte{nil, {kindCommand}, b[:commandHeaderLen-1], append([]byte{9}, b[1:]...)} {
		if _, err := decodeCommand(bad); err == nil {
			t.Errorf("decodeCommand(%x) accepted", bad)
		}
	}
}

func TestConfChangeContextRoundTrip(t *testing.T) {
	c := confChangeContext{proposer: 2, proposal: 5, added: []replicaPlacement{{Replica: 4, Node: 9}, {Replica: 5, Node: 1}}}
	got, err := decodeConfChangeContext(encodeConfChangeContext(&c))
	if err != nil {
		t.Fatal(err)
	}
	if got.proposer != 2 || got.proposal != 5 || len(got.added) != 2 || got.added[1] != (replicaPlacement{Replica: 5, Node: 1}) {
		t.Fatalf("round trip: %+v", got)
	}
	enc := encodeConfChangeContext(&c)
	for _, bad := range [][]byte{nil, enc[:10], enc[:len(enc)-1], append(enc, 0), {kindCommand}} {
		if _, err := decodeConfChangeContext(bad); err == nil {
			t.Errorf("decodeConfChangeContext(%x) accepted", bad)
		}
	}
}

// FuzzDecodeEntry feeds arbitrary entry payloads to both decoders: they must
// never panic, and what they accept must re-encode to the same bytes.
func FuzzDecodeEntry(f *testing.F) {
	f.Add(encodeCommand(nil, &command{proposer: 1, proposal: 2, vshard: 3, payload: []byte("x")}))
	f.Add(encodeConfChangeContext(&confChangeContext{proposer: 1, proposal: 2, added: []replicaPlacement{{Replica: 3, Node: 4}}}))
	f.Add([]byte{})
	f.Add([]byte{kindConfChange, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		if c, err := decodeCommand(b); err == nil {
			if !bytes.Equal(encodeCommand(nil, &c), b) {
				t.Fatalf("command %x does not re-encode identically", b)
			}
		}
		if c, err := decodeConfChangeContext(b); err == nil {
			again, err := decodeConfChangeContext(encodeConfChangeContext(&c))
			if err != nil || again.proposer != c.proposer || len(again.added) != len(c.added) {
				t.Fatalf("context %x does not round trip: %v", b, err)
			}
			for _, a := range c.added {
				_ = ids.ReplicaID(a.Replica)
			}
		}
	})
}

func TestTruncateEntryRoundTrip(t *testing.T) {
	got, err := decodeTruncate(encodeTruncate(12345))
	if err != nil || got != 12345 {
		t.Fatalf("round trip: %d, %v", got, err)
	}
	for _, b := range [][]byte{nil, {kindTruncate}, append(encodeTruncate(1), 0), {kindCommand, 0, 0, 0, 0, 0, 0, 0, 1}} {
		if _, err := decodeTruncate(b); !errors.Is(err, errMalformedEntry) {
			t.Errorf("decodeTruncate(%x) = %v, want errMalformedEntry", b, err)
		}
	}
}
