package raftstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/storage"
)

// readRequest is one linearizable read waiting for its read index to be
// confirmed by a quorum and applied locally.
type readRequest struct {
	done   chan struct{}
	notify func() // called once done is closed (StartRead); must not block
	index  uint64
	err    error
	fin    atomic.Bool
}

func (rr *readRequest) finish(index uint64, err error) {
	if rr.fin.CompareAndSwap(false, true) {
		rr.index, rr.err = index, err
		close(rr.done)
		if rr.notify != nil {
			rr.notify()
		}
	}
}

// readBatch is one ReadIndex request covering every read queued before it:
// a single quorum round confirms them all.
type readBatch struct {
	reads []*readRequest
	age   int // ticks since issued
	// For leases (Config.ReadLease): when and in which term and lease
	// epoch the round was issued. A quorum that answers has heard from
	// this leader at or after issued.
	issued   time.Time
	term     uint64
	epoch    uint64
	leasable bool // issued by a leader with no transfer pending
}

// Read answers query against vshard of group g linearizably: it observes
// every write acknowledged before Read was called. The replica confirms with
// a quorum that its leader is current (ReadIndex), waits until it has applied
// up to that point, then reads local state. Any replica can serve it.
func (h *Host) Read(ctx context.Context, g ids.GroupID, vshard uint32, query []byte) ([]byte, error) {
	p, err := h.StartRead(g, nil)
	if err != nil {
		return nil, err
	}
	if err := h.waitCtx(ctx, p.Done()); err != nil {
		return nil, err
	}
	return h.FinishRead(p, vshard, query)
}

// PendingRead is a linearizable read started by StartRead: its read index
// is being confirmed by a quorum and applied on this replica.
type PendingRead struct {
	r  *replica
	rr *readRequest
}

// Done is closed once the read can be answered (FinishRead) or has failed.
func (p *PendingRead) Done() <-chan struct{} { return p.rr.done }

// StartRead starts a linearizable read of group g, as Read does, without
// waiting for it: one goroutine can have many reads in flight, and the reads
// of a group that reach its replica before the replica's next pass share one
// ReadIndex round. notify, when not nil, is called once Done is closed, on
// whichever goroutine finished the read (a Raft worker, usually): it must
// not block. A read that is never finished costs nothing once it is done.
func (h *Host) StartRead(g ids.GroupID, notify func()) (*PendingRead, error) {
	r := h.replica(g)
	if r == nil {
		return nil, ErrGroupNotFound
	}
	rr := &readRequest{done: make(chan struct{}), notify: notify}
	r.inboxMu.Lock()
	r.inReads = append(r.inReads, rr)
	r.inboxMu.Unlock()
	h.markReady(r)
	return &PendingRead{r: r, rr: rr}, nil
}

// FinishRead answers query against vshard for p, which must be done: the
// read's error, or the replica's state at or after the read index.
func (h *Host) FinishRead(p *PendingRead, vshard uint32, query []byte) ([]byte, error) {
	select {
	case <-p.rr.done:
	default:
		return nil, ErrReadNotDone
	}
	if p.rr.err != nil {
		return nil, p.rr.err
	}
	return h.readLocal(p.r, vshard, query)
}

// ReadIndex confirms with a quorum, as Read does, the commit index of g at
// the time of the call, waits until this replica has applied it, and returns
// it: every write acknowledged before the call is at or below that index.
// Stale reads cache it to serve many reads from one round.
func (h *Host) ReadIndex(ctx context.Context, g ids.GroupID) (uint64, error) {
	p, err := h.StartRead(g, nil)
	if err != nil {
		return 0, err
	}
	if err := h.waitCtx(ctx, p.Done()); err != nil {
		return 0, err
	}
	return p.rr.index, p.rr.err
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
		v.ResetCached(db, r.group, vshard, r.readCache)
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
//
// While a round is in flight, new reads are held back and share the next
// round, issued when the current one ends (as etcd's read loop does): a
// round is a message to every peer and its answer, and issuing one per
// worker pass under a steady read load made about one round per read. A
// held read cannot join the round in flight, whose index may predate it.
// A read that finds no round in flight (a lightly loaded group) is issued
// at once.
func (r *replica) issueReads(reads []*readRequest, ticks int) {
	if len(r.heldReads) > 0 {
		reads = append(r.heldReads, reads...)
		r.heldReads = nil
	}
	if ticks > 0 {
		for id, b := range r.reads {
			b.age += ticks
			if b.age > 2*r.h.cfg.ElectionTicks {
				delete(r.reads, id)
				reads = append(reads, b.reads...)
			}
		}
	}
	renew, leasable := false, false
	if r.h.cfg.ReadLease {
		reads, renew, leasable = r.leaseReads(reads)
	}
	if len(reads) == 0 && !renew {
		return
	}
	if len(r.reads) > 0 && !renew {
		r.heldReads = reads
		return
	}
	id := r.h.nextRead.Add(1)
	r.reads[id] = &readBatch{reads: reads, issued: time.Now(), term: r.rn.BasicStatus().Term, epoch: r.leaseEpoch, leasable: leasable}
	r.rn.ReadIndex(binary.BigEndian.AppendUint64(nil, id))
	r.h.stats.ReadIndexBatches.Add(1)
}

// leaseReads serves reads from the leader's lease (Config.ReadLease): while
// the lease holds, no other leader can exist, so the leader's commit index
// is a valid read index without a quorum round. It returns the reads it
// could not serve, and whether a round should be issued anyway to renew a
// lease that is past half its life (so that a steady read load never waits
// for a round), and whether a round issued now may renew the lease.
// Caller holds r.mu.
//
// Why the lease holds: it is renewed only by a ReadIndex round, issued at
// time t, that a quorum answered; each of those followers heard from this
// leader at or after t, and with CheckQuorum a follower grants no vote for
// an election timeout after hearing from its leader (a restarted replica,
// which forgot its leader, refuses votes for one election timeout too: see
// holdVote). Any new leader needs one of those votes, so none exists before
// t + the election timeout; the lease ends well before that (leaseDuration).
// Raft's own lease mode (ReadOnlyLeaseBased) is not used because its leader
// can keep leading for up to two election timeouts after losing its quorum.
// A leadership transfer elects the target without waiting for any lease,
// so a leader with a transfer pending serves no lease read, and a lease
// renewed by a round issued before a transfer began is never granted.
func (r *replica) leaseReads(reads []*readRequest) (left []*readRequest, renew, leasable bool) {
	st := r.rn.BasicStatus()
	if st.LeadTransferee != 0 {
		r.leaseEpoch++
		r.leaseUntil = time.Time{}
	}
	leasable = st.RaftState == raft.StateLeader && st.LeadTransferee == 0
	if !leasable || st.Term != r.leaseTerm {
		return reads, false, leasable
	}
	left = reads
	now := time.Now()
	// The commit index is this term's only once the leader has applied an
	// entry of its term (until then an older leader's entries may still be
	// committed past it).
	if now.Before(r.leaseUntil) && r.applied.Term == st.Term {
		for _, rr := range reads {
			rr.index = st.Commit
			r.waiting = append(r.waiting, rr)
		}
		r.h.stats.LeaseReads.Add(uint64(len(reads)))
		if len(reads) > 0 {
			r.leaseUsed = true
		}
		left = nil
		r.releaseReads()
	}
	// Renew only a lease in use: an idle group's lease lapses.
	if r.leaseUsed && r.leaseUntil.Sub(now) < r.h.leaseDuration()/2 {
		renew = true
		for _, b := range r.reads {
			if b.term == st.Term && b.epoch == r.leaseEpoch {
				renew = false // a round that can renew it is in flight
				break
			}
		}
	}
	return left, renew, leasable
}

// leaseDuration is how long a leader's lease lasts from the issue of the
// round that renewed it: nine tenths of one tick less than the election
// timeout, leaving room for a follower's tick arriving right after it heard
// from the leader and for clocks that run at slightly different rates.
func (h *Host) leaseDuration() time.Duration {
	return time.Duration(h.cfg.ElectionTicks-1) * h.cfg.TickInterval * 9 / 10
}

// holdVote reports whether m, a vote request, must be dropped: with leases
// on, a replica that has not yet seen an election timeout since it started
// may have forgotten a leader whose lease is still running. Votes for a
// leadership transfer are let through (the leader asked for them).
func (r *replica) holdVote(m *raftpb.Message) bool {
	if !r.h.cfg.ReadLease || r.ticksAlive >= r.h.cfg.ElectionTicks {
		return false
	}
	if m.Type != raftpb.MsgVote && m.Type != raftpb.MsgPreVote {
		return false
	}
	return !bytes.Equal(m.Context, campaignTransfer)
}

// campaignTransfer is the context etcd raft puts on the votes of an
// election that a leadership transfer started.
var campaignTransfer = []byte("CampaignTransfer")

// reissueReads hands the reads of every round in flight back to the queue,
// to be issued again in a fresh round: called when the leader changes, since
// etcd raft forgets pending ReadIndex requests when it steps down, and a
// follower's request to a former leader may never be answered. Without it
// those reads, and the reads held behind them, would wait for the rounds'
// expiry (two election timeouts). A fresh round gives a later read index,
// which is as good for every read (TestReadsSurviveLeaderChange). An answer
// to a forgotten round is ignored. Caller holds r.mu.
func (r *replica) reissueReads() {
	if len(r.reads) == 0 {
		return
	}
	var again []*readRequest
	for id, b := range r.reads {
		again = append(again, b.reads...)
		delete(r.reads, id)
	}
	r.heldReads = append(again, r.heldReads...)
	r.h.markReady(r)
}

// completeReads hands read indexes to waiting reads and releases those whose
// index has been applied. Caller holds r.mu.
func (r *replica) completeReads(readStates []raft.ReadState) {
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
		if len(r.reads) == 0 && len(r.heldReads) > 0 {
			r.h.markReady(r) // issueReads sends the held reads' round
		}
		for _, rr := range b.reads {
			rr.index = rs.Index
			r.waiting = append(r.waiting, rr)
		}
		if r.h.cfg.ReadLease && b.leasable && b.epoch == r.leaseEpoch && b.term == r.rn.BasicStatus().Term {
			if until := b.issued.Add(r.h.leaseDuration()); until.After(r.leaseUntil) {
				r.leaseUntil, r.leaseTerm = until, b.term
				r.leaseUsed = false
			}
		}
	}
	r.releaseReads()
}

// releaseReads releases the waiting reads whose index has been applied.
// Caller holds r.mu.
func (r *replica) releaseReads() {
	// The durable applied index: reads go to the engine, so state applied
	// into a batch that has not committed yet does not count.
	applied := r.appliedIndex.Load()
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
