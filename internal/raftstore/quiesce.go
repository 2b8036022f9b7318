package raftstore

import (
	"bytes"
	"math"
	"sync"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// Quiescence: a group with nothing to do stops its Raft clock.
//
// An idle group otherwise costs a heartbeat and its answer per follower
// every heartbeat interval, each a message, a network send and a pass of
// both replicas: on a 3-node cluster with 16 groups that was about 340
// messages and 60 ms of CPU per second doing nothing, growing with the
// number of groups. A leader whose group has been idle for a while, with
// every replica holding and applying everything it has, sends each
// follower one last heartbeat marked as quiescing (quiesceCtx) and stops
// ticking; a follower that receives it from its leader, caught up to its
// commit index, stops ticking too. Stopped, neither sends anything.
//
// Anything else wakes a replica: a proposal, a read, a control operation
// (transfer, configuration change, ...), or any Raft message other than
// the quiescing heartbeat (on a follower) or a heartbeat answer (on a
// leader). A woken leader ticks and heartbeats again, which wakes its
// followers; a woken follower that campaigns reaches the others with its
// vote request, which wakes them.
//
// Liveness: a stopped follower would never notice that its leader died, so
// every node sends each node it has sent anything to a ping (a message for
// pingGroup) whenever it has sent that node nothing for a heartbeat
// interval, and a quiesced replica checks every half election timeout
// whether it has heard from the nodes it depends on (a follower from its
// leader's node, a leader from its followers' nodes) within the last two
// election timeouts (quiescedSilence); if not, it wakes. A follower that
// wakes so is ticked an election timeout forward at once, as its leader
// has indeed been silent that long: a group whose leader's node died
// elects a new leader within two to three and a half election timeouts
// instead of one to two (TestQuiescedGroupElectsAfterLeaderLoss). A leader
// that wakes so resumes CheckQuorum and steps down if it has lost its
// quorum.
//
// Never with leader leases (Config.ReadLease): a lease rests on followers'
// election timers running. Safety never depends on any of this: a quiesced
// replica is a Raft replica that has not been ticked, like one on a slow
// node, and any message it misses is one the network lost.

// quiesceCtx is the context of a heartbeat that quiesces its follower.
// Raft echoes it in the answer, which the leader's Raft ignores (no read
// round has that context).
var quiesceCtx = []byte("nodedb-quiesce")

// pingGroup is the group of a ping's message, never a real group's (group
// IDs are allocated upwards from 0, the metadata group's).
const pingGroup = ids.GroupID(math.MaxUint64)

// quiesceIdleTimeouts is how long a leader's group must be idle before it
// quiesces, in election timeouts: long enough that a lightly written group
// (a write every few hundred milliseconds) does not quiesce and wake at
// every write.
const quiesceIdleTimeouts = 1

// quiescence reports whether the host's groups may quiesce.
func (h *Host) quiescence() bool { return !h.cfg.NoQuiesce && !h.cfg.ReadLease }

// electionTimeout is the time Raft's election timeout takes at least.
func (h *Host) electionTimeout() time.Duration {
	return time.Duration(h.cfg.ElectionTicks) * h.cfg.TickInterval
}

// nodeClocks records, per node, when something was last received from it
// or sent to it (unix nanoseconds).
type nodeClocks struct {
	mu sync.Mutex
	at map[ids.NodeID]int64
}

func (c *nodeClocks) note(n ids.NodeID, now int64) {
	c.mu.Lock()
	if c.at == nil {
		c.at = map[ids.NodeID]int64{}
	}
	c.at[n] = now
	c.mu.Unlock()
}

func (c *nodeClocks) get(n ids.NodeID) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.at[n]
}

// idleSince returns the nodes last noted before t.
func (c *nodeClocks) idleSince(t int64) []ids.NodeID {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []ids.NodeID
	for n, at := range c.at {
		if at < t {
			out = append(out, n)
		}
	}
	return out
}

// ping sends a ping to every node this host has sent nothing to for a
// heartbeat interval. Called by the ticker once per heartbeat interval.
func (h *Host) ping(now time.Time) {
	interval := time.Duration(h.cfg.HeartbeatTicks) * h.cfg.TickInterval
	for _, n := range h.sent.idleSince(now.Add(-interval).UnixNano()) {
		h.sent.note(n, now.UnixNano())
		// A heartbeat-shaped message passes the receiver's checks of what a
		// peer may send (transport.ValidateRemote); a node that does not know
		// pings drops it as a message for a group it does not hold.
		ping := transport.Message{Group: pingGroup, Msg: raftpb.Message{Type: raftpb.MsgHeartbeat, From: uint64(h.cfg.NodeID), To: uint64(n)}}
		_ = h.tr.Send(n, []transport.Message{ping}) // best effort, like all Raft traffic
	}
}

// wakes reports whether this pass's input wakes quiesced replica r: any
// proposal, read or control operation, and any message but a quiescing
// heartbeat (follower), a heartbeat answer (leader) or its own storage's
// answer. Caller holds r.mu.
func (r *replica) wakes(msgs []inboundMsg, props []*proposal, reads []*readRequest, ctrl []func()) bool {
	if len(props) > 0 || len(reads) > 0 || len(ctrl) > 0 {
		return true
	}
	for i := range msgs {
		m := &msgs[i].msg
		switch {
		case msgs[i].local:
		case m.Type == raftpb.MsgHeartbeatResp:
		case m.Type == raftpb.MsgHeartbeat && bytes.Equal(m.Context, quiesceCtx):
		default:
			return true
		}
	}
	return false
}

// wake restarts r's clock. A follower that wakes because a node of its
// group went silent (lost) is ticked an election timeout forward: its
// leader has been silent at least that long. Caller holds r.mu.
func (r *replica) wake(lost bool) {
	if !r.quiesced {
		return
	}
	r.quiesced = false
	r.dormant.Store(false)
	r.idleTicks = 0
	r.h.stats.Wakes.Add(1)
	if lost && r.rn.BasicStatus().RaftState == raft.StateFollower {
		for range r.h.cfg.ElectionTicks {
			r.rn.Tick()
			r.clock++
		}
	}
}

// quiescedPeerLost reports whether quiesced r has heard nothing for
// quiescedSilence from the node it depends on (a follower from its
// leader's node, a leader from any of its followers' nodes), counting the
// time it has been quiesced as heard. Caller holds r.mu.
func (r *replica) quiescedPeerLost(now time.Time) bool {
	cutoff := now.Add(-quiescedSilence * r.h.electionTimeout()).UnixNano()
	if r.quiescedAt >= cutoff {
		return false // quiet for less than that: nothing to tell yet
	}
	st := r.rn.BasicStatus()
	if st.RaftState != raft.StateLeader {
		n, ok := r.nodeOf(ids.ReplicaID(st.Lead))
		return !ok || r.h.heard.get(n) < cutoff
	}
	return !r.peersHeardSince(cutoff)
}

// quiescedSilence is how long, in election timeouts, a quiesced replica
// waits without hearing from a node it depends on before it wakes as if
// its peer were lost. Longer than the election timeout itself: an awake
// follower's timer counts its own ticks, so a stall of its whole process
// delays its election too, while wall-clock silence would not be so
// forgiving of a node that was merely slow.
const quiescedSilence = 2

// peersHeardSince reports whether this node has heard from the node of
// every other replica of r's group since t (unix nanoseconds). Caller holds
// r.mu.
func (r *replica) peersHeardSince(t int64) bool {
	ok := true
	r.rn.WithProgress(func(id uint64, _ raft.ProgressType, _ tracker.Progress) {
		if !ok || id == uint64(r.id) {
			return
		}
		n, known := r.nodeOf(ids.ReplicaID(id))
		ok = known && (n == r.h.cfg.NodeID || r.h.heard.get(n) >= t)
	})
	return ok
}

// quiesceLeader quiesces r, a leader whose group has been idle, if every
// replica holds and has applied all of its log: it sends each follower a
// quiescing heartbeat and stops ticking. It reports whether it did. Caller
// holds r.mu.
func (r *replica) quiesceLeader(o *outbox) bool {
	if !r.leaderCanQuiesce() {
		return false
	}
	st := r.rn.BasicStatus()
	var peers []uint64
	r.rn.WithProgress(func(id uint64, _ raft.ProgressType, _ tracker.Progress) {
		if id != uint64(r.id) {
			peers = append(peers, id)
		}
	})
	for _, id := range peers {
		r.route(o, raftpb.Message{Type: raftpb.MsgHeartbeat, To: id, From: uint64(r.id), Term: st.Term,
			Commit: st.Commit, Context: quiesceCtx})
	}
	// The heartbeats carry every held commit notice's news.
	r.notices = r.notices[:0]
	r.sleep()
	return true
}

// leaderCanQuiesce reports whether r leads a group with nothing in flight:
// no proposal, read, snapshot, transfer or configuration change pending,
// its log committed and applied here, and every other replica (learners
// included) replicating, holding all of it and recently heard from. Caller
// holds r.mu.
func (r *replica) leaderCanQuiesce() bool {
	if !r.h.quiescence() || len(r.pending) > 0 || len(r.heldConfChanges) > 0 || len(r.reads) > 0 ||
		len(r.heldReads) > 0 || len(r.waiting) > 0 || len(r.staged) > 0 || r.expiry.pending || r.rn.HasReady() {
		return false
	}
	st := r.rn.BasicStatus()
	if st.RaftState != raft.StateLeader || st.LeadTransferee != 0 || st.Applied != st.Commit ||
		r.appliedIndex.Load() != st.Commit || r.lastConfIndex > st.Commit {
		return false
	}
	ok := true
	r.rn.WithProgress(func(id uint64, _ raft.ProgressType, pr tracker.Progress) {
		if pr.Match != st.Commit || (id != uint64(r.id) && pr.State != tracker.StateReplicate) {
			ok = false
		}
	})
	// A follower whose node has gone silent would wake the leader again at
	// once (quiescedPeerLost): stay awake, heartbeating, as without
	// quiescence.
	return ok && r.peersHeardSince(time.Now().Add(-r.h.electionTimeout()).UnixNano())
}

// quiesceFollower quiesces r, a follower that has just stepped hb, its
// leader's quiescing heartbeat, if it is caught up to the commit index the
// heartbeat carries and waits for nothing. Caller holds r.mu.
func (r *replica) quiesceFollower(hb *raftpb.Message) {
	if !r.h.quiescence() || len(r.pending) > 0 || len(r.reads) > 0 || len(r.heldReads) > 0 ||
		len(r.waiting) > 0 || len(r.staged) > 0 {
		return
	}
	st := r.rn.BasicStatus()
	if st.RaftState != raft.StateFollower || st.Lead != hb.From || st.Term != hb.Term || st.Commit != hb.Commit {
		return
	}
	r.sleep()
}

// sleep stops r's clock. Caller holds r.mu.
func (r *replica) sleep() {
	r.quiesced = true
	r.dormant.Store(true)
	r.quiescedAt = time.Now().UnixNano()
	r.h.stats.Quiesces.Add(1)
}
