package raftstore

import (
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// A node whose disk stalls must not keep its leaderships. With asynchronous
// storage writes a leader's worker goes on stepping messages and sending
// heartbeats while the appender waits for the disk, so its followers see a
// live leader and never elect another, and nothing the leader proposes is
// applied until its own log write returns (etcd raft applies only entries
// stable on the leader): a hung disk would stall every group the node leads
// for as long as it hangs. So when one of the appender's writes has taken
// longer than Config.DiskStallStepDown, the node hands each group it leads
// to the follower that has acknowledged the most of its log (the followers
// persisted what the leader sent them; the leader's own copy is what is
// stuck), and while the stall lasts it refuses leadership handed to it
// (MsgTimeoutNow). It does this again at most once per election timeout
// while the stall lasts, in case a group came back to it by an election.
// Nothing here is needed for safety: a transfer is an ordinary Raft
// leadership transfer.

// stalledFor returns how long the appender's write in progress has been
// running at now, or 0 when it is not writing.
func (a *appender) stalledFor(now time.Time) time.Duration {
	since := a.writingSince.Load()
	if since == 0 {
		return 0
	}
	return now.Sub(time.Unix(0, since))
}

// diskStalled reports whether the appender's write in progress has run
// longer than Config.DiskStallStepDown.
func (h *Host) diskStalled(now time.Time) bool {
	return h.cfg.DiskStallStepDown > 0 && h.appender.stalledFor(now) >= h.cfg.DiskStallStepDown
}

// checkDiskStall runs on the ticker: when the disk is stalled, every
// replica that leads its group is asked to hand its leadership over, at
// most once per election timeout.
func (h *Host) checkDiskStall(now time.Time) {
	if !h.diskStalled(now) || now.Sub(h.lastStallStepDown) < time.Duration(h.cfg.ElectionTicks)*h.cfg.TickInterval {
		return
	}
	h.lastStallStepDown = now
	var leaders []*replica
	h.mu.RLock()
	for _, r := range h.replicas {
		if r.isLeader.Load() {
			leaders = append(leaders, r)
		}
	}
	h.mu.RUnlock()
	if len(leaders) == 0 {
		return
	}
	h.log.Warn("raft log writes stalled: handing leaderships over",
		"stalled", h.appender.stalledFor(now).Round(time.Millisecond), "groups", len(leaders))
	for _, r := range leaders {
		r.enqueueCtrl(r.leaveStalledLeadership)
	}
}

// leaveStalledLeadership transfers r's leadership to the voter that has
// acknowledged the most of its log. Runs on a worker, r.mu held.
func (r *replica) leaveStalledLeadership() {
	st := r.rn.Status()
	if st.RaftState != raft.StateLeader || st.LeadTransferee != 0 {
		return
	}
	var to, match uint64
	for id, pr := range st.Progress {
		if id == st.ID || pr.IsLearner {
			continue
		}
		if to == 0 || pr.Match > match {
			to, match = id, pr.Match
		}
	}
	if to == 0 {
		return // no other voter
	}
	r.rn.TransferLeader(to)
	r.h.stats.StallTransfers.Add(1)
}

// refuseLeadership reports whether m hands this replica a leadership it
// must not take: the node's disk is stalled.
func (r *replica) refuseLeadership(m *raftpb.Message) bool {
	return m.Type == raftpb.MsgTimeoutNow && r.h.diskStalled(time.Now())
}
