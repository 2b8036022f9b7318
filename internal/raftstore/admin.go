package raftstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/storage"
)

// GroupStatus describes this node's replica of a group.
type GroupStatus struct {
	Group      ids.GroupID
	Replica    ids.ReplicaID
	State      string // leader, follower, candidate, pre-candidate
	Leader     ids.ReplicaID
	LeaderNode ids.NodeID
	Term       uint64
	Commit     uint64
	Applied    uint64
	FirstIndex uint64
	LastIndex  uint64
	// Config is the applied configuration: Raft's ConfState and where each
	// replica lives.
	Config storage.AppliedState
	// Progress of each peer, known only on the leader.
	Progress map[ids.ReplicaID]PeerProgress
	// ConfChangePending reports a configuration change in this replica's
	// log that it has not applied yet, or, on a leader, that it has not yet
	// applied an entry of its own term (Raft cannot tell then whether an
	// earlier change is pending). While it holds, a new change proposed to
	// the leader waits (see ChangeReplicas), and whoever decides from the
	// applied configuration must wait too: it is about to change.
	ConfChangePending bool
}

// PeerProgress is the leader's view of one replica.
type PeerProgress struct {
	Match        uint64
	Next         uint64
	State        string // probe, replicate, snapshot
	Learner      bool
	RecentActive bool
}

// Status returns the status of this node's replica of g. It waits for the
// replica's current processing, if any, to finish.
func (h *Host) Status(g ids.GroupID) (GroupStatus, error) {
	r := h.replica(g)
	if r == nil {
		return GroupStatus{}, ErrGroupNotFound
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.destroyed {
		return GroupStatus{}, ErrGroupNotFound
	}
	st := r.rn.Status()
	first, last := r.log.Bounds()
	leaderNode, _ := r.nodeOf(ids.ReplicaID(st.Lead))
	gs := GroupStatus{
		Group:      g,
		Replica:    r.id,
		State:      stateName(st.RaftState),
		Leader:     ids.ReplicaID(st.Lead),
		LeaderNode: leaderNode,
		Term:       st.Term,
		Commit:     st.Commit,
		Applied:    r.applied.Index,
		FirstIndex: first,
		LastIndex:  last,
		Config:     r.applied.Clone(),
	}
	gs.ConfChangePending = r.lastConfIndex > r.applied.Index ||
		(st.RaftState == raft.StateLeader && r.applied.Term < st.Term)
	if len(st.Progress) > 0 {
		gs.Progress = make(map[ids.ReplicaID]PeerProgress, len(st.Progress))
		for id, pr := range st.Progress {
			gs.Progress[ids.ReplicaID(id)] = PeerProgress{
				Match:        pr.Match,
				Next:         pr.Next,
				State:        progressName(pr.State),
				Learner:      pr.IsLearner,
				RecentActive: pr.RecentActive,
			}
		}
	}
	return gs, nil
}

func stateName(s raft.StateType) string {
	switch s {
	case raft.StateLeader:
		return "leader"
	case raft.StateFollower:
		return "follower"
	case raft.StateCandidate:
		return "candidate"
	case raft.StatePreCandidate:
		return "pre-candidate"
	}
	return s.String()
}

func progressName(s tracker.StateType) string {
	switch s {
	case tracker.StateProbe:
		return "probe"
	case tracker.StateReplicate:
		return "replicate"
	case tracker.StateSnapshot:
		return "snapshot"
	}
	return s.String()
}

// Leader returns the leader this replica knows for g and the node it lives
// on (zero if none).
func (h *Host) Leader(g ids.GroupID) (ids.ReplicaID, ids.NodeID, error) {
	r := h.replica(g)
	if r == nil {
		return 0, 0, ErrGroupNotFound
	}
	return ids.ReplicaID(r.leader.Load()), ids.NodeID(r.leaderNode.Load()), nil
}

// IsLeader reports whether this node's replica of g is its leader.
func (h *Host) IsLeader(g ids.GroupID) bool {
	r := h.replica(g)
	return r != nil && r.isLeader.Load()
}

// Campaign makes this node's replica of g start an election now.
func (h *Host) Campaign(g ids.GroupID) error {
	r := h.replica(g)
	if r == nil {
		return ErrGroupNotFound
	}
	r.enqueueCtrl(func() { _ = r.rn.Campaign() })
	return nil
}

// TransferLeadership asks the leader of g (which must be this node's
// replica) to hand leadership to replica to, and waits until it has.
func (h *Host) TransferLeadership(ctx context.Context, g ids.GroupID, to ids.ReplicaID) error {
	r := h.replica(g)
	if r == nil {
		return ErrGroupNotFound
	}
	if ids.ReplicaID(r.leader.Load()) == to {
		return nil
	}
	if !r.isLeader.Load() {
		return r.notLeader()
	}
	started := make(chan struct{})
	r.enqueueCtrl(func() {
		r.rn.TransferLeader(uint64(to))
		close(started)
	})
	t := time.NewTicker(h.cfg.TickInterval)
	defer t.Stop()
	for {
		if ids.ReplicaID(r.leader.Load()) == to {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("transfer leadership of %s to %s: %w", g, to, ctx.Err())
		case <-h.stopc:
			return ErrStopped
		case <-t.C:
		}
		select {
		case <-started:
		default:
			continue
		}
		// Raft gives up a transfer whose target has not caught up after an
		// election timeout, and a new election ends it too; without this
		// check the caller would wait for its deadline.
		r.mu.Lock()
		st := r.rn.BasicStatus()
		gone := r.destroyed
		r.mu.Unlock()
		switch {
		case gone:
			return ErrGroupNotFound
		case ids.ReplicaID(st.Lead) == to:
			return nil
		case st.RaftState == raft.StateLeader && st.LeadTransferee == 0:
			return fmt.Errorf("transfer leadership of %s to %s: %w (leadership stays here)", g, to, ErrTransferAborted)
		case st.RaftState != raft.StateLeader && st.Lead != 0:
			return fmt.Errorf("transfer leadership of %s to %s: %w (%s was elected)", g, to, ErrTransferAborted, ids.ReplicaID(st.Lead))
		}
	}
}

// ChangeOp is the kind of one replica change.
type ChangeOp int

const (
	// AddVoter adds a new voting replica or promotes a learner.
	AddVoter ChangeOp = iota + 1
	// AddLearner adds a non-voting replica (or demotes a voter).
	AddLearner
	// RemoveReplica removes a replica from the group.
	RemoveReplica
)

// ReplicaChange is one change to a group's membership.
type ReplicaChange struct {
	Op      ChangeOp
	Replica ids.ReplicaID
	// Node hosts the replica; required when the replica is new to the group.
	Node ids.NodeID
}

// ChangeReplicas changes the membership of g through Raft and waits until
// the change is applied on this node. One change is applied directly; several
// (for instance promoting a learner and removing the voter it replaces) go
// through joint consensus, and ChangeReplicas waits until the group has left
// the joint configuration. Must be called on the leader. A replica new to the
// group must have been created on its node (CreateReplica) and must have an
// ID larger than any the group ever had.
func (h *Host) ChangeReplicas(ctx context.Context, g ids.GroupID, changes []ReplicaChange) error {
	r := h.replica(g)
	if r == nil {
		return ErrGroupNotFound
	}
	if !r.isLeader.Load() {
		return r.notLeader()
	}
	if len(changes) == 0 {
		return fmt.Errorf("%w: no changes", ErrConfChangeRejected)
	}
	pr := newProposal(h.nextProposal.Add(1))
	cc := &raftpb.ConfChangeV2{Transition: raftpb.ConfChangeTransitionAuto}
	cctx := confChangeContext{proposer: h.cfg.NodeID, proposal: pr.id}
	for _, c := range changes {
		var t raftpb.ConfChangeType
		switch c.Op {
		case AddVoter:
			t = raftpb.ConfChangeAddNode
		case AddLearner:
			t = raftpb.ConfChangeAddLearnerNode
		case RemoveReplica:
			t = raftpb.ConfChangeRemoveNode
		default:
			return fmt.Errorf("%w: unknown change op %d", ErrConfChangeRejected, c.Op)
		}
		if c.Replica == 0 {
			return fmt.Errorf("%w: replica ID 0", ErrConfChangeRejected)
		}
		cc.Changes = append(cc.Changes, raftpb.ConfChangeSingle{Type: t, NodeID: uint64(c.Replica)})
		if c.Node != 0 && c.Op != RemoveReplica {
			cctx.added = append(cctx.added, replicaPlacement{Replica: c.Replica, Node: c.Node})
		}
	}
	cc.Context = encodeConfChangeContext(&cctx)
	pr.cc = cc
	if _, err := h.await(ctx, r, pr); err != nil {
		return err
	}
	if len(changes) == 1 {
		return nil
	}
	// Joint consensus: Raft leaves the joint configuration on its own
	// (ConfChangeTransitionAuto); wait for that to be applied.
	t := time.NewTicker(h.cfg.TickInterval / 4)
	defer t.Stop()
	for {
		st, err := h.Status(g)
		if errors.Is(err, ErrGroupNotFound) {
			return nil // this replica was removed by the change and is gone
		}
		if err != nil {
			return err
		}
		if len(st.Config.ConfState.VotersOutgoing) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: waiting to leave joint configuration: %w", ErrOutcomeUnknown, ctx.Err())
		case <-h.stopc:
			return ErrStopped
		case <-t.C:
		}
	}
}
