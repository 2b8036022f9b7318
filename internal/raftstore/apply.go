package raftstore

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/confchange"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/storage"
	"github.com/nodedb/nodedb-cluster/statemachine"
)

// applyResult is the outcome of one of this node's proposals.
type applyResult struct {
	proposal uint64
	res      []byte
	err      error
}

// maxDedupRun bounds how many commands are handed to the state machine in
// one call; longer runs are split.
const maxDedupRun = 64

// applyInto applies committed entries into b: state-machine writes,
// exactly-once records, configuration changes and the new applied state go
// into one batch, so they become durable together. b is shared by the
// replicas a worker processes in one pass and committed once for all of them
// (it is indexed, so reads see earlier writes; the replicas' key ranges are
// disjoint). What must wait for that commit — answering proposals and reads,
// telling Raft the entries are applied, destroying a removed replica — is
// done by afterApply. Caller holds r.mu.
func (r *replica) applyInto(b *pebble.Batch, ents []raftpb.Entry) error {
	h := r.h
	var cmds []pendingCmd
	flushCmds := func() error {
		if len(cmds) == 0 {
			return nil
		}
		err := r.applyCommands(b, cmds)
		cmds = cmds[:0]
		return err
	}
	for i := range ents {
		e := &ents[i]
		switch e.Type {
		case raftpb.EntryNormal:
			if len(e.Data) == 0 {
				break // a new leader's empty entry
			}
			if e.Data[0] == kindTruncate {
				index, err := decodeTruncate(e.Data)
				if err != nil {
					r.skipMalformed(e.Index, err)
					break
				}
				// Entries at or below index are applied here: it is
				// below this entry's own index.
				r.truncAsked = max(r.truncAsked, min(index, e.Index-1))
				break
			}
			if e.Data[0] == kindExpireClients {
				x, err := decodeExpiry(e.Data)
				if err != nil {
					r.skipMalformed(e.Index, err)
					break
				}
				if err := flushCmds(); err != nil {
					return err
				}
				if err := r.applyExpiry(b, x); err != nil {
					return err
				}
				break
			}
			if e.Data[0] == kindIngest {
				if err := flushCmds(); err != nil {
					return err
				}
				if err := r.applyIngest(b, e); err != nil {
					return err
				}
				break
			}
			c, err := decodeCommand(e.Data)
			if err != nil {
				r.skipMalformed(e.Index, err)
				if node, id, ok := proposalOf(e.Data); ok && node == h.cfg.NodeID {
					r.results = append(r.results, applyResult{proposal: id, err: err})
				}
				break
			}
			if len(cmds) > 0 && (cmds[0].c.vshard != c.vshard || len(cmds) >= maxDedupRun) {
				if err := flushCmds(); err != nil {
					return err
				}
			}
			cmds = append(cmds, pendingCmd{c: c, index: e.Index})
		case raftpb.EntryConfChange, raftpb.EntryConfChangeV2:
			if err := flushCmds(); err != nil {
				return err
			}
			r.applyConfChange(e)
		}
		r.applied.Index, r.applied.Term = e.Index, e.Term
	}
	if err := flushCmds(); err != nil {
		return err
	}
	var err error
	if r.appliedBuf, err = storage.AppendAppliedState(b, r.group, &r.applied, r.appliedBuf); err != nil {
		return err
	}
	if index, term, ok := r.truncationPoint(); ok {
		if err := r.log.WriteTruncate(b, index, term); err != nil {
			return err
		}
		r.truncIndex, r.truncTerm = index, term
	}
	r.maybeProposeTruncation()
	return nil
}

// skipMalformed counts and logs a committed entry that failed to decode:
// every replica skips it alike, and the group goes on.
func (r *replica) skipMalformed(index uint64, err error) {
	r.h.stats.MalformedEntries.Add(1)
	r.h.log.Warn("skipping malformed entry", "group", uint64(r.group), "index", index, "err", err)
}

// maybeProposeTruncation keeps a healthy group's log short. Truncation by
// length alone (LogMaxEntries) keeps up to that many entries per group,
// whatever the number of groups: with many groups, entries outlive Pebble's
// memtables and are flushed and compacted before they are deleted. A leader
// knows how far each follower has the log; when every follower is active
// and replicating, entries up to the lowest of their match indexes serve no
// one, so the leader proposes a truncation entry there and every replica
// applies it to its own log. A follower that is lagging, probing, receiving
// a snapshot or silent blocks it, leaving the length rule in charge, so
// nobody is pushed into needing a snapshot. Caller holds r.mu.
func (r *replica) maybeProposeTruncation() {
	limit := r.h.cfg.LogTruncateEntries
	first, last := r.log.Bounds()
	applied := r.applied.Index
	if applied < first || applied-first+1 <= limit || (r.truncProposed != 0 && applied <= r.truncProposed) {
		return
	}
	st := r.rn.BasicStatus()
	if st.RaftState != raft.StateLeader || r.applied.Term != st.Term || st.LeadTransferee != 0 {
		return
	}
	index, healthy := applied, true
	r.rn.WithProgress(func(id uint64, _ raft.ProgressType, pr tracker.Progress) {
		if id == uint64(r.id) {
			return
		}
		if !pr.RecentActive || pr.State != tracker.StateReplicate || pr.Match < first {
			healthy = false
			return
		}
		index = min(index, pr.Match)
	})
	if !healthy || index < first+limit/2 {
		return
	}
	if err := r.rn.Propose(encodeTruncate(index)); err != nil {
		return // retried at a later apply
	}
	r.truncProposed = last
	r.h.stats.TruncationsProposed.Add(1)
}

// afterApply completes applyInto once its batch has committed. Caller holds
// r.mu.
func (r *replica) afterApply() error {
	h := r.h
	if r.truncIndex != 0 {
		r.log.DidTruncate(r.truncIndex, r.truncTerm)
		r.truncIndex, r.truncTerm = 0, 0
		h.stats.LogTruncations.Add(1)
	}
	r.appliedIndex.Store(r.applied.Index)
	for _, res := range r.results {
		if p := r.pending[res.proposal]; p != nil {
			delete(r.pending, res.proposal)
			if res.err != nil {
				h.stats.ProposalsFailed.Add(1)
			} else {
				h.stats.ProposalsOK.Add(1)
			}
			p.finish(res.res, res.err)
		}
	}
	clear(r.results)
	r.results = r.results[:0]
	r.sweepLost(r.applied.Index, ErrProposalDropped)
	for _, resp := range r.applyResps {
		_ = r.rn.Step(resp)
	}
	clear(r.applyResps)
	r.applyResps = r.applyResps[:0]
	r.completeReads(nil)
	if r.removed {
		return h.destroyLocked(r)
	}
	if r.rn.HasReady() {
		h.markReady(r)
	}
	return nil
}

// truncationPoint decides whether to truncate the log after this apply:
// when the log holds more than LogMaxEntries, everything applied except the
// newest LogKeepEntries goes. A follower that needs what was truncated gets a
// snapshot instead.
func (r *replica) truncationPoint() (index, term uint64, ok bool) {
	first, _ := r.log.Bounds()
	applied := r.applied.Index
	cfg := &r.h.cfg
	asked := r.truncAsked
	r.truncAsked = 0
	if applied < first || applied-first+1 <= cfg.LogMaxEntries {
		// Only a truncation entry applied in this pass can ask for one.
		if asked < first || asked > applied {
			return 0, 0, false
		}
		term, err := r.log.Term(asked)
		if err != nil {
			return 0, 0, false
		}
		return asked, term, true
	}
	index = applied - cfg.LogKeepEntries
	// A follower that is receiving a snapshot, or has just installed one
	// (Raft moves it to probing at Next = the snapshot's index + 1 as soon
	// as the stream is accepted, before the install), resumes from the log
	// right after the snapshot's index: truncating past it would make it
	// need another snapshot, and under sustained writes another, for as long
	// as writes outpace snapshots. Only recently active followers hold the
	// log back (a follower that stays silent for an election timeout stops
	// being one), and never beyond four times LogMaxEntries.
	if applied-first+1 <= 4*cfg.LogMaxEntries {
		r.rn.WithProgress(func(_ uint64, _ raft.ProgressType, pr tracker.Progress) {
			need := uint64(0)
			switch {
			case pr.State == tracker.StateSnapshot && pr.PendingSnapshot > 0:
				need = pr.PendingSnapshot
			case pr.State == tracker.StateProbe && pr.RecentActive && pr.Next > 0:
				need = pr.Next - 1
			default:
				return
			}
			if need < index {
				index = need
			}
		})
	}
	if asked <= applied {
		index = max(index, asked)
	}
	if index < first {
		return 0, 0, false
	}
	term, err := r.log.Term(index)
	if err != nil {
		return 0, 0, false
	}
	return index, term, true
}

type pendingCmd struct {
	c     command
	index uint64
	res   []byte
	err   error
	dup   bool
}

// applyCommands applies consecutive commands of one vShard with
// exactly-once semantics. Caller holds r.mu.
func (r *replica) applyCommands(b *pebble.Batch, cmds []pendingCmd) error {
	vs := cmds[0].c.vshard
	if want := int(r.valueCacheBytes.Load()); r.values == nil {
		r.values = storage.NewValueCache(want)
	} else if r.values.MaxBytes() != want {
		r.values.Resize(want)
	}
	var w storage.VShardWriter
	w.Reset(b, r.group, vs, r.values)
	w.Invalidates(r.readCache)
	if r.clients == nil {
		r.clients = dedupCache{}
	}
	dc := r.clients
	// Within one run the same (client, seq) can appear twice: a client that
	// retried before its first attempt was applied. The dedup check of the
	// second must see the record of the first, so the run is split there.
	start := 0
	for i := range cmds {
		c := &cmds[i]
		if c.c.client == 0 {
			continue
		}
		for j := start; j < i; j++ {
			if cmds[j].c.client == c.c.client && cmds[j].c.seq == c.c.seq && !cmds[j].dup && cmds[j].err == nil {
				if err := r.applyRun(b, &w, dc, cmds[start:i]); err != nil {
					return err
				}
				start = i
				break
			}
		}
		res, found, stale, err := dc.lookup(b, r.group, vs, c.c.client, c.c.seq)
		if err != nil {
			return err
		}
		switch {
		case stale:
			c.err = ErrStaleSequence
		case found:
			c.res, c.dup = res, true
		}
	}
	if err := r.applyRun(b, &w, dc, cmds[start:]); err != nil {
		return err
	}
	for i := range cmds {
		c := &cmds[i]
		if c.c.proposer == r.h.cfg.NodeID {
			r.results = append(r.results, applyResult{proposal: c.c.proposal, res: c.res, err: c.err})
		}
	}
	return nil
}

// applyRun hands the commands of run that are neither duplicates nor refused
// to the state machine, then records their results for exactly-once.
func (r *replica) applyRun(b *pebble.Batch, w *storage.VShardWriter, dc dedupCache, run []pendingCmd) error {
	// The scratch slices are the replica's: each run ends before the next.
	smCmds, idx := r.runCmds[:0], r.runIdx[:0]
	defer func() {
		clear(smCmds)
		r.runCmds, r.runIdx = smCmds[:0], idx[:0]
	}()
	for i := range run {
		c := &run[i]
		if c.dup || c.err != nil {
			continue
		}
		smCmds = append(smCmds, statemachine.Command{Index: c.index, Timestamp: c.c.timestamp, Data: c.c.payload})
		idx = append(idx, i)
	}
	if len(smCmds) == 0 {
		return nil
	}
	results := slices.Grow(r.runResults[:0], len(smCmds))[:len(smCmds)]
	defer func() {
		clear(results)
		r.runResults = results[:0]
	}()
	if err := r.sm.Apply(w, run[0].c.vshard, smCmds, results); err != nil {
		return fmt.Errorf("group %s: state machine apply: %w", r.group, err)
	}
	for k, i := range idx {
		c := &run[i]
		c.res = results[k]
		if c.c.client == 0 {
			continue
		}
		if err := dc.record(b, r.group, c.c.vshard, c.c.client, c.c.seq, c.c.ackedBelow, c.c.timestamp, c.res); err != nil {
			return fmt.Errorf("group %s: record exactly-once result: %w", r.group, err)
		}
	}
	return nil
}

// applyConfChange validates and applies a configuration change entry. A
// change that fails validation is skipped identically by every replica (the
// decision depends only on the entry and the applied state). Caller holds
// r.mu.
func (r *replica) applyConfChange(e *raftpb.Entry) {
	var cc raftpb.ConfChangeV2
	if e.Type == raftpb.EntryConfChange {
		var v1 raftpb.ConfChange
		if err := v1.Unmarshal(e.Data); err != nil {
			r.h.stats.MalformedEntries.Add(1)
			return
		}
		cc = v1.AsV2()
	} else if err := cc.Unmarshal(e.Data); err != nil {
		r.h.stats.MalformedEntries.Add(1)
		return
	}
	var ctx confChangeContext
	if len(cc.Context) > 0 {
		var err error
		if ctx, err = decodeConfChangeContext(cc.Context); err != nil {
			r.h.stats.MalformedEntries.Add(1)
			r.h.log.Warn("skipping configuration change with a malformed context", "group", uint64(r.group), "index", e.Index, "err", err)
			return
		}
	}
	answer := func(err error) {
		if ctx.proposer == r.h.cfg.NodeID && ctx.proposal != 0 {
			r.results = append(r.results, applyResult{proposal: ctx.proposal, err: err})
		}
	}
	if err := validateConfChange(&r.applied, cc, ctx.added); err != nil {
		r.h.log.Warn("refusing configuration change", "group", uint64(r.group), "index", e.Index, "err", err)
		answer(fmt.Errorf("%w: %v", ErrConfChangeRejected, err))
		return
	}
	cs := r.rn.ApplyConfChange(cc)
	r.applied.ConfState = *cs
	r.applied.Replicas = placeReplicas(r.applied.Replicas, ctx.added, cs)
	for _, a := range ctx.added {
		r.applied.MaxReplicaID = max(r.applied.MaxReplicaID, a.Replica)
	}
	if !inConfState(cs, r.id) {
		r.removed = true
	}
	answer(nil)
}

// validateConfChange checks a change against the applied state: every added
// replica must come with its node, a replica ID new to the group must exceed
// every ID the group ever had (IDs are never reused), no node may hold two
// replicas of the group, and the change must be one Raft accepts (Raft
// panics on an invalid one at apply time, on every replica at once).
func validateConfChange(st *storage.AppliedState, cc raftpb.ConfChangeV2, added []replicaPlacement) error {
	placed := map[ids.ReplicaID]ids.NodeID{}
	for _, d := range st.Replicas {
		placed[d.Replica] = d.Node
	}
	newNodes := map[ids.NodeID]ids.ReplicaID{}
	for _, d := range st.Replicas {
		newNodes[d.Node] = d.Replica
	}
	for _, a := range added {
		if a.Replica == 0 || a.Node == 0 {
			return errors.New("zero replica or node ID")
		}
	}
	for _, ch := range cc.Changes {
		id := ids.ReplicaID(ch.NodeID)
		switch ch.Type {
		case raftpb.ConfChangeAddNode, raftpb.ConfChangeAddLearnerNode:
			if _, ok := placed[id]; ok {
				continue // promotion or demotion of an existing member
			}
			var node ids.NodeID
			for _, a := range added {
				if a.Replica == id {
					node = a.Node
				}
			}
			if node == 0 {
				return fmt.Errorf("replica %s added without a node", id)
			}
			if id <= st.MaxReplicaID {
				return fmt.Errorf("replica %s reuses an ID (group has had up to %s)", id, st.MaxReplicaID)
			}
			if other, ok := newNodes[node]; ok {
				return fmt.Errorf("%s already holds replica %s of the group", node, other)
			}
			newNodes[node] = id
			placed[id] = node
		case raftpb.ConfChangeRemoveNode:
		default:
			return fmt.Errorf("unsupported change type %s", ch.Type)
		}
	}
	chg := confchange.Changer{Tracker: tracker.MakeProgressTracker(1, 0), LastIndex: 1}
	cfg, trk, err := confchange.Restore(chg, st.ConfState)
	if err != nil {
		return fmt.Errorf("restore configuration: %w", err)
	}
	chg.Tracker.Config, chg.Tracker.Progress = cfg, trk
	if cc.LeaveJoint() {
		_, _, err = chg.LeaveJoint()
	} else if autoLeave, ok := cc.EnterJoint(); ok {
		_, _, err = chg.EnterJoint(autoLeave, cc.Changes...)
	} else {
		_, _, err = chg.Simple(cc.Changes...)
	}
	return err
}

// placeReplicas returns the replica list for configuration cs: existing and
// added placements of every replica cs mentions.
func placeReplicas(cur []storage.ReplicaDesc, added []replicaPlacement, cs *raftpb.ConfState) []storage.ReplicaDesc {
	var out []storage.ReplicaDesc
	seen := map[ids.ReplicaID]bool{}
	add := func(id ids.ReplicaID, n ids.NodeID) {
		if !seen[id] && inConfState(cs, id) {
			seen[id] = true
			out = append(out, storage.ReplicaDesc{Replica: id, Node: n})
		}
	}
	for _, d := range cur {
		add(d.Replica, d.Node)
	}
	for _, a := range added {
		add(a.Replica, a.Node)
	}
	return out
}

func inConfState(cs *raftpb.ConfState, id ids.ReplicaID) bool {
	for _, l := range [][]uint64{cs.Voters, cs.Learners, cs.VotersOutgoing, cs.LearnersNext} {
		for _, v := range l {
			if v == uint64(id) {
				return true
			}
		}
	}
	return false
}
