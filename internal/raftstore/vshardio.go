package raftstore

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/storage"
)

// vShard export and import: the primitives a vShard move is built from.
//
// A vShard's whole state is one key range (state-machine data and
// exactly-once records alike), so an export is that range read from one
// consistent engine snapshot, in the same checksummed framing as Raft
// snapshots (with a vShard header, frame type 4):
//
//	header (type 4): vshard(4) appliedIndex(8)
//
// An import goes through Raft, so every replica of the target group ends with
// the same state: the stream is verified in full and staged first, then
// proposed as ingest entries of about ingestChunkBytes each, the first one
// clearing the vShard's range:
//
//	kind(1)=3 proposer(8) proposal(8) vshard(4) flags(1) pairs…   flags bit 0: clear first
//
// An import interrupted half-way leaves a partial vShard in the target
// group; importing again starts by clearing it, so retrying is the remedy.
const (
	frameVShardHeader byte = 4
	kindIngest        byte = 3
	ingestHeaderLen        = 1 + 8 + 8 + 4 + 1
	ingestClear       byte = 1
	ingestChunkBytes       = 1 << 20
)

// ExportVShard writes a consistent copy of vShard vs of group g, as held by
// this node's replica, to w. It returns the applied index of the copy.
func (h *Host) ExportVShard(g ids.GroupID, vs uint32, w io.Writer) (uint64, error) {
	if h.replica(g) == nil {
		return 0, ErrGroupNotFound
	}
	var applied uint64
	err := h.UseEngine(func(db *pebble.DB) error {
		snap := db.NewSnapshot()
		defer snap.Close()
		st, ok, err := loadAppliedState(snap, g)
		if err != nil {
			return err
		}
		if !ok {
			return ErrGroupNotFound
		}
		hdr := binary.BigEndian.AppendUint32(nil, vs)
		hdr = binary.BigEndian.AppendUint64(hdr, st.Index)
		s := newRangeStream(frameVShardHeader, hdr, snap, storage.VShardPrefix(g, vs), h.cfg.SnapshotChunkBytes)
		if _, err := io.Copy(w, s); err != nil {
			if s.it != nil {
				_ = s.it.Close()
			}
			return err
		}
		if s.err != nil {
			return s.err
		}
		applied = st.Index
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("export vShard %d of %s: %w", vs, g, err)
	}
	return applied, nil
}

// ImportVShard replaces the state of vShard vs in group g with the exported
// stream r, through Raft; it must be called on g's leader and returns once
// every ingest entry is applied here. The stream's own vShard number is not
// required to match vs: a vShard can be restored under another number.
func (h *Host) ImportVShard(ctx context.Context, g ids.GroupID, vs uint32, r io.Reader) error {
	rep := h.replica(g)
	if rep == nil {
		return ErrGroupNotFound
	}
	if !rep.isLeader.Load() {
		return rep.notLeader()
	}
	fr := &frameReader{r: bufio.NewReaderSize(r, 64<<10), max: h.cfg.MaxSnapshotFrameBytes}
	typ, hdr, err := fr.next()
	if err != nil {
		return err
	}
	if typ != frameVShardHeader || len(hdr) != 12 {
		return fmt.Errorf("%w: not a vShard export", ErrBadSnapshot)
	}
	f, err := os.CreateTemp(h.cfg.SnapshotDir, fmt.Sprintf("import-g%d-v%d-*", g, vs))
	if err != nil {
		return fmt.Errorf("stage import: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	bw := bufio.NewWriterSize(f, 256<<10)
	if err := readDataFrames(ctx, fr, func(p []byte) error { return writeStagedChunk(bw, p) }); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("stage import: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("stage import: %w", err)
	}
	flags := ingestClear
	var chunk []byte
	propose := func() error {
		id := h.nextProposal.Add(1)
		data := make([]byte, 0, ingestHeaderLen+len(chunk))
		data = append(data, kindIngest)
		data = binary.BigEndian.AppendUint64(data, uint64(h.cfg.NodeID))
		data = binary.BigEndian.AppendUint64(data, id)
		data = binary.BigEndian.AppendUint32(data, vs)
		data = append(data, flags)
		data = append(data, chunk...)
		pr := newProposal(id)
		pr.data = data
		if _, err := h.await(ctx, rep, pr); err != nil {
			return fmt.Errorf("import vShard %d into %s: %w", vs, g, err)
		}
		flags, chunk = 0, chunk[:0]
		return nil
	}
	err = forEachStagedChunk(bufio.NewReaderSize(f, 256<<10), func(p []byte) error {
		return forEachPair(p, func(k, v []byte) error {
			chunk = binary.AppendUvarint(chunk, uint64(len(k)))
			chunk = append(chunk, k...)
			chunk = binary.AppendUvarint(chunk, uint64(len(v)))
			chunk = append(chunk, v...)
			if len(chunk) >= ingestChunkBytes {
				return propose()
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	if len(chunk) > 0 || flags == ingestClear {
		return propose()
	}
	return nil
}

// applyIngest applies an ingest entry. Caller holds r.mu.
func (r *replica) applyIngest(b *pebble.Batch, e *raftpb.Entry) error {
	d := e.Data
	node, id, _ := proposalOf(d)
	answer := func(err error) {
		if node == r.h.cfg.NodeID {
			r.results = append(r.results, applyResult{proposal: id, err: err})
		}
	}
	if len(d) < ingestHeaderLen {
		r.h.stats.MalformedEntries.Add(1)
		answer(fmt.Errorf("%w: ingest entry of %d bytes", errMalformedEntry, len(d)))
		return nil
	}
	vs := binary.BigEndian.Uint32(d[17:])
	flags := d[21]
	pairs := d[ingestHeaderLen:]
	if _, err := countPairs(pairs); err != nil {
		r.h.stats.MalformedEntries.Add(1)
		answer(fmt.Errorf("%w: ingest entry: %v", errMalformedEntry, err))
		return nil
	}
	// The vShard's data and exactly-once records change under the caches.
	clear(r.clients)
	r.values.Clear()
	r.readCache.TouchAll()
	prefix := storage.VShardPrefix(r.group, vs)
	if flags&ingestClear != 0 {
		if err := b.DeleteRange(prefix, storage.PrefixEnd(prefix), nil); err != nil {
			return err
		}
	}
	key := append([]byte(nil), prefix...)
	err := forEachPair(pairs, func(k, v []byte) error {
		key = append(key[:len(prefix)], k...)
		return b.Set(key, v, nil)
	})
	if err != nil {
		return err
	}
	answer(nil)
	return nil
}

// forEachPair calls fn for each key/value pair of a verified data payload.
func forEachPair(p []byte, fn func(k, v []byte) error) error {
	for len(p) > 0 {
		kl, n := binary.Uvarint(p)
		if n <= 0 || kl > uint64(len(p)-n) {
			return fmt.Errorf("%w: malformed key/value pair", ErrBadSnapshot)
		}
		k := p[n : n+int(kl)]
		p = p[n+int(kl):]
		vl, n := binary.Uvarint(p)
		if n <= 0 || vl > uint64(len(p)-n) {
			return fmt.Errorf("%w: malformed key/value pair", ErrBadSnapshot)
		}
		v := p[n : n+int(vl)]
		p = p[n+int(vl):]
		if err := fn(k, v); err != nil {
			return err
		}
	}
	return nil
}

// forEachStagedChunk reads back the payloads written by writeStagedChunk.
func forEachStagedChunk(r io.Reader, fn func([]byte) error) error {
	var l [4]byte
	var chunk []byte
	for {
		if _, err := io.ReadFull(r, l[:]); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return err
		}
		n := binary.BigEndian.Uint32(l[:])
		if cap(chunk) < int(n) {
			chunk = make([]byte, n)
		}
		chunk = chunk[:n]
		if _, err := io.ReadFull(r, chunk); err != nil {
			return err
		}
		if err := fn(chunk); err != nil {
			return err
		}
	}
}
