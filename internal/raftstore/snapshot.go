package raftstore

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/storage"
)

// Snapshots carry a group's real state. Raft only sees a small descriptor
// (raftpb.Snapshot with our snapshot ID in Data); the state itself is
// streamed beside the Raft messages from a consistent engine snapshot taken at
// the moment Raft asked for it, whose applied index is exactly the
// descriptor's index.
//
// Stream framing, every frame checksummed:
//
//	frame   = type(1) length(4) crc32c(4) payload(length)
//	header  (type 1): group(8) msgLen(uvarint) raftpb.Message(MsgSnap) appliedState
//	data    (type 2): { keyLen(uvarint) key valueLen(uvarint) value }*  keys relative to the group's state prefix
//	trailer (type 3): pairs(8) dataBytes(8) crc32c-of-all-data-payloads(4)
//
// The receiver verifies every frame and the trailer, stages the pairs in a
// file, and only then hands the MsgSnap to Raft. When Raft's Ready contains
// the snapshot, the staged state, the applied state and the log reset are
// written by the appender in one batch with the other queued log writes.
const (
	frameHeader  byte = 1
	frameData    byte = 2
	frameTrailer byte = 3

	frameOverhead = 9
)

var (
	crcTable = crc32.MakeTable(crc32.Castagnoli)
	// ErrBadSnapshot is wrapped by every snapshot stream validation error.
	ErrBadSnapshot = errors.New("raftstore: bad snapshot stream")
)

// snapshotIdleTimeout releases engine snapshots Raft asked for but that were
// never streamed.
const snapshotIdleTimeout = time.Minute

type outgoingSnapshot struct {
	snap    *pebble.Snapshot
	applied storage.AppliedState
	created time.Time
}

// outgoingSnapshots holds engine snapshots between Raft asking for them and
// their stream finishing.
type outgoingSnapshots struct {
	mu   sync.Mutex
	next uint64
	m    map[uint64]*outgoingSnapshot
}

func (o *outgoingSnapshots) init() { o.m = map[uint64]*outgoingSnapshot{} }

func (o *outgoingSnapshots) add(s *outgoingSnapshot) uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.next++
	o.m[o.next] = s
	return o.next
}

// take hands the snapshot to a sender; it is removed from the registry and
// the sender closes it.
func (o *outgoingSnapshots) take(id uint64) *outgoingSnapshot {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.m[id]
	delete(o.m, id)
	return s
}

func (o *outgoingSnapshots) expire(before time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for id, s := range o.m {
		if s.created.Before(before) {
			_ = s.snap.Close()
			delete(o.m, id)
		}
	}
}

func (o *outgoingSnapshots) releaseAll() { o.expire(time.Now().Add(time.Hour)) }

// buildSnapshot is the raft.Storage Snapshot hook. Raft calls it when a
// follower needs state the log no longer has, under r.mu while a worker
// processes the replica and before that worker stages the replica's next
// applies, so the engine holds every apply of the replica committed and none
// half-way: the applied state read from the engine snapshot matches its
// data.
func (r *replica) buildSnapshot() (raftpb.Snapshot, error) {
	snap := r.h.eng.DB().NewSnapshot()
	st, ok, err := loadAppliedState(snap, r.group)
	if err != nil || !ok || st.Index == 0 {
		_ = snap.Close()
		if err == nil {
			err = raft.ErrSnapshotTemporarilyUnavailable
		}
		return raftpb.Snapshot{}, err
	}
	id := r.h.snapshots.add(&outgoingSnapshot{snap: snap, applied: st, created: time.Now()})
	return raftpb.Snapshot{
		Data: binary.BigEndian.AppendUint64(nil, id),
		Metadata: raftpb.SnapshotMetadata{
			ConfState: st.ConfState,
			Index:     st.Index,
			Term:      st.Term,
		},
	}, nil
}

func loadAppliedState(r pebble.Reader, g ids.GroupID) (storage.AppliedState, bool, error) {
	v, ok, err := storage.Get(r, storage.AppliedKey(g))
	if err != nil || !ok {
		return storage.AppliedState{}, ok, err
	}
	st, err := storage.DecodeAppliedState(v)
	return st, err == nil, err
}

// sendSnapshot streams the snapshot named in m to its recipient on a
// goroutine owned by the host and reports the outcome to Raft. Caller holds
// r.mu.
func (h *Host) sendSnapshot(r *replica, m raftpb.Message) {
	to := ids.ReplicaID(m.To)
	report := func(st raft.SnapshotStatus) {
		r.enqueueCtrl(func() { r.rn.ReportSnapshot(uint64(to), st) })
	}
	node, ok := r.nodeOf(to)
	if m.Snapshot == nil || len(m.Snapshot.Data) != 8 || !ok {
		report(raft.SnapshotFailure)
		return
	}
	os := h.snapshots.take(binary.BigEndian.Uint64(m.Snapshot.Data))
	if os == nil {
		report(raft.SnapshotFailure)
		return
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		defer os.snap.Close()
		select {
		case h.snapSem <- struct{}{}:
		case <-h.stopc:
			return
		}
		defer func() { <-h.snapSem }()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			select {
			case <-h.stopc:
				cancel()
			case <-ctx.Done():
			}
		}()
		stream := newSnapshotStream(r.group, m, os, h.cfg.SnapshotChunkBytes)
		// A stream the transport stops reading part way (the peer went,
		// the host is stopping) still has its iterator open: close it
		// before the engine snapshot, or it pins the engine's files (and
		// the engine panics when it closes).
		defer stream.close()
		err := h.tr.SendSnapshot(ctx, node, stream)
		if err == nil {
			err = stream.err
		}
		if err != nil {
			h.stats.SnapshotsFailed.Add(1)
			h.log.Warn("snapshot send failed", "group", uint64(r.group), "to", uint64(to), "node", uint64(node), "err", err)
			report(raft.SnapshotFailure)
			return
		}
		h.stats.SnapshotsSent.Add(1)
		report(raft.SnapshotFinish)
	}()
}

// snapshotStream produces the framed stream lazily as it is read, so a
// snapshot of any size needs only one chunk of memory.
type snapshotStream struct {
	buf   []byte
	off   int
	stage int // 0 header, 1 data, 2 done
	it    *pebble.Iterator
	chunk int
	crc   uint32
	pairs uint64
	bytes uint64
	err   error
	pfx   int // length of the group state prefix
}

func newSnapshotStream(g ids.GroupID, m raftpb.Message, os *outgoingSnapshot, chunk int) *snapshotStream {
	payload := binary.BigEndian.AppendUint64(nil, uint64(g))
	mb, err := m.Marshal()
	if err != nil {
		return &snapshotStream{err: err}
	}
	payload = binary.AppendUvarint(payload, uint64(len(mb)))
	payload = append(payload, mb...)
	payload, err = storage.EncodeAppliedState(payload, &os.applied)
	if err != nil {
		return &snapshotStream{err: err}
	}
	return newRangeStream(frameHeader, payload, os.snap, storage.GroupStatePrefix(g), chunk)
}

// newRangeStream streams a header frame, then every key of r under prefix
// (relative to it) in data frames of about chunk bytes, then the trailer.
func newRangeStream(headerType byte, header []byte, r pebble.Reader, prefix []byte, chunk int) *snapshotStream {
	s := &snapshotStream{chunk: chunk, pfx: len(prefix)}
	s.buf = appendFrame(nil, headerType, header)
	s.it, s.err = r.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: storage.PrefixEnd(prefix)})
	if s.err == nil {
		s.it.First()
	}
	return s
}

func appendFrame(dst []byte, typ byte, payload []byte) []byte {
	dst = append(dst, typ)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(payload)))
	dst = binary.BigEndian.AppendUint32(dst, crc32.Checksum(payload, crcTable))
	return append(dst, payload...)
}

func (s *snapshotStream) Read(p []byte) (int, error) {
	for s.off == len(s.buf) {
		if s.err != nil {
			return 0, s.err
		}
		if s.stage == 2 {
			return 0, io.EOF
		}
		s.fill()
	}
	n := copy(p, s.buf[s.off:])
	s.off += n
	return n, nil
}

// fill produces the next frame into buf.
func (s *snapshotStream) fill() {
	s.buf, s.off = s.buf[:0], 0
	payload := make([]byte, 0, s.chunk+1024)
	for s.it.Valid() && len(payload) < s.chunk {
		v, err := s.it.ValueAndErr()
		if err != nil {
			s.fail(err)
			return
		}
		k := s.it.Key()[s.pfx:]
		payload = binary.AppendUvarint(payload, uint64(len(k)))
		payload = append(payload, k...)
		payload = binary.AppendUvarint(payload, uint64(len(v)))
		payload = append(payload, v...)
		s.pairs++
		s.it.Next()
	}
	if len(payload) > 0 {
		s.crc = crc32.Update(s.crc, crcTable, payload)
		s.bytes += uint64(len(payload))
		s.buf = appendFrame(s.buf, frameData, payload)
		return
	}
	if err := s.it.Close(); err != nil {
		s.fail(err)
		return
	}
	s.it = nil
	t := binary.BigEndian.AppendUint64(nil, s.pairs)
	t = binary.BigEndian.AppendUint64(t, s.bytes)
	t = binary.BigEndian.AppendUint32(t, s.crc)
	s.buf = appendFrame(s.buf, frameTrailer, t)
	s.stage = 2
}

// close releases the stream's iterator if the stream was not read to its
// end. It is idempotent.
func (s *snapshotStream) close() {
	if s.it != nil {
		_ = s.it.Close()
		s.it = nil
	}
}

func (s *snapshotStream) fail(err error) {
	s.err = fmt.Errorf("read snapshot state: %w", err)
	if s.it != nil {
		_ = s.it.Close()
		s.it = nil
	}
}

// stagedSnapshot is a verified incoming snapshot waiting for Raft.
type stagedSnapshot struct {
	index   uint64
	path    string
	applied storage.AppliedState
}

func (s *stagedSnapshot) discard() { _ = os.Remove(s.path) }

// stagedSnapshots are the snapshots a replica received and has not
// installed yet. Usually one; more when a leader's retries cross (under
// loss, a slow stream of an older snapshot can finish after a newer one):
// each received snapshot is stepped into Raft, which accepts only one
// newer than its commit index, and the install takes the staged data of
// the index Raft hands out, whatever the order they arrived in. (Keeping
// only the last one received once lost the accepted one to an older
// arrival: the install found no data for its index and stopped the node.)
type stagedSnapshots []*stagedSnapshot

// add keeps s, replacing one staged for the same index.
func (ss *stagedSnapshots) add(s *stagedSnapshot) {
	for i, o := range *ss {
		if o.index == s.index {
			o.discard()
			(*ss)[i] = s
			return
		}
	}
	*ss = append(*ss, s)
}

// take removes and returns the snapshot staged for index (nil if none) and
// discards every other one at or below it, which Raft will never accept
// once it holds index.
func (ss *stagedSnapshots) take(index uint64) *stagedSnapshot {
	var found *stagedSnapshot
	kept := (*ss)[:0]
	for _, s := range *ss {
		switch {
		case s.index == index && found == nil:
			found = s
		case s.index <= index:
			s.discard()
		default:
			kept = append(kept, s)
		}
	}
	clear((*ss)[len(kept):])
	*ss = kept
	return found
}

// prune discards the snapshots staged at or below applied: Raft refused
// them or another got there first.
func (ss *stagedSnapshots) prune(applied uint64) {
	if s := ss.take(applied); s != nil {
		s.discard()
	}
}

// discardAll discards every staged snapshot.
func (ss *stagedSnapshots) discardAll() {
	for _, s := range *ss {
		s.discard()
	}
	clear(*ss)
	*ss = (*ss)[:0]
}

// frameReader reads and verifies frames.
type frameReader struct {
	r   *bufio.Reader
	max int
	buf []byte
}

func (f *frameReader) next() (byte, []byte, error) {
	var hdr [frameOverhead]byte
	if _, err := io.ReadFull(f.r, hdr[:]); err != nil {
		return 0, nil, fmt.Errorf("%w: read frame header: %v", ErrBadSnapshot, err)
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if int64(n) > int64(f.max) {
		return 0, nil, fmt.Errorf("%w: frame of %d bytes exceeds limit %d", ErrBadSnapshot, n, f.max)
	}
	if cap(f.buf) < int(n) {
		f.buf = make([]byte, n)
	}
	f.buf = f.buf[:n]
	if _, err := io.ReadFull(f.r, f.buf); err != nil {
		return 0, nil, fmt.Errorf("%w: read frame payload: %v", ErrBadSnapshot, err)
	}
	if crc32.Checksum(f.buf, crcTable) != binary.BigEndian.Uint32(hdr[5:]) {
		return 0, nil, fmt.Errorf("%w: frame checksum mismatch", ErrBadSnapshot)
	}
	return hdr[0], f.buf, nil
}

// HandleSnapshot implements transport.Handler: it receives, verifies and
// stages a snapshot, then hands its MsgSnap to Raft.
func (h *Host) HandleSnapshot(ctx context.Context, from ids.NodeID, stream io.Reader) error {
	err := h.receiveSnapshot(ctx, from, stream)
	if err != nil {
		h.stats.SnapshotsRejected.Add(1)
		h.log.Warn("snapshot refused", "from", uint64(from), "err", err)
		return err
	}
	h.stats.SnapshotsReceived.Add(1)
	return nil
}

func (h *Host) receiveSnapshot(ctx context.Context, from ids.NodeID, stream io.Reader) error {
	if !h.started.Load() || h.stopping.Load() {
		return ErrStopped
	}
	fr := &frameReader{r: bufio.NewReaderSize(stream, 64<<10), max: h.cfg.MaxSnapshotFrameBytes}
	typ, payload, err := fr.next()
	if err != nil {
		return err
	}
	if typ != frameHeader || len(payload) < 9 {
		return fmt.Errorf("%w: stream does not start with a header", ErrBadSnapshot)
	}
	g := ids.GroupID(binary.BigEndian.Uint64(payload))
	payload = payload[8:]
	ml, n := binary.Uvarint(payload)
	if n <= 0 || ml > uint64(len(payload)-n) {
		return fmt.Errorf("%w: bad message length", ErrBadSnapshot)
	}
	var m raftpb.Message
	if err := m.Unmarshal(payload[n : n+int(ml)]); err != nil {
		return fmt.Errorf("%w: decode message: %v", ErrBadSnapshot, err)
	}
	applied, err := storage.DecodeAppliedState(payload[n+int(ml):])
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadSnapshot, err)
	}
	if m.Type != raftpb.MsgSnap || m.Snapshot == nil || raft.IsEmptySnap(*m.Snapshot) ||
		m.Snapshot.Metadata.Index != applied.Index || m.Snapshot.Metadata.Term != applied.Term || m.From == 0 {
		return fmt.Errorf("%w: header does not describe a snapshot", ErrBadSnapshot)
	}
	r := h.replica(g)
	if r == nil || ids.ReplicaID(m.To) != r.id {
		return fmt.Errorf("snapshot for %s replica %d: %w", g, m.To, ErrGroupNotFound)
	}
	if r.appliedIndex.Load() >= applied.Index {
		return fmt.Errorf("%w: snapshot at %d is not newer than applied index %d", ErrBadSnapshot, applied.Index, r.appliedIndex.Load())
	}

	// The snapshot is staged as a table file that installs it when
	// ingested (storage.SnapshotSST): its size never matters to memory.
	f, err := os.CreateTemp(h.cfg.SnapshotDir, fmt.Sprintf("g%d-%d-*.sst", g, applied.Index))
	if err != nil {
		return fmt.Errorf("stage snapshot: %w", err)
	}
	path := f.Name()
	_ = f.Close()
	applied.ConfState = m.Snapshot.Metadata.ConfState
	sst, err := h.eng.NewSnapshotSST(path, g, applied.Index, applied.Term, &applied)
	if err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("stage snapshot: %w", err)
	}
	staged := &stagedSnapshot{index: applied.Index, path: path, applied: applied}
	ok := false
	defer func() {
		if !ok {
			sst.Abort(h.eng)
			staged.discard()
		}
	}()
	err = readDataFrames(ctx, fr, func(p []byte) error {
		return forEachPair(p, func(k, v []byte) error {
			if err := sst.Add(k, v); err != nil {
				return fmt.Errorf("%w: %v", ErrBadSnapshot, err)
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	if err := sst.Finish(); err != nil {
		return fmt.Errorf("stage snapshot: %w", err)
	}
	ok = true
	msg := m
	r.enqueueCtrl(func() {
		r.staged.add(staged)
		if _, known := r.applied.NodeOf(ids.ReplicaID(msg.From)); !known {
			r.peers[ids.ReplicaID(msg.From)] = from
		}
		_ = r.rn.Step(msg)
	})
	return nil
}

// readDataFrames reads data frames until the trailer, verifies each pair's
// structure and the trailer's counts and checksum, and hands each verified
// payload to sink.
func readDataFrames(ctx context.Context, fr *frameReader, sink func([]byte) error) error {
	var crc uint32
	var pairs, bytes uint64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		typ, payload, err := fr.next()
		if err != nil {
			return err
		}
		if typ == frameTrailer {
			if len(payload) != 20 {
				return fmt.Errorf("%w: bad trailer", ErrBadSnapshot)
			}
			if binary.BigEndian.Uint64(payload) != pairs || binary.BigEndian.Uint64(payload[8:]) != bytes ||
				binary.BigEndian.Uint32(payload[16:]) != crc {
				return fmt.Errorf("%w: trailer does not match the data received", ErrBadSnapshot)
			}
			return nil
		}
		if typ != frameData {
			return fmt.Errorf("%w: unexpected frame type %d", ErrBadSnapshot, typ)
		}
		k, err := countPairs(payload)
		if err != nil {
			return err
		}
		pairs += k
		bytes += uint64(len(payload))
		crc = crc32.Update(crc, crcTable, payload)
		if err := sink(payload); err != nil {
			return fmt.Errorf("stage snapshot: %w", err)
		}
	}
}

// countPairs validates the structure of a data payload.
func countPairs(p []byte) (uint64, error) {
	var n uint64
	err := forEachPair(p, func(_, _ []byte) error { n++; return nil })
	return n, err
}

func writeStagedChunk(w io.Writer, payload []byte) error {
	var l [4]byte
	binary.BigEndian.PutUint32(l[:], uint32(len(payload)))
	if _, err := w.Write(l[:]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

// installSnapshot ingests a received snapshot's table: the group's log,
// applied state and replicated state are replaced at once (see
// storage.SnapshotSST). It runs on the appender and touches no locked
// replica state.
func (r *replica) installSnapshot(st *stagedSnapshot, snap *raftpb.Snapshot) error {
	if st == nil || st.index != snap.Metadata.Index {
		return fmt.Errorf("no staged state for snapshot at %d", snap.Metadata.Index)
	}
	r.log.StageSnapshotInstall(snap.Metadata.Index)
	// Reads may be served while the state changes under them, as from
	// Pebble alone, but nothing read before the ingest stays cached.
	r.readCache.Clear()
	defer r.readCache.EndClear()
	return r.h.eng.Ingest(context.Background(), st.path)
}

// didInstall updates the replica once the batch holding stageInstall has
// committed. Proposals this node made at or below the snapshot's index have
// an unknown outcome: they may be inside the snapshot. Caller holds r.mu.
func (r *replica) didInstall(snap *raftpb.Snapshot, st *stagedSnapshot) {
	clear(r.clients)
	r.values.Clear()
	r.applied = st.applied
	r.applied.ConfState = snap.Metadata.ConfState
	r.appliedIndex.Store(r.applied.Index)
	st.discard()
	r.sweepLost(snap.Metadata.Index, ErrOutcomeUnknown)
}
