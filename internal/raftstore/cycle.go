package raftstore

import (
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"

	"github.com/nodedb/nodedb-cluster/internal/failpoint"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/storage"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// maxTicksPerProcess bounds how many missed ticks one processing delivers, so
// that a long pause (GC, a stalled disk) does not fire every election at once.
const maxTicksPerProcess = 3

// workerState is what one worker accumulates while processing a handful of
// replicas.
type workerState struct {
	out     outbox
	jobs    []*appendJob
	apply   *pebble.Batch // committed entries of every replica of the pass
	applied []*replica    // replicas waiting for apply to commit
	order   storage.KeyOrder
}

// close releases the worker's batches.
func (w *workerState) close() {
	if w.apply != nil {
		_ = w.apply.Close()
		w.apply = nil
	}
	_ = w.order.Close()
}

// outbox batches outgoing messages per destination node.
type outbox map[ids.NodeID][]transport.Message

func (o *outbox) add(to ids.NodeID, m transport.Message) {
	if *o == nil {
		*o = outbox{}
	}
	(*o)[to] = append((*o)[to], m)
}

// reset empties o but keeps its per-node slices for reuse (the transport does
// not retain them after Send).
func (o outbox) reset() {
	for to, msgs := range o {
		clear(msgs)
		o[to] = msgs[:0]
	}
}

// Replica scheduling states. A replica is in the ready list or being
// processed by exactly one worker while its state is not idle, so it is never
// processed concurrently, and its messages leave before it can be processed
// again (which keeps each replica's traffic to a node in order).
const (
	schedIdle   int32 = iota
	schedQueued       // in the ready list, or being processed
	schedDirty        // being processed, and new input arrived meanwhile
)

// markReady queues r for processing.
func (h *Host) markReady(r *replica) {
	if h.claim(r) {
		h.push(r)
	}
}

// claim moves r towards the ready list and reports whether the caller must
// push it there (false: it is already queued, or being processed and now
// marked dirty).
func (h *Host) claim(r *replica) bool {
	for {
		switch r.sched.Load() {
		case schedIdle:
			if r.sched.CompareAndSwap(schedIdle, schedQueued) {
				return true
			}
		case schedQueued:
			if r.sched.CompareAndSwap(schedQueued, schedDirty) {
				return false
			}
		default:
			return false
		}
	}
}

func (h *Host) push(r *replica) {
	h.readyMu.Lock()
	h.ready = append(h.ready, r)
	h.readyMu.Unlock()
	h.readyCond.Signal()
}

// markAllReady queues many replicas with one lock and one wake-up.
func (h *Host) markAllReady(rs []*replica) {
	n := 0
	for _, r := range rs {
		if h.claim(r) {
			rs[n] = r
			n++
		}
	}
	if n == 0 {
		return
	}
	h.readyMu.Lock()
	h.ready = append(h.ready, rs[:n]...)
	h.readyMu.Unlock()
	if n == 1 {
		h.readyCond.Signal()
	} else {
		h.readyCond.Broadcast()
	}
}

// release ends r's processing, queueing it again if input arrived meanwhile.
func (h *Host) release(r *replica) {
	for {
		if r.sched.CompareAndSwap(schedQueued, schedIdle) {
			return
		}
		if r.sched.CompareAndSwap(schedDirty, schedQueued) {
			h.push(r)
			return
		}
	}
}

// take waits for ready replicas and takes a fair share of them (so that all
// workers get work when many groups are ready at once). It returns nil when
// the host stops.
func (h *Host) take(dst []*replica) []*replica {
	h.readyMu.Lock()
	defer h.readyMu.Unlock()
	for len(h.ready) == 0 && !h.stopping.Load() {
		h.readyCond.Wait()
	}
	if h.stopping.Load() {
		return nil
	}
	n := (len(h.ready) + len(h.workers) - 1) / len(h.workers)
	dst = append(dst, h.ready[:n]...)
	rest := copy(h.ready, h.ready[n:])
	clear(h.ready[rest:])
	h.ready = h.ready[:rest]
	if rest > 0 {
		h.readyCond.Signal()
	}
	return dst
}

// work is one pool worker: it processes ready replicas a handful at a time,
// sends their messages batched per destination node, and hands their log
// writes to the appender. Workers never wait for each other.
func (h *Host) work(w *workerState) {
	defer h.wg.Done()
	defer w.close()
	var reps []*replica
	for {
		reps = h.take(reps[:0])
		if reps == nil {
			return
		}
		for _, r := range reps {
			if err := r.process(w); err != nil {
				h.fatal(err)
			}
		}
		// The appender is woken before the messages are handed to the
		// transport: Go runs the goroutine woken last first on this
		// processor, and the appender soon blocks it in fsync (a blocking
		// system call keeps its processor until the runtime takes it back),
		// which would leave the transport's senders waiting behind the sync
		// for another processor. Appends to followers go out first, so their
		// syncs overlap ours; they are half of every commit.
		h.appender.submit(w.jobs)
		clear(w.jobs)
		w.jobs = w.jobs[:0]
		h.send(w.out)
		w.out.reset()
		if err := h.commitApplies(w); err != nil {
			h.fatal(err)
		}
		for _, r := range reps {
			h.release(r)
		}
		clear(reps)
		h.stats.Cycles.Add(1)
	}
}

func (h *Host) send(o outbox) {
	var now int64
	for to, msgs := range o {
		if len(msgs) == 0 {
			continue
		}
		if now == 0 {
			now = time.Now().UnixNano()
		}
		h.sent.note(to, now)
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
	r.inMsgs, r.inProps, r.inReads, r.inCtrl = r.spare[:0], nil, nil, nil
	r.spare = nil
	r.inboxMu.Unlock()
	defer func() {
		// Hand the drained message slice back for the next swap; Raft has
		// copied what it keeps.
		clear(msgs)
		r.inboxMu.Lock()
		r.spare = msgs[:0]
		r.inboxMu.Unlock()
	}()

	busy := r.wakes(msgs, props, reads, ctrl)
	if r.quiesced {
		switch {
		case busy:
			r.wake(false)
		case r.checkDue.Swap(false):
			if r.quiescedPeerLost(time.Now()) {
				r.wake(true)
				break
			}
			if r.maybeProposeExpiry(); r.expiry.pending {
				r.wake(false)
			}
		}
	}
	for _, f := range ctrl {
		f()
	}
	if r.destroyed {
		return nil // a control operation destroyed the replica
	}
	if r.noticeDue.Swap(false) {
		r.flushDueNotices(&w.out)
	}
	ticks := int(r.ticks.Swap(0))
	if r.quiesced {
		ticks = 0 // delivered before the replica quiesced
	}
	if busy {
		r.idleTicks = 0
	} else if ticks > 0 {
		r.idleTicks += ticks
		// A leader idle long enough quiesces instead of ticking.
		if r.idleTicks >= quiesceIdleTimeouts*r.h.cfg.ElectionTicks && r.isLeader.Load() && r.quiesceLeader(&w.out) {
			ticks = 0
		}
	}
	for i := 0; i < min(ticks, maxTicksPerProcess); i++ {
		r.rn.Tick()
		r.clock++
	}
	if r.ticksAlive < r.h.cfg.ElectionTicks {
		r.ticksAlive += ticks
	}
	if ticks > 0 {
		r.maybeProposeExpiry()
		if len(r.staged) > 0 {
			r.staged.prune(r.appliedIndex.Load())
		}
	}
	// The last quiescing heartbeat from the leader, unless something that
	// wakes the replica came after it.
	var quiesce *raftpb.Message
	for i := range msgs {
		m := &msgs[i]
		if r.wakes(msgs[i:i+1], nil, nil, nil) {
			quiesce = nil
		} else if m.msg.Type == raftpb.MsgHeartbeat {
			quiesce = &m.msg
		}
		if !m.local {
			if _, known := r.applied.NodeOf(ids.ReplicaID(m.msg.From)); !known {
				r.peers[ids.ReplicaID(m.msg.From)] = m.from
			}
		}
		if r.holdVote(&m.msg) || r.refuseLeadership(&m.msg) {
			continue
		}
		// Errors here are messages Raft ignores (from removed peers, say).
		_ = r.rn.Step(m.msg)
	}
	r.stepProposals(props)
	r.issueReads(reads, ticks)
	if quiesce != nil && !r.quiesced {
		r.quiesceFollower(quiesce)
	}

	if r.destroyed || !r.rn.HasReady() {
		return nil
	}
	rd := r.rn.Ready()
	r.h.stats.ReadiesProcessed.Add(1)
	r.updateSoftState(rd.SoftState)
	r.trackAppended(rd.Entries)
	var applies []raftpb.Message
	superseded := supersededCommitNotices(rd.Messages, &r.coalesce)
	for i, m := range rd.Messages {
		switch {
		case i < 63 && superseded&(1<<i) != 0:
			r.h.stats.CommitNoticesCoalesced.Add(1)
		case m.Type == raftpb.MsgApp:
			r.deferNotice(&w.out, m)
		case m.Type == raftpb.MsgHeartbeat:
			if r.skipHeartbeat(&m) {
				r.h.stats.HeartbeatsSkipped.Add(1)
				continue
			}
			r.coverNotice(&w.out, &m)
			r.route(&w.out, m)
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
			if w.apply == nil {
				w.apply = r.h.eng.DB().NewIndexedBatch()
			}
			if err := r.applyInto(w.apply, m.Entries); err != nil {
				return err
			}
		}
		r.applyResps = append(r.applyResps, m.Responses...)
	}
	r.completeReads(rd.ReadStates)
	if len(applies) > 0 {
		// afterApply finishes the job once the pass's batch commits.
		w.applied = append(w.applied, r)
		return nil
	}
	if r.rn.HasReady() {
		r.h.markReady(r)
	}
	return nil
}

// commitApplies commits the pass's apply batch (no fsync: the entries are
// durable in the log, and the WAL keeps batches in order) and completes the
// applies it holds.
func (h *Host) commitApplies(w *workerState) error {
	if len(w.applied) == 0 {
		return nil
	}
	// In key order: see storage.KeyOrder.
	b, err := w.order.Rewrite(h.eng.DB(), w.apply)
	if err != nil {
		return fmt.Errorf("order apply batch: %w", err)
	}
	// The replicas are still being processed by this worker, which owns
	// their read caches' apply side until it releases them.
	for _, r := range w.applied {
		r.readCache.BeginCommit()
	}
	if err := failpoint.Inject("raft.before-apply-commit"); err != nil {
		return fmt.Errorf("commit apply batch: %w", err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("commit apply batch: %w", err)
	}
	if err := failpoint.Inject("raft.after-apply-commit"); err != nil {
		return fmt.Errorf("after the apply batch: %w", err)
	}
	w.apply.Reset()
	var first error
	for _, r := range w.applied {
		// Before afterApply moves the applied index that releases reads.
		r.readCache.EndCommit()
		r.mu.Lock()
		if err := r.afterApply(); err != nil && first == nil {
			first = err
		}
		r.mu.Unlock()
	}
	clear(w.applied)
	w.applied = w.applied[:0]
	return first
}

// deferNotice routes an append, holding it back if it is empty. An empty
// append is mostly Raft's commit notice (broadcast whenever the commit index
// advances); while the group is busy, the next proposal's append to the same
// follower carries the same commit index and makes the notice redundant. So
// a notice waits up to Config.CommitNoticeDelay; any later append to the same
// follower in the same term with a commit index at least as high replaces it,
// and so does a heartbeat that carries it (coverNotice). A follower learns a
// commit index at most that much later when its group goes quiet; the
// leader's answers to clients do not wait. Holding a message back is like a
// slower network: always safe in Raft.
func (r *replica) deferNotice(o *outbox, m raftpb.Message) {
	replaced := r.coverNotice(o, &m)
	if len(m.Entries) > 0 || r.h.cfg.CommitNoticeDelay < 0 || !r.onlyCommitNews(m.To) {
		r.route(o, m)
		return
	}
	// An empty append that replaces a held one keeps its time: a leader
	// whose appends are throttled sends a new empty one at every heartbeat
	// answer, which would otherwise hold the news back for ever.
	due := time.Now().Add(r.h.cfg.CommitNoticeDelay)
	if !replaced.IsZero() && replaced.Before(due) {
		due = replaced
	}
	r.notices = append(r.notices, heldNotice{msg: m, due: due})
	r.armNoticeTimer(r.h.cfg.CommitNoticeDelay)
}

// onlyCommitNews reports whether an empty append to replica to can carry no
// news but the commit index, so that holding it back delays nothing else: the
// leader replicates to it optimistically (StateReplicate; in StateProbe an
// empty append is a probe the leader waits for, and it is sent at once) and
// is not handing leadership over (an empty append then asks the transferee
// to acknowledge, which the transfer waits for).
func (r *replica) onlyCommitNews(to uint64) bool {
	if r.rn.BasicStatus().LeadTransferee != 0 {
		return false
	}
	replicating := false
	r.rn.WithProgress(func(id uint64, _ raft.ProgressType, pr tracker.Progress) {
		if id == to {
			replicating = pr.State == tracker.StateReplicate
		}
	})
	return replicating
}

// heldNotice is a commit notice held back by deferNotice until due.
type heldNotice struct {
	msg raftpb.Message
	due time.Time
}

// coverNotice handles the notice held for m's recipient, if any, as m is
// about to leave. An append of the same term with a commit index at least as
// high replaces it (the append asks for an acknowledgement too). A heartbeat
// replaces it only when it carries the same news and nothing is left that the
// notice could ask for: same term, and a commit index (the lower of the
// leader's and the follower's match) at least the notice's commit index and
// its log position, so the follower has acknowledged everything before the
// notice. An append that does not replace it (a notice of an older term)
// sends it first, keeping the order; a heartbeat that does not leaves it
// held. It returns the replaced notice's due time, or zero.
func (r *replica) coverNotice(o *outbox, m *raftpb.Message) (replacedDue time.Time) {
	for i := range r.notices {
		n := &r.notices[i].msg
		if n.To != m.To {
			continue
		}
		heartbeat := m.Type == raftpb.MsgHeartbeat
		switch {
		case m.Term == n.Term && m.Commit >= n.Commit && (!heartbeat || m.Commit >= n.Index):
			r.h.stats.CommitNoticesCoalesced.Add(1)
			replacedDue = r.notices[i].due
		case heartbeat:
			return time.Time{}
		default:
			r.route(o, *n)
		}
		r.notices = append(r.notices[:i], r.notices[i+1:]...)
		return replacedDue
	}
	return time.Time{}
}

// armNoticeTimer makes sure the replica is woken within d to send its due
// notices. One timer per replica, re-armed only when it is not running: a
// notice superseded before its time costs nothing more.
func (r *replica) armNoticeTimer(d time.Duration) {
	if r.noticeArmed {
		return
	}
	r.noticeArmed = true
	if r.noticeTimer == nil {
		h := r.h
		r.noticeTimer = time.AfterFunc(d, func() {
			if h.stopping.Load() {
				return
			}
			r.noticeDue.Store(true)
			h.markReady(r)
		})
		return
	}
	r.noticeTimer.Reset(d)
}

// flushDueNotices sends the held notices whose time has come and re-arms the
// timer for the next one.
func (r *replica) flushDueNotices(o *outbox) {
	r.noticeArmed = false
	now := time.Now()
	var next time.Time
	kept := r.notices[:0]
	for _, n := range r.notices {
		if !n.due.After(now) {
			r.route(o, n.msg)
			continue
		}
		if next.IsZero() || n.due.Before(next) {
			next = n.due
		}
		kept = append(kept, n)
	}
	clear(r.notices[len(kept):])
	r.notices = kept
	if len(kept) > 0 {
		r.armNoticeTimer(next.Sub(now))
	}
}

// stopNotices stops the notice timer of a replica that goes away.
func (r *replica) stopNotices() {
	if r.noticeTimer != nil {
		r.noticeTimer.Stop()
	}
	r.notices = nil
}

// supersededCommitNotices returns a bit set of the messages of one Ready
// (the first 63) that are empty appends made redundant by a later append to
// the same peer in the same term with a commit index at least as high.
//
// A leader broadcasts an empty MsgApp whenever its commit index advances; when
// it also appends new entries in the same Ready (proposals stepped after the
// acknowledgements that advanced the commit), the later append carries the
// same commit index, and its acknowledgement tells the leader everything the
// empty one's would. Dropping the empty one saves the follower a Ready, an
// append job and an acknowledgement, and the leader a step: with many groups
// each carrying a few proposals per cycle, that is a large share of the work.
// Dropping a message is always safe in Raft; dropping only those that a later
// message in the same batch covers keeps replication as fast as before.
// scratch is reused across calls.
func supersededCommitNotices(msgs []raftpb.Message, scratch *[]raftpb.Message) uint64 {
	var set uint64
	later := (*scratch)[:0] // the last append seen per peer, scanning backwards
	for i := min(len(msgs), 63) - 1; i >= 0; i-- {
		m := &msgs[i]
		if m.Type != raftpb.MsgApp {
			continue
		}
		k := -1
		for j := range later {
			if later[j].To == m.To {
				k = j
				break
			}
		}
		if k >= 0 && len(m.Entries) == 0 && later[k].Term == m.Term && later[k].Commit >= m.Commit {
			set |= 1 << i
			continue
		}
		if k < 0 {
			later = append(later, raftpb.Message{To: m.To, Term: m.Term, Commit: m.Commit})
		} else if m.Commit > later[k].Commit {
			later[k].Commit = m.Commit
		}
	}
	*scratch = later[:0]
	return set
}

// route adds m to the outbox of the node hosting its recipient.
func (r *replica) route(o *outbox, m raftpb.Message) {
	to, ok := r.nodeOf(ids.ReplicaID(m.To))
	if !ok {
		r.h.stats.MessagesDropped.Add(1)
		return
	}
	if m.Type == raftpb.MsgApp {
		r.noteAppendSent(m.To)
	}
	o.add(to, transport.Message{Group: r.group, Msg: m})
}

// noteAppendSent records that an append to peer to leaves now.
func (r *replica) noteAppendSent(to uint64) {
	for i := range r.appSent {
		if r.appSent[i].to == to {
			r.appSent[i].clock = r.clock
			return
		}
	}
	r.appSent = append(r.appSent, peerClock{to: to, clock: r.clock})
}

// skipHeartbeat reports whether the leader's heartbeat m can stay unsent
// because an append reached its follower within the last heartbeat
// interval. A busy group's heartbeats are otherwise a message and an
// answer per follower per interval on top of its appends, each a pass of
// both replicas; under a light load (a write every few ticks per group)
// they were about a tenth of a node's Raft messages.
//
// What a heartbeat does, an append already did: it resets the follower's
// election timer, carries the commit index the follower can use, and tells
// the leader through its answer that the follower is alive (CheckQuorum
// counts append answers too). With this rule a follower still hears from
// its leader at least once every two heartbeat intervals, so it applies
// only where the election timeout is at least three intervals (the
// defaults are 2 and 10 ticks); and a leader whose appends stop, or pause
// for a lost one, heartbeats again one interval later. A commit notice
// held for the follower stays held when the heartbeat that could have
// carried it is skipped: the next append replaces it, or it leaves when
// due (CommitNoticeDelay), as in a group with no heartbeat due. Never
// skipped: a heartbeat of a ReadIndex round (its context names the round,
// whose reads wait for the answers). Leaving a message unsent is always
// safe in Raft.
func (r *replica) skipHeartbeat(m *raftpb.Message) bool {
	hb := uint64(r.h.cfg.HeartbeatTicks)
	if len(m.Context) > 0 || uint64(r.h.cfg.ElectionTicks) < 3*hb {
		return false
	}
	for _, s := range r.appSent {
		if s.to == m.To {
			return r.clock-s.clock < hb
		}
	}
	return false
}

// newAppendJob turns a MsgStorageAppend into work for the appender. Anything
// the appender needs from the replica's locked state is resolved here: the
// staged snapshot and the nodes of remote responses.
func (r *replica) newAppendJob(m raftpb.Message) *appendJob {
	j := appendJobPool.Get().(*appendJob)
	j.r, j.msg = r, m
	if m.Snapshot != nil {
		j.staged = r.staged.take(m.Snapshot.Metadata.Index)
	}
	for _, resp := range m.Responses {
		if resp.To == uint64(r.id) {
			j.local = append(j.local, resp)
			continue
		}
		to, ok := r.nodeOf(ids.ReplicaID(resp.To))
		if !ok {
			r.h.stats.MessagesDropped.Add(1)
			continue
		}
		j.remote = append(j.remote, routedMessage{to: to, msg: transport.Message{Group: r.group, Msg: resp}})
	}
	return j
}
