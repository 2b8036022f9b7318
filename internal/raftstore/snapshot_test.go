package raftstore

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"testing"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/kv"
	"github.com/nodedb/nodedb-cluster/internal/storage"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

type nopTransport struct{}

func (nopTransport) Send(ids.NodeID, []transport.Message) error { return nil }
func (nopTransport) SendSnapshot(context.Context, ids.NodeID, io.Reader) error {
	return transport.ErrUnreachable
}
func (nopTransport) Close() error { return nil }

// newTestHost starts a host on a fresh engine with an uninitialized replica 2
// of group 1.
func newTestHost(t *testing.T) *Host {
	t.Helper()
	dir := t.TempDir()
	eng, err := storage.Open(storage.Options{Dir: filepath.Join(dir, "store"), CacheSize: 1 << 20, MemTableSize: 1 << 20,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	h, err := New(Config{NodeID: 2, Engine: eng, StateMachine: &kv.StateMachine{}, SnapshotDir: filepath.Join(dir, "snap"),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), MaxSnapshotFrameBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	h.Start(nopTransport{})
	t.Cleanup(func() { h.Stop(); _ = eng.Close() })
	if err := h.CreateReplica(1, 2); err != nil {
		t.Fatal(err)
	}
	return h
}

type streamSpec struct {
	group    ids.GroupID
	to       uint64
	pairs    [][2]string
	corrupt  func(frames [][]byte)
	trailerN uint64 // 0: the real count
}

func buildStream(t *testing.T, s streamSpec) []byte {
	t.Helper()
	st := storage.AppliedState{Index: 10, Term: 5, ConfState: raftpb.ConfState{Voters: []uint64{1, 2}},
		Replicas: []storage.ReplicaDesc{{Replica: 1, Node: 1}, {Replica: 2, Node: 2}}, MaxReplicaID: 2}
	m := raftpb.Message{Type: raftpb.MsgSnap, From: 1, To: s.to, Term: 5, Snapshot: &raftpb.Snapshot{
		Metadata: raftpb.SnapshotMetadata{Index: 10, Term: 5, ConfState: st.ConfState}}}
	mb, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	hdr := binary.BigEndian.AppendUint64(nil, uint64(s.group))
	hdr = binary.AppendUvarint(hdr, uint64(len(mb)))
	hdr = append(hdr, mb...)
	hdr, _ = storage.EncodeAppliedState(hdr, &st)
	var data []byte
	for _, p := range s.pairs {
		data = binary.AppendUvarint(data, uint64(len(p[0])))
		data = append(data, p[0]...)
		data = binary.AppendUvarint(data, uint64(len(p[1])))
		data = append(data, p[1]...)
	}
	n := uint64(len(s.pairs))
	if s.trailerN != 0 {
		n = s.trailerN
	}
	tr := binary.BigEndian.AppendUint64(nil, n)
	tr = binary.BigEndian.AppendUint64(tr, uint64(len(data)))
	tr = binary.BigEndian.AppendUint32(tr, crc32c(data))
	frames := [][]byte{appendFrame(nil, frameHeader, hdr), appendFrame(nil, frameData, data), appendFrame(nil, frameTrailer, tr)}
	if s.corrupt != nil {
		s.corrupt(frames)
	}
	return bytes.Join(frames, nil)
}

func TestReceiveSnapshotVerifiesEveryFrame(t *testing.T) {
	pairs := [][2]string{{"a", "1"}, {"b", "2"}}
	for _, tc := range []struct {
		name string
		spec streamSpec
		want error
	}{
		{"valid", streamSpec{group: 1, to: 2, pairs: pairs}, nil},
		{"data checksum", streamSpec{group: 1, to: 2, pairs: pairs, corrupt: func(f [][]byte) { f[1][len(f[1])-1] ^= 1 }}, ErrBadSnapshot},
		{"header checksum", streamSpec{group: 1, to: 2, pairs: pairs, corrupt: func(f [][]byte) { f[0][frameOverhead] ^= 1 }}, ErrBadSnapshot},
		{"trailer count", streamSpec{group: 1, to: 2, pairs: pairs, trailerN: 7}, ErrBadSnapshot},
		{"missing trailer", streamSpec{group: 1, to: 2, pairs: pairs, corrupt: func(f [][]byte) { f[2] = nil }}, ErrBadSnapshot},
		{"truncated data", streamSpec{group: 1, to: 2, pairs: pairs, corrupt: func(f [][]byte) { f[1] = f[1][:len(f[1])-2]; f[2] = nil }}, ErrBadSnapshot},
		{"oversized frame", streamSpec{group: 1, to: 2, pairs: pairs, corrupt: func(f [][]byte) {
			binary.BigEndian.PutUint32(f[1][1:], 1<<30)
		}}, ErrBadSnapshot},
		{"malformed pair", streamSpec{group: 1, to: 2, pairs: pairs, corrupt: func(f [][]byte) {
			p := []byte{0x7f, 'x'} // claims a 127-byte key
			f[1] = appendFrame(nil, frameData, p)
		}}, ErrBadSnapshot},
		{"unknown group", streamSpec{group: 9, to: 2, pairs: pairs}, ErrGroupNotFound},
		{"other replica", streamSpec{group: 1, to: 3, pairs: pairs}, ErrGroupNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHost(t)
			err := h.HandleSnapshot(context.Background(), 1, bytes.NewReader(buildStream(t, tc.spec)))
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if h.stats.SnapshotsReceived.Load() != 1 {
					t.Fatal("valid snapshot not counted")
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if h.stats.SnapshotsRejected.Load() != 1 {
				t.Fatal("refused snapshot not counted")
			}
		})
	}
}

func crc32c(b []byte) uint32 {
	var h [4]byte
	f := appendFrame(nil, 0, b)
	copy(h[:], f[5:9])
	return binary.BigEndian.Uint32(h[:])
}

// FuzzFrameReader checks that arbitrary bytes never crash the snapshot frame
// reader or make it allocate beyond its limit.
func FuzzFrameReader(f *testing.F) {
	f.Add(appendFrame(nil, frameData, []byte{1, 'k', 1, 'v'}))
	f.Add([]byte{frameData, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr := &frameReader{r: newBufReader(b), max: 1 << 16}
		for range 4 {
			_, p, err := fr.next()
			if err != nil {
				if !errors.Is(err, ErrBadSnapshot) {
					t.Fatalf("error not typed: %v", err)
				}
				return
			}
			if len(p) > 1<<16 {
				t.Fatalf("frame of %d bytes beyond the limit", len(p))
			}
			_, _ = countPairs(p)
		}
	})
}

func newBufReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }
