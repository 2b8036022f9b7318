package raftstore

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// Proposal is a command for one vShard of a group.
type Proposal struct {
	// VShard is the vShard the command belongs to.
	VShard uint32
	// Client and Seq identify the command for exactly-once application: a
	// command whose (Client, Seq) was already applied in this vShard is not
	// applied again; the first application's result is returned instead.
	// Client 0 disables deduplication. The record of a client that has not
	// written to the vShard for Config.ClientIdleExpiry is dropped, after
	// which a retry applies again: stop retrying well before that.
	Client uint64
	Seq    uint64
	// AckedBelow is the client's promise that it will never retry a sequence
	// below it, which lets the vShard forget those records.
	AckedBelow uint64
	// Payload is handed to the state machine.
	Payload []byte
}

// proposal tracks one proposal from the proposer's call until its outcome.
type proposal struct {
	id    uint64
	data  []byte               // entry data of a command
	cc    *raftpb.ConfChangeV2 // or a configuration change
	index uint64               // log index once appended
	done  chan struct{}
	// notify, when not nil, is called once done is closed (StartPropose);
	// it must not block.
	notify func()
	start  time.Time // when a command was queued (Propose, StartPropose)
	res    []byte
	err    error
	fin    atomic.Bool
}

func newProposal(id uint64) *proposal {
	return &proposal{id: id, done: make(chan struct{})}
}

// finish records the outcome; only the first call has an effect.
func (p *proposal) finish(res []byte, err error) {
	if p.fin.CompareAndSwap(false, true) {
		p.res, p.err = res, err
		close(p.done)
		if p.notify != nil {
			p.notify()
		}
	}
}

// Propose replicates a command through group g and returns the state
// machine's result once the command is applied on this node (which implies it
// is durable on a quorum). It must be called on the group's leader; other
// replicas answer *NotLeaderError with the leader they know.
func (h *Host) Propose(ctx context.Context, g ids.GroupID, p Proposal) ([]byte, error) {
	pr, err := h.propose(g, p, nil)
	if err != nil {
		return nil, err
	}
	if err := h.waitProposal(ctx, pr.done); err != nil {
		return nil, err
	}
	return h.outcome(pr)
}

// PendingProposal is a proposal started by StartPropose.
type PendingProposal struct{ pr *proposal }

// Done is closed once the proposal's outcome is known (FinishPropose).
func (p *PendingProposal) Done() <-chan struct{} { return p.pr.done }

// StartPropose starts a proposal, as Propose does, without waiting for its
// outcome: one goroutine can have many proposals in flight without a
// goroutine blocked for each. notify, when not nil, is called once Done is
// closed, on whichever goroutine decided the outcome (a Raft worker,
// usually): it must not block. An error here means nothing was proposed. A
// proposal whose outcome is never collected still applies (or not) as any
// other; a caller that stops waiting must treat its outcome as unknown.
func (h *Host) StartPropose(g ids.GroupID, p Proposal, notify func()) (*PendingProposal, error) {
	pr, err := h.propose(g, p, notify)
	if err != nil {
		return nil, err
	}
	return &PendingProposal{pr: pr}, nil
}

// FinishPropose returns the outcome of p, which must be done: the state
// machine's result, or why the command was not (or may not have been)
// applied, with the errors Propose gives.
func (h *Host) FinishPropose(p *PendingProposal) ([]byte, error) {
	select {
	case <-p.pr.done:
	default:
		return nil, ErrProposalNotDone
	}
	return h.outcome(p.pr)
}

// propose queues a command for g's next pass (Propose, StartPropose).
func (h *Host) propose(g ids.GroupID, p Proposal, notify func()) (*proposal, error) {
	if len(p.Payload) > h.cfg.MaxProposalBytes {
		return nil, fmt.Errorf("%w: %d bytes > %d", ErrTooLarge, len(p.Payload), h.cfg.MaxProposalBytes)
	}
	if h.stopping.Load() {
		return nil, ErrStopped
	}
	r := h.replica(g)
	if r == nil {
		return nil, ErrGroupNotFound
	}
	if !r.isLeader.Load() {
		return nil, r.notLeader()
	}
	pr := newProposal(h.nextProposal.Add(1))
	pr.notify = notify
	c := command{
		proposer:   h.cfg.NodeID,
		proposal:   pr.id,
		timestamp:  h.cfg.Now().UnixNano(),
		vshard:     p.VShard,
		client:     p.Client,
		seq:        p.Seq,
		ackedBelow: p.AckedBelow,
		payload:    p.Payload,
	}
	pr.data = encodeCommand(make([]byte, 0, commandHeaderLen+len(p.Payload)), &c)
	pr.start = time.Now()
	h.enqueue(r, pr)
	return pr, nil
}

// outcome returns the outcome of pr, which is done, and records an applied
// command's latency.
func (h *Host) outcome(pr *proposal) ([]byte, error) {
	if pr.err == nil {
		h.latencies.proposal.Observe(time.Since(pr.start).Seconds())
	}
	return pr.res, pr.err
}

// enqueue queues pr for r's next pass.
func (h *Host) enqueue(r *replica, pr *proposal) {
	r.inboxMu.Lock()
	r.inProps = append(r.inProps, pr)
	r.inboxMu.Unlock()
	h.markReady(r)
}

// waitProposal waits for the outcome of a queued proposal. A proposal once
// queued may reach the log and commit on the other replicas even if this
// host stops before it knows, so stopping makes the outcome unknown rather
// than ErrStopped, which callers take to mean that nothing happened.
func (h *Host) waitProposal(ctx context.Context, done <-chan struct{}) error {
	err := h.waitCtx(ctx, done)
	if errors.Is(err, ErrStopped) {
		return fmt.Errorf("%w: %v", ErrOutcomeUnknown, err)
	}
	return err
}

func (h *Host) await(ctx context.Context, r *replica, pr *proposal) ([]byte, error) {
	h.enqueue(r, pr)
	if err := h.waitProposal(ctx, pr.done); err != nil {
		return nil, err
	}
	return pr.res, pr.err
}

// noteConfChanges records the index of the last configuration change among
// ents, entries going into the log. Caller holds r.mu.
func (r *replica) noteConfChanges(ents []raftpb.Entry) {
	for i := range ents {
		if t := ents[i].Type; t == raftpb.EntryConfChange || t == raftpb.EntryConfChangeV2 {
			r.lastConfIndex = max(r.lastConfIndex, ents[i].Index)
		}
	}
}

// stepProposals hands queued proposals to Raft. Caller holds r.mu.
func (r *replica) stepProposals(props []*proposal) {
	if len(r.heldConfChanges) > 0 {
		props = append(r.heldConfChanges, props...)
		r.heldConfChanges = nil
	}
	if len(props) == 0 {
		return
	}
	st := r.rn.BasicStatus()
	if st.RaftState != raft.StateLeader {
		for _, p := range props {
			p.finish(nil, r.notLeader())
		}
		return
	}
	ents := make([]raftpb.Entry, 0, len(props))
	for _, p := range props {
		if p.cc != nil {
			if r.applied.Term < st.Term {
				// A new leader refuses configuration changes until it
				// has applied an entry of its own term (Raft cannot
				// know yet whether an earlier change is still pending).
				// Hold the change rather than fail it: it is proposed
				// on the first processing after that entry applies.
				r.heldConfChanges = append(r.heldConfChanges, p)
				continue
			}
			r.stepConfChange(p)
			continue
		}
		ents = append(ents, raftpb.Entry{Data: p.data})
		r.pending[p.id] = p
		r.stepped = append(r.stepped, p)
	}
	if len(ents) == 0 {
		return
	}
	err := r.rn.Step(raftpb.Message{Type: raftpb.MsgProp, From: uint64(r.id), Entries: ents})
	if err != nil {
		// Refused as a whole: too much uncommitted data, or leadership is
		// being transferred.
		if errors.Is(err, raft.ErrProposalDropped) {
			err = ErrProposalDropped
		}
		for _, p := range props {
			if p.cc == nil {
				delete(r.pending, p.id)
				p.finish(nil, err)
			}
		}
		r.stepped = r.stepped[:0]
	}
}

func (r *replica) stepConfChange(p *proposal) {
	if err := r.rn.ProposeConfChange(*p.cc); err != nil {
		p.finish(nil, fmt.Errorf("%w: %v", ErrConfChangeRejected, err))
		return
	}
	r.pending[p.id] = p
	r.stepped = append(r.stepped, p)
}

// trackAppended notes the log index of this node's proposals in the entries
// Raft is about to persist, and fails every proposal stepped just now that
// Raft silently replaced (it turns a configuration change it refuses into an
// empty entry). Caller holds r.mu.
func (r *replica) trackAppended(ents []raftpb.Entry) {
	r.noteConfChanges(ents)
	if len(r.pending) > 0 {
		for i := range ents {
			e := &ents[i]
			var node ids.NodeID
			var id uint64
			var ok bool
			switch e.Type {
			case raftpb.EntryNormal:
				node, id, ok = proposalOf(e.Data)
			case raftpb.EntryConfChangeV2:
				var cc raftpb.ConfChangeV2
				if cc.Unmarshal(e.Data) == nil {
					node, id, ok = proposalOf(cc.Context)
				}
			}
			if !ok || node != r.h.cfg.NodeID {
				continue
			}
			if p := r.pending[id]; p != nil && p.index == 0 {
				p.index = e.Index
				r.indexed = append(r.indexed, p)
			}
		}
	}
	for _, p := range r.stepped {
		if p.index == 0 {
			delete(r.pending, p.id)
			if p.cc != nil {
				p.finish(nil, fmt.Errorf("%w: another configuration change is in progress", ErrConfChangeRejected))
			} else {
				p.finish(nil, ErrProposalDropped)
			}
		}
	}
	r.stepped = r.stepped[:0]
}

// sweepLost fails proposals whose log index has been applied without their
// entry: a new leader overwrote them, so they can never be applied. Caller
// holds r.mu, after delivering the results of the applied entries.
func (r *replica) sweepLost(applied uint64, err error) {
	i := 0
	for ; i < len(r.indexed) && r.indexed[i].index <= applied; i++ {
		p := r.indexed[i]
		if r.pending[p.id] == p {
			delete(r.pending, p.id)
			p.finish(nil, err)
		}
	}
	if i > 0 {
		r.indexed = append(r.indexed[:0], r.indexed[i:]...)
	}
}
