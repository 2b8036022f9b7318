package raftstore

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/failpoint"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/storage"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// The appender makes Raft log writes durable. It runs beside the scheduler:
// while one batch of appends is being synced, workers keep stepping messages,
// applying committed entries and queueing the next appends, which the
// appender then writes together — one batch and at most one fsync for every
// group whose appends were queued (group commit). Only after that commit are
// the writes' responses released: acknowledgements and votes to other nodes,
// and to Raft itself the news that the entries are stable.

// appendJob is one replica's MsgStorageAppend, or a replica's destruction.
type appendJob struct {
	r      *replica
	msg    raftpb.Message
	staged *stagedSnapshot  // data of msg.Snapshot
	local  []raftpb.Message // responses to the replica itself
	remote []routedMessage  // responses to other nodes
	// destroy, when set, replaces msg: delete the replica's data and
	// tombstone its ID, then signal done.
	destroy bool
	done    chan error
	queued  time.Time // when submit queued it
}

// appendJobPool recycles append jobs and their response slices: a busy node
// makes one per replica per pass.
var appendJobPool = sync.Pool{New: func() any { return new(appendJob) }}

// release returns j to appendJobPool once the appender has written it and
// copied its responses out. Destruction jobs are not pooled.
func (j *appendJob) release() {
	if j.destroy {
		return
	}
	clear(j.local)
	clear(j.remote)
	*j = appendJob{local: j.local[:0], remote: j.remote[:0]}
	appendJobPool.Put(j)
}

type appender struct {
	h      *Host
	mu     sync.Mutex
	queue  []*appendJob
	signal chan struct{}
	acks   map[ackKey]int // see addResponse; reused by each write
	out    outbox         // responses released by a write; reused by each
	// writingSince is when the write in progress began (Unix nanoseconds),
	// 0 between writes: how long the disk has kept it (diskstall.go).
	writingSince atomic.Int64
}

// ackKey identifies the acknowledgements of one follower replica to one
// leader term.
type ackKey struct {
	node  ids.NodeID
	group ids.GroupID
	to    uint64
	term  uint64
}

// addResponse queues a released response, keeping only the highest of a
// replica's acknowledgements (non-rejecting MsgAppResp) to the same leader
// and term in one batch: an acknowledgement of index i says the follower's log
// matches the leader's up to i, so it implies every lower one, and the leader
// gains nothing from the others but the work of stepping them. A follower
// that received several appends (or an append and commit notices) since its
// last write sends one acknowledgement instead of several.
func (a *appender) addResponse(out *outbox, rm routedMessage) {
	m := &rm.msg.Msg
	if m.Type != raftpb.MsgAppResp || m.Reject {
		out.add(rm.to, rm.msg)
		return
	}
	k := ackKey{node: rm.to, group: rm.msg.Group, to: m.To, term: m.Term}
	if i, ok := a.acks[k]; ok {
		prev := &(*out)[rm.to][i]
		if m.Index > prev.Msg.Index {
			*prev = rm.msg
		}
		a.h.stats.AcksCoalesced.Add(1)
		return
	}
	out.add(rm.to, rm.msg)
	a.acks[k] = len((*out)[rm.to]) - 1
}

func (a *appender) submit(jobs []*appendJob) {
	if len(jobs) == 0 {
		return
	}
	now := time.Now()
	for _, j := range jobs {
		j.queued = now
	}
	a.mu.Lock()
	a.queue = append(a.queue, jobs...)
	a.mu.Unlock()
	select {
	case a.signal <- struct{}{}:
	default:
	}
}

// run writes queued jobs until the host stops.
func (a *appender) run() {
	h := a.h
	defer h.wg.Done()
	batch := h.eng.DB().NewBatch()
	defer batch.Close()
	var jobs []*appendJob
	for {
		select {
		case <-h.stopc:
			a.mu.Lock()
			for _, j := range a.queue {
				if j.done != nil {
					j.done <- ErrStopped
				}
			}
			a.queue = nil
			a.mu.Unlock()
			return
		case <-a.signal:
		}
		a.mu.Lock()
		jobs, a.queue = a.queue, jobs[:0]
		a.mu.Unlock()
		if len(jobs) == 0 {
			continue
		}
		a.writingSince.Store(time.Now().UnixNano())
		err := a.write(batch, jobs)
		a.writingSince.Store(0)
		if err != nil {
			for _, j := range jobs {
				if j.done != nil {
					j.done <- err
				}
			}
			h.fatal(err)
			return
		}
		durable := time.Now()
		for _, j := range jobs {
			if !j.destroy {
				h.latencies.append.Observe(durable.Sub(j.queued).Seconds())
			}
			j.release()
		}
		clear(jobs)
		batch.Reset()
	}
}

// write stages every job into one batch, commits it with at most one fsync,
// then releases the jobs' responses.
func (a *appender) write(b *pebble.Batch, jobs []*appendJob) error {
	h := a.h
	sync := false
	// Group by group, keeping each group's jobs in order: the batch's keys
	// then come in key order, which makes Pebble's memtable insertions
	// cheaper (see storage.KeyOrder). Jobs of different groups touch
	// disjoint key ranges, so their order does not matter.
	slices.SortStableFunc(jobs, func(x, y *appendJob) int { return cmp.Compare(x.r.group, y.r.group) })
	for _, j := range jobs {
		r := j.r
		if j.destroy {
			if err := storage.WriteReplicaDestroy(b, r.group, r.id+1); err != nil {
				return fmt.Errorf("destroy replica %s of %s: %w", r.id, r.group, err)
			}
			sync = true
			continue
		}
		m := &j.msg
		if m.Snapshot != nil {
			// The snapshot's table is ingested now, between the writes
			// queued before it (committed first, so that it supersedes
			// them) and those after it (which must survive it). Nothing is
			// acknowledged before the final commit below.
			if !b.Empty() {
				if err := b.Commit(pebble.NoSync); err != nil {
					return fmt.Errorf("commit raft log batch: %w", err)
				}
				b.Reset()
			}
			if err := r.installSnapshot(j.staged, m.Snapshot); err != nil {
				return fmt.Errorf("group %s: install snapshot: %w", r.group, err)
			}
			sync = true
		}
		if len(m.Entries) > 0 {
			if err := r.log.WriteAppend(b, m.Entries); err != nil {
				return err
			}
			sync = true
		}
		if hs := hardStateOf(m); !raft.IsEmptyHardState(hs) {
			// A new term or vote must be durable before votes are sent. A
			// commit index is not written for its own sake, even beside new
			// entries: Raft's safety does not rest on it, and at load it is
			// raised to the applied index (storage.LoadRaftLog), which the
			// apply path writes with the state it covers. Skipping it spares
			// every replica a memtable insertion and a WAL record per round.
			prev := r.log.HardState()
			termOrVote := hs.Term != prev.Term || hs.Vote != prev.Vote
			if termOrVote || m.Snapshot != nil {
				if err := r.log.WriteHardState(b, hs); err != nil {
					return err
				}
			}
			if termOrVote {
				sync = true
			}
		}
	}
	if !b.Empty() {
		opt := pebble.NoSync
		if sync {
			opt = pebble.Sync
		}
		if err := failpoint.Inject("raft.before-log-commit"); err != nil {
			return fmt.Errorf("commit raft log batch: %w", err)
		}
		if err := b.Commit(opt); err != nil {
			return fmt.Errorf("commit raft log batch: %w", err)
		}
		if err := failpoint.Inject("raft.after-log-commit"); err != nil {
			return fmt.Errorf("after the raft log batch: %w", err)
		}
		if sync {
			h.stats.SyncedCommits.Add(1)
		} else {
			h.stats.UnsyncedCommits.Add(1)
		}
	}
	h.stats.AppendBatches.Add(1)
	out := &a.out
	for _, j := range jobs {
		r := j.r
		if j.destroy {
			j.done <- nil
			continue
		}
		m := &j.msg
		if m.Snapshot != nil {
			r.log.DidInstallSnapshot(m.Snapshot.Metadata.Index, m.Snapshot.Metadata.Term)
			h.stats.SnapshotsApplied.Add(1)
			snap, staged := *m.Snapshot, j.staged
			r.enqueueCtrl(func() { r.didInstall(&snap, staged) })
		}
		r.log.DidAppend(m.Entries)
		if hs := hardStateOf(m); !raft.IsEmptyHardState(hs) {
			r.log.DidWriteHardState(hs)
		}
		if len(j.local) > 0 {
			r.inboxMu.Lock()
			for _, resp := range j.local {
				r.inMsgs = append(r.inMsgs, inboundMsg{msg: resp, local: true})
			}
			r.inboxMu.Unlock()
			h.markReady(r)
		}
		for _, rm := range j.remote {
			a.addResponse(out, rm)
		}
	}
	clear(a.acks)
	h.send(*out)
	out.reset()
	return nil
}

// routedMessage is a message whose destination node is resolved.
type routedMessage struct {
	to  ids.NodeID
	msg transport.Message
}

func hardStateOf(m *raftpb.Message) raftpb.HardState {
	return raftpb.HardState{Term: m.Term, Vote: m.Vote, Commit: m.Commit}
}
