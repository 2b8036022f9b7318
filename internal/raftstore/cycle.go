package raftstore

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// maxTicksPerCycle bounds how many missed ticks one cycle delivers, so that a
// long pause (GC, a stalled disk) does not fire every election at once.
const maxTicksPerCycle = 3

// workerState is what one worker accumulates during a cycle.
type workerState struct {
	batch    *pebble.Batch
	mustSync bool
	early    outbox // sent before the persist batch commits
	late     outbox // sent after it commits
	readied  []*replica
}

// outbox batches outgoing messages per destination node.
type outbox map[ids.NodeID][]transport.Message

func (o *outbox) add(to ids.NodeID, m transport.Message) {
	if *o == nil {
		*o = outbox{}
	}
	(*o)[to] = append((*o)[to], m)
}

// drive runs cycles until the host stops.
func (h *Host) drive() {
	defer h.wg.Done()
	var reps []*replica
	for {
		select {
		case <-h.stopc:
			return
		case <-h.readyc:
		}
		h.readyMu.Lock()
		reps, h.ready = h.ready, reps[:0]
		h.readyMu.Unlock()
		if len(reps) == 0 {
			continue
		}
		// Clear the flags before draining inboxes: input that arrives while
		// the cycle runs queues the replica again.
		for _, r := range reps {
			r.queued.Store(false)
		}
		if err := h.cycle(reps); err != nil {
			h.fatal(err)
			return
		}
		clear(reps)
	}
}

// parallel calls fn(worker, i) for i in [0, n) on up to cfg.Workers
// goroutines, the caller's included.
func (h *Host) parallel(n int, fn func(w *workerState, i int)) {
	k := min(n, len(h.workers))
	if k <= 1 {
		for i := range n {
			fn(&h.workers[0], i)
		}
		return
	}
	var next atomic.Int64
	run := func(w *workerState) {
		for {
			i := int(next.Add(1) - 1)
			if i >= n {
				return
			}
			fn(w, i)
		}
	}
	var wg sync.WaitGroup
	for j := 1; j < k; j++ {
		wg.Add(1)
		w := &h.workers[j]
		select {
		case h.workc <- func() { defer wg.Done(); run(w) }:
		case <-h.stopc:
			wg.Done()
		}
	}
	run(&h.workers[0])
	wg.Wait()
}

// cycle runs one scheduler cycle over reps (see the package comment).
func (h *Host) cycle(reps []*replica) error {
	for i := range h.workers {
		w := &h.workers[i]
		if w.batch == nil {
			w.batch = h.eng.DB().NewBatch()
		}
	}
	h.parallel(len(reps), func(w *workerState, i int) { reps[i].prepare(w) })

	// Appends and heartbeats of leaders go out while the local write runs.
	h.flush(func(w *workerState) *outbox { return &w.early })

	// Group commit: one batch, at most one fsync, for every group. While
	// the disk syncs, committed entries that were already durable here are
	// applied and answered: they need nothing from this write.
	batch := h.workers[0].batch
	mustSync := h.workers[0].mustSync
	for i := 1; i < len(h.workers); i++ {
		w := &h.workers[i]
		mustSync = mustSync || w.mustSync
		if !w.batch.Empty() {
			if err := batch.Apply(w.batch, nil); err != nil {
				return fmt.Errorf("merge persist batches: %w", err)
			}
		}
	}
	var early []*replica
	for i := range h.workers {
		for _, r := range h.workers[i].readied {
			if r.earlyApply > 0 {
				early = append(early, r)
			}
		}
	}
	commitErr := make(chan error, 1)
	if batch.Empty() {
		commitErr <- nil
	} else {
		opt := pebble.NoSync
		if mustSync {
			opt = pebble.Sync
		}
		go func() { commitErr <- batch.Commit(opt) }()
	}
	var failed atomic.Pointer[error]
	if len(early) > 0 {
		h.parallel(len(early), func(_ *workerState, i int) {
			if err := early[i].applyEarly(); err != nil {
				failed.CompareAndSwap(nil, &err)
			}
		})
	}
	if err := <-commitErr; err != nil {
		return fmt.Errorf("commit raft persist batch: %w", err)
	}
	if p := failed.Load(); p != nil {
		return *p
	}
	if !batch.Empty() {
		if mustSync {
			h.stats.SyncedCommits.Add(1)
		} else {
			h.stats.UnsyncedCommits.Add(1)
		}
	}
	var readied []*replica
	for i := range h.workers {
		w := &h.workers[i]
		w.batch.Reset()
		w.mustSync = false
		readied = append(readied, w.readied...)
		clear(w.readied)
		w.readied = w.readied[:0]
	}
	h.stats.Cycles.Add(1)
	if len(readied) == 0 {
		return nil
	}
	h.stats.ReadiesProcessed.Add(uint64(len(readied)))

	// Votes and acknowledgements may only leave once the write is durable.
	h.flush(func(w *workerState) *outbox { return &w.late })

	h.parallel(len(readied), func(_ *workerState, i int) {
		if err := readied[i].finish(); err != nil {
			failed.CompareAndSwap(nil, &err)
		}
	})
	if p := failed.Load(); p != nil {
		return *p
	}
	return nil
}

// flush sends every worker's outbox selected by sel, one batch per node.
func (h *Host) flush(sel func(*workerState) *outbox) {
	var merged outbox
	for i := range h.workers {
		o := sel(&h.workers[i])
		if len(*o) == 0 {
			continue
		}
		if merged == nil {
			merged = *o
			*o = nil
			continue
		}
		for to, msgs := range *o {
			merged[to] = append(merged[to], msgs...)
		}
		clear(*o)
	}
	for to, msgs := range merged {
		h.stats.MessagesSent.Add(uint64(len(msgs)))
		if err := h.tr.Send(to, msgs); err != nil {
			h.reportUnreachable(to, msgs)
		}
	}
}

// reportUnreachable tells Raft that the replicas msgs were addressed to could
// not be reached, so leaders probe them instead of streaming appends.
func (h *Host) reportUnreachable(to ids.NodeID, msgs []transport.Message) {
	seen := map[[2]uint64]bool{}
	for _, m := range msgs {
		k := [2]uint64{uint64(m.Group), m.Msg.To}
		if seen[k] {
			continue
		}
		seen[k] = true
		if r := h.replica(m.Group); r != nil {
			peer := m.Msg.To
			r.enqueueCtrl(func() { r.rn.ReportUnreachable(peer) })
		}
	}
}

// prepare steps r's pending input into Raft and, if Raft has a Ready,
// stages its writes and messages into w. Runs on a pool worker. If it
// produces a Ready it leaves r.mu locked until finish.
func (r *replica) prepare(w *workerState) {
	r.mu.Lock()
	if r.destroyed {
		r.mu.Unlock()
		return
	}
	r.inboxMu.Lock()
	msgs, props, reads, ctrl := r.inMsgs, r.inProps, r.inReads, r.inCtrl
	r.inMsgs, r.inProps, r.inReads, r.inCtrl = nil, nil, nil, nil
	r.inboxMu.Unlock()

	for _, f := range ctrl {
		f()
	}
	ticks := int(r.ticks.Swap(0))
	for i := 0; i < min(ticks, maxTicksPerCycle); i++ {
		r.rn.Tick()
	}
	for i := range msgs {
		m := &msgs[i]
		if _, known := r.applied.NodeOf(ids.ReplicaID(m.msg.From)); !known {
			r.peers[ids.ReplicaID(m.msg.From)] = m.from
		}
		// Errors here are messages Raft ignores (from removed peers, say).
		_ = r.rn.Step(m.msg)
	}
	r.stepProposals(props)
	r.issueReads(reads, ticks)

	if r.destroyed || !r.rn.HasReady() {
		r.mu.Unlock()
		return
	}
	_, durableLast := r.log.Bounds()
	rd := r.rn.Ready()
	r.rd, r.hasRd = rd, true
	r.updateSoftState(rd.SoftState)
	r.trackAppended(rd.Entries)

	if !raft.IsEmptySnap(rd.Snapshot) {
		if err := r.stageInstall(w.batch, &rd.Snapshot); err != nil {
			// The snapshot was verified on receipt; failing now means the
			// staging file vanished or storage failed. Crash rather than
			// acknowledge a state we do not have.
			panic(fmt.Sprintf("group %s: install snapshot: %v", r.group, err))
		}
	}
	if err := r.log.WriteAppend(w.batch, rd.Entries); err != nil {
		panic(fmt.Sprintf("group %s: stage append: %v", r.group, err))
	}
	if !raft.IsEmptyHardState(rd.HardState) {
		if err := r.log.WriteHardState(w.batch, rd.HardState); err != nil {
			panic(fmt.Sprintf("group %s: stage hard state: %v", r.group, err))
		}
	}
	w.mustSync = w.mustSync || rd.MustSync
	// Committed entries up to the last index persisted by earlier cycles
	// may be applied before this cycle's write is durable.
	r.earlyApply = 0
	if raft.IsEmptySnap(rd.Snapshot) {
		for _, e := range rd.CommittedEntries {
			if e.Index > durableLast {
				break
			}
			r.earlyApply++
		}
	}
	leader := r.isLeader.Load()
	for _, m := range rd.Messages {
		if m.Type == raftpb.MsgSnap {
			r.snapOut = append(r.snapOut, m)
			continue
		}
		to, ok := r.nodeOf(ids.ReplicaID(m.To))
		if !ok {
			r.h.stats.MessagesDropped.Add(1)
			continue
		}
		tm := transport.Message{Group: r.group, Msg: m}
		if leader && (m.Type == raftpb.MsgApp || m.Type == raftpb.MsgHeartbeat) {
			w.early.add(to, tm)
		} else {
			w.late.add(to, tm)
		}
	}
	w.readied = append(w.readied, r)
}

// applyEarly applies the committed entries of r's Ready that were durable
// here before this cycle, concurrently with the cycle's fsync.
func (r *replica) applyEarly() error {
	return r.apply(r.rd.CommittedEntries[:r.earlyApply])
}

// finish completes r's Ready after the persist batch committed: updates the
// log's in-memory view, applies committed entries, advances Raft, answers
// waiters. Unlocks r.mu.
func (r *replica) finish() error {
	defer r.mu.Unlock()
	rd := &r.rd
	r.hasRd = false
	if !raft.IsEmptySnap(rd.Snapshot) {
		r.didInstall(&rd.Snapshot)
	}
	r.log.DidAppend(rd.Entries)
	if !raft.IsEmptyHardState(rd.HardState) {
		r.log.DidWriteHardState(rd.HardState)
	}
	for _, m := range r.snapOut {
		r.h.sendSnapshot(r, m)
	}
	clear(r.snapOut)
	r.snapOut = r.snapOut[:0]

	if rest := rd.CommittedEntries[r.earlyApply:]; len(rest) > 0 {
		if err := r.apply(rest); err != nil {
			return err
		}
	}
	r.earlyApply = 0
	r.rn.Advance(*rd)
	var rss []readState
	for _, rs := range rd.ReadStates {
		rss = append(rss, readState{index: rs.Index, ctx: rs.RequestCtx})
	}
	r.completeReads(rss)
	*rd = raft.Ready{}

	if r.removed {
		return r.h.destroyLocked(r)
	}
	if r.rn.HasReady() {
		r.h.markReady(r)
	}
	return nil
}

var _ = slices.Clone[[]int]
