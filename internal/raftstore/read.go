package raftstore

import (
	"context"
	"encoding/binary"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/storage"
)

// readRequest is one linearizable read waiting for its read index to be
// confirmed by a quorum and applied locally.
type readRequest struct {
	done  chan struct{}
	index uint64
	err   error
	fin   atomic.Bool
}

func (rr *readRequest) finish(index uint64, err error) {
	if rr.fin.CompareAndSwap(false, true) {
		rr.index, rr.err = index, err
		close(rr.done)
	}
}

// readBatch is one ReadIndex request covering every read queued before it:
// a single quorum round confirms them all.
type readBatch struct {
	reads []*readRequest
	age   int // ticks since issued
}

// Read answers query against vshard of group g linearizably: it observes
// every write acknowledged before Read was called. The replica confirms with
// a quorum that its leader is current (ReadIndex), waits until it has applied
// up to that point, then reads local state. Any replica can serve it.
func (h *Host) Read(ctx context.Context, g ids.GroupID, vshard uint32, query []byte) ([]byte, error) {
	r := h.replica(g)
	if r == nil {
		return nil, ErrGroupNotFound
	}
	rr := &readRequest{done: make(chan struct{})}
	r.inboxMu.Lock()
	r.inReads = append(r.inReads, rr)
	r.inboxMu.Unlock()
	h.markReady(r)
	if err := h.waitCtx(ctx, rr.done); err != nil {
		return nil, err
	}
	if rr.err != nil {
		return nil, rr.err
	}
	return h.readLocal(r, vshard, query)
}

// ReadIndex confirms with a quorum, as Read does, the commit index of g at
// the time of the call, waits until this replica has applied it, and returns
// it: every write acknowledged before the call is at or below that index.
// Stale reads cache it to serve many reads from one round.
func (h *Host) ReadIndex(ctx context.Context, g ids.GroupID) (uint64, error) {
	r := h.replica(g)
	if r == nil {
		return 0, ErrGroupNotFound
	}
	rr := &readRequest{done: make(chan struct{})}
	r.inboxMu.Lock()
	r.inReads = append(r.inReads, rr)
	r.inboxMu.Unlock()
	h.markReady(r)
	if err := h.waitCtx(ctx, rr.done); err != nil {
		return 0, err
	}
	return rr.index, rr.err
}

// ReadLocal answers query from this replica's applied state, with no
// freshness guarantee.
func (h *Host) ReadLocal(g ids.GroupID, vshard uint32, query []byte) ([]byte, error) {
	r := h.replica(g)
	if r == nil {
		return nil, ErrGroupNotFound
	}
	return h.readLocal(r, vshard, query)
}

func (h *Host) readLocal(r *replica, vshard uint32, query []byte) ([]byte, error) {
	var res []byte
	err := h.UseEngine(func(db *pebble.DB) error {
		var v storage.VShardReader
		v.Reset(db, r.group, vshard)
		var err error
		res, err = r.sm.Read(&v, vshard, query)
		return err
	})
	// A replica destroyed while we read may have shown us an empty range.
	if r.gone.Load() {
		return nil, ErrGroupNotFound
	}
	return res, err
}

// issueReads starts a ReadIndex round for queued reads and re-issues rounds
// that got no answer (the request is lost when leadership changes). Caller
// holds r.mu.
func (r *replica) issueReads(reads []*readRequest, ticks int) {
	if ticks > 0 {
		for id, b := range r.reads {
			b.age += ticks
			if b.age > 2*r.h.cfg.ElectionTicks {
				delete(r.reads, id)
				reads = append(reads, b.reads...)
			}
		}
	}
	if len(reads) == 0 {
		return
	}
	id := r.h.nextRead.Add(1)
	r.reads[id] = &readBatch{reads: reads}
	r.rn.ReadIndex(binary.BigEndian.AppendUint64(nil, id))
	r.h.stats.ReadIndexBatches.Add(1)
}

// completeReads hands read indexes to waiting reads and releases those whose
// index has been applied. Caller holds r.mu.
func (r *replica) completeReads(readStates []raft.ReadState) {
	// The durable applied index: reads go to the engine, so state applied
	// into a batch that has not committed yet does not count.
	applied := r.appliedIndex.Load()
	for _, rs := range readStates {
		if len(rs.RequestCtx) != 8 {
			continue
		}
		id := binary.BigEndian.Uint64(rs.RequestCtx)
		b := r.reads[id]
		if b == nil {
			continue
		}
		delete(r.reads, id)
		for _, rr := range b.reads {
			rr.index = rs.Index
			r.waiting = append(r.waiting, rr)
		}
	}
	if len(r.waiting) == 0 {
		return
	}
	keep := r.waiting[:0]
	for _, rr := range r.waiting {
		if rr.index <= applied {
			rr.finish(rr.index, nil)
		} else {
			keep = append(keep, rr)
		}
	}
	clear(r.waiting[len(keep):])
	r.waiting = keep
}
