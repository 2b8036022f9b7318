package raftstore

import (
	"fmt"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

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
}

type appender struct {
	h      *Host
	mu     sync.Mutex
	queue  []*appendJob
	signal chan struct{}
}

func (a *appender) submit(jobs []*appendJob) {
	if len(jobs) == 0 {
		return
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
		if err := a.write(batch, jobs); err != nil {
			for _, j := range jobs {
				if j.done != nil {
					j.done <- err
				}
			}
			h.fatal(err)
			return
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
			if err := r.stageInstall(b, j.staged, m.Snapshot); err != nil {
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
			// commit index alone is not written at all unless other writes
			// of the group go into this batch: Raft's safety does not rest on
			// it, and at load it is raised to the applied index. Skipping it
			// spares followers a write for every commit notice.
			prev := r.log.HardState()
			termOrVote := hs.Term != prev.Term || hs.Vote != prev.Vote
			if termOrVote || len(m.Entries) > 0 || m.Snapshot != nil {
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
		if err := b.Commit(opt); err != nil {
			return fmt.Errorf("commit raft log batch: %w", err)
		}
		if sync {
			h.stats.SyncedCommits.Add(1)
		} else {
			h.stats.UnsyncedCommits.Add(1)
		}
	}
	h.stats.AppendBatches.Add(1)
	var out outbox
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
			out.add(rm.to, rm.msg)
		}
	}
	h.send(out)
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
