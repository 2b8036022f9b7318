package raftstore

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/storage"
	"github.com/nodedb/nodedb-cluster/statemachine"
)

// replica is this node's member of one group.
//
// Locking: mu guards the RawNode and everything below it; a worker holds it
// while it steps the replica and handles its Ready. The appender never takes
// it: what it needs is resolved into its job, and what it reports back goes
// through the inbox, which has its own small lock so that senders
// (transport, proposers, the appender) never wait for a worker.
type replica struct {
	h     *Host
	group ids.GroupID
	id    ids.ReplicaID
	sm    statemachine.StateMachine
	log   *storage.RaftLog

	sched atomic.Int32  // schedIdle, schedQueued or schedDirty
	ticks atomic.Uint32 // ticks not yet delivered to the RawNode

	// Cached status, readable without mu.
	leader       atomic.Uint64 // replica ID of the known leader, 0 if none
	leaderNode   atomic.Uint64
	isLeader     atomic.Bool
	appliedIndex atomic.Uint64
	gone         atomic.Bool // set before the replica's data is deleted

	inboxMu sync.Mutex
	inMsgs  []inboundMsg
	spare   []inboundMsg // the previous inMsgs, reused (see process)
	inProps []*proposal
	inReads []*readRequest
	inCtrl  []func()

	mu      sync.Mutex
	rn      *raft.RawNode
	applied storage.AppliedState
	peers   map[ids.ReplicaID]ids.NodeID // learned from traffic, beyond applied.Replicas
	pending map[uint64]*proposal         // by proposal ID, until answered
	indexed []*proposal                  // proposals with a known log index, in append order
	stepped []*proposal                  // proposals stepped in the current processing
	// heldConfChanges are configuration changes proposed to a leader that
	// has not applied an entry of its term yet; see stepProposals.
	heldConfChanges []*proposal
	// lastConfIndex is the index of the last configuration change appended
	// to this replica's log (an entry a new leader overwrote may leave it
	// too high: it only errs towards "pending" until applied passes it).
	lastConfIndex uint64

	// Leader lease (Config.ReadLease), see leaseReads.
	leaseUntil time.Time
	leaseTerm  uint64
	leaseEpoch uint64                // bumped when a leadership transfer is seen
	leaseUsed  bool                  // reads were served from the current lease
	ticksAlive int                   // ticks since the replica started, up to ElectionTicks
	reads      map[uint64]*readBatch // ReadIndex requests in flight, by request ID
	heldReads  []*readRequest        // reads waiting for the round in flight to end, see issueReads
	waiting    []*readRequest        // reads with a read index, waiting for apply
	staged     stagedSnapshots       // received snapshots not yet installed
	clients    dedupCache            // exactly-once client records, see dedupCache
	values     *storage.ValueCache   // the apply path's view of the user areas, see ValueCache
	readCache  *storage.ReadCache    // values read by clients; set at creation, nil when off
	coalesce   []raftpb.Message      // scratch of supersededCommitNotices
	notices    []heldNotice          // deferred empty appends, at most one per peer (see deferNotice)
	noticeDue  atomic.Bool           // noticeTimer fired: some notice may be due
	// noticeTimer wakes the replica when its oldest held notice is due;
	// noticeArmed says it is running (both under mu).
	noticeTimer *time.Timer
	noticeArmed bool
	// clock counts the ticks delivered to the RawNode, and appSent holds,
	// per peer, the clock when an append was last routed to it: a heartbeat
	// that follows an append within a heartbeat interval is not sent (see
	// skipHeartbeat). Both under mu.
	clock   uint64
	appSent []peerClock
	// Quiescence (quiesce.go): whether r's clock is stopped, since when
	// (unix nanoseconds), and how many ticks its group has been idle. Under
	// mu; dormant mirrors quiesced for the ticker, which sets checkDue to
	// have a quiesced replica check its peers' liveness.
	quiesced   bool
	quiescedAt int64
	idleTicks  int
	dormant    atomic.Bool
	checkDue   atomic.Bool
	destroyed  bool
	removed    bool // applied a configuration without this replica

	// valueCacheBytes bounds values, made on the first apply: the replica's
	// share of the node's budget, set by the host whenever replicas come and
	// go (reshareCachesLocked) and applied by the apply path, which owns
	// values.
	valueCacheBytes atomic.Int64

	// expiry is the progress of this replica's sweeps of idle clients'
	// exactly-once records, while it leads (expiry.go).
	expiry expirySweep

	// Scratch of the apply path (applyInto, applyRun), reused across
	// batches: the encoded applied state, and the state machine's commands,
	// their positions in the run and their results.
	appliedBuf []byte
	runCmds    []statemachine.Command
	runIdx     []int
	runResults [][]byte

	// Apply effects waiting for the worker's apply batch to commit.
	results    []applyResult
	applyResps []raftpb.Message
	truncIndex uint64
	truncTerm  uint64
	// truncAsked is the highest index a truncation entry applied in this
	// pass asked for; truncProposed the last log index when this replica,
	// as leader, last proposed one (none is proposed again until the log
	// has been applied past it).
	truncAsked    uint64
	truncProposed uint64
}

// peerClock is a replica clock reading for one peer (replica ID).
type peerClock struct {
	to    uint64
	clock uint64
}

type inboundMsg struct {
	from  ids.NodeID
	msg   raftpb.Message
	local bool // a response from this node's own storage
}

// nodeOf returns the node hosting replica id of this group.
func (r *replica) nodeOf(id ids.ReplicaID) (ids.NodeID, bool) {
	if n, ok := r.applied.NodeOf(id); ok {
		return n, true
	}
	n, ok := r.peers[id]
	return n, ok
}

func (r *replica) enqueueCtrl(f func()) {
	r.inboxMu.Lock()
	r.inCtrl = append(r.inCtrl, f)
	r.inboxMu.Unlock()
	r.h.markReady(r)
}

// failAll answers every waiting proposal and read with err. Caller holds mu.
func (r *replica) failAll(err error) {
	r.inboxMu.Lock()
	props, reads := r.inProps, r.inReads
	r.inProps, r.inReads, r.inMsgs, r.inCtrl = nil, nil, nil, nil
	r.inboxMu.Unlock()
	for _, p := range props {
		p.finish(nil, err)
	}
	for _, p := range r.heldConfChanges {
		p.finish(nil, err)
	}
	r.heldConfChanges = nil
	for _, rr := range reads {
		rr.finish(0, err)
	}
	// The proposals handed to Raft may be in the log and commit on the
	// other replicas: their outcome is unknown, not err (ErrStopped and
	// ErrGroupNotFound tell a caller that retrying is safe).
	unknown := fmt.Errorf("%w: %v", ErrOutcomeUnknown, err)
	for _, p := range r.pending {
		p.finish(nil, unknown)
	}
	r.pending = map[uint64]*proposal{}
	r.indexed, r.stepped = nil, nil
	for _, b := range r.reads {
		for _, rr := range b.reads {
			rr.finish(0, err)
		}
	}
	r.reads = map[uint64]*readBatch{}
	for _, rr := range r.heldReads {
		rr.finish(0, err)
	}
	r.heldReads = nil
	for _, rr := range r.waiting {
		rr.finish(0, err)
	}
	r.waiting = nil
	r.staged.discardAll()
}

// updateSoftState refreshes the cached leadership fields.
func (r *replica) updateSoftState(ss *raft.SoftState) {
	if ss == nil {
		return
	}
	r.appSent = r.appSent[:0] // a new role or leader: no append of this term is known
	if prev := r.leader.Swap(ss.Lead); prev != ss.Lead {
		r.reissueReads()
	}
	r.isLeader.Store(ss.RaftState == raft.StateLeader)
	n, _ := r.nodeOf(ids.ReplicaID(ss.Lead))
	r.leaderNode.Store(uint64(n))
}

func (r *replica) notLeader() *NotLeaderError {
	return &NotLeaderError{
		Group:      r.group,
		Leader:     ids.ReplicaID(r.leader.Load()),
		LeaderNode: ids.NodeID(r.leaderNode.Load()),
	}
}
