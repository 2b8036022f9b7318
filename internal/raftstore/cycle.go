package raftstore

import (
	"sync"
	"sync/atomic"

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
	out  outbox
	jobs []*appendJob
	err  error
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

// cycle runs one scheduler cycle over reps (see the package comment): each
// replica is stepped and its Ready handled on the worker pool, then the
// cycle's messages leave (batched per node) and its log writes go to the
// appender, which makes them durable with one fsync for every group.
func (h *Host) cycle(reps []*replica) error {
	h.parallel(len(reps), func(w *workerState, i int) {
		if err := reps[i].process(w); err != nil && w.err == nil {
			w.err = err
		}
	})
	var jobs []*appendJob
	for i := range h.workers {
		w := &h.workers[i]
		if w.err != nil {
			return w.err
		}
		jobs = append(jobs, w.jobs...)
		clear(w.jobs)
		w.jobs = w.jobs[:0]
	}
	h.flush(func(w *workerState) *outbox { return &w.out })
	h.appender.submit(jobs)
	h.stats.Cycles.Add(1)
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
	h.send(merged)
}

func (h *Host) send(o outbox) {
	for to, msgs := range o {
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

// process steps r's pending input into Raft and handles its Ready: log
// writes become an append job, committed entries (already durable here: Raft
// hands out only stable entries with asynchronous storage writes) are applied
// now, messages are routed. Runs on a pool worker.
func (r *replica) process(w *workerState) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.destroyed {
		return nil
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
		if !m.local {
			if _, known := r.applied.NodeOf(ids.ReplicaID(m.msg.From)); !known {
				r.peers[ids.ReplicaID(m.msg.From)] = m.from
			}
		}
		// Errors here are messages Raft ignores (from removed peers, say).
		_ = r.rn.Step(m.msg)
	}
	r.stepProposals(props)
	r.issueReads(reads, ticks)

	if r.destroyed || !r.rn.HasReady() {
		return nil
	}
	rd := r.rn.Ready()
	r.h.stats.ReadiesProcessed.Add(1)
	r.updateSoftState(rd.SoftState)
	r.trackAppended(rd.Entries)
	var applies []raftpb.Message
	for _, m := range rd.Messages {
		switch {
		case m.To == raft.LocalAppendThread:
			w.jobs = append(w.jobs, r.newAppendJob(m))
		case m.To == raft.LocalApplyThread:
			applies = append(applies, m)
		case m.Type == raftpb.MsgSnap:
			r.h.sendSnapshot(r, m)
		default:
			r.route(&w.out, m)
		}
	}
	for _, m := range applies {
		if len(m.Entries) > 0 {
			if err := r.apply(m.Entries); err != nil {
				return err
			}
		}
		for _, resp := range m.Responses {
			_ = r.rn.Step(resp)
		}
	}
	r.completeReads(rd.ReadStates)
	if r.removed {
		return r.h.destroyLocked(r)
	}
	if r.rn.HasReady() {
		r.h.markReady(r)
	}
	return nil
}

// route adds m to the outbox of the node hosting its recipient.
func (r *replica) route(o *outbox, m raftpb.Message) {
	to, ok := r.nodeOf(ids.ReplicaID(m.To))
	if !ok {
		r.h.stats.MessagesDropped.Add(1)
		return
	}
	o.add(to, transport.Message{Group: r.group, Msg: m})
}

// newAppendJob turns a MsgStorageAppend into work for the appender. Anything
// the appender needs from the replica's locked state is resolved here: the
// staged snapshot and the nodes of remote responses.
func (r *replica) newAppendJob(m raftpb.Message) *appendJob {
	j := &appendJob{r: r, msg: m}
	if m.Snapshot != nil {
		j.staged = r.staged
		r.staged = nil
	}
	for _, resp := range m.Responses {
		if resp.To == uint64(r.id) {
			j.local = append(j.local, resp)
			continue
		}
		r.route(&j.remote, resp)
	}
	return j
}

