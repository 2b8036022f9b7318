package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nodedb/nodedb-cluster/cluster"
	"github.com/nodedb/nodedb-cluster/internal/failpoint"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"github.com/nodedb/nodedb-cluster/internal/migrate"
)

// rpcPing answers nothing: the coordinator's evidence that a move's target
// node is alive.
const rpcPing = "node.ping"

// moveCoordinator carries out replica moves. It runs on the metadata
// leader, inside the control loop (one pass at a time, so it needs no
// lock), and keeps no state that matters across leaders: every decision is
// migrate.Recover and migrate.Next over the applied metadata state and the
// groups as observed on their leaders, so a new leader takes over from the
// checkpoint rows alone.
//
// The rows a node inherits when it becomes metadata leader are first
// written again one attempt later (Decision.TakeoverEntry): the writes of
// the previous coordinator, which may not know yet that it lost its
// leadership, are refused from then on.
//
// Every metadata write and every Raft change the coordinator makes has a
// failpoint before and after it: move.before-STEP and move.after-STEP
// (docs/failpoints.md).
type moveCoordinator struct {
	s         *Server
	cfg       migrate.Config
	goneAfter time.Duration
	log       *slog.Logger
	metrics   *moveMetrics

	// term is the metadata term this node coordinates in (0: none yet),
	// since when it started to, inherited the rows it found then and has
	// not taken over yet.
	term      uint64
	since     time.Time
	inherited map[string]bool
	// started is when the newest move to each target started (this
	// pass's rows).
	started map[uint64]time.Time
	// pingMu guards seen (when each target last answered a ping) and
	// pinging (targets with a ping in flight): pings run beside the
	// passes, so that a target that does not answer never stalls them.
	pingMu  sync.Mutex
	seen    map[uint64]time.Time
	pinging map[uint64]bool
	// recorded is the last error written to each row, reported holds the
	// quarantined rows already logged: neither is written twice.
	recorded map[string]string
	reported map[string]bool
}

func newMoveCoordinator(s *Server, cfg Config) *moveCoordinator {
	return &moveCoordinator{
		s:         s,
		cfg:       migrate.Config{CatchUpMaxLag: catchUpMaxLag, AbortTimeout: cfg.MoveAbortTimeout},
		goneAfter: cfg.NodeGoneAfter,
		log:       s.log.With("component", "moves"),
		metrics:   newMoveMetrics(s.registry),
		recorded:  map[string]string{},
		reported:  map[string]bool{},
		seen:      map[uint64]time.Time{},
		pinging:   map[uint64]bool{},
	}
}

// moveMetrics are the replica-move metrics of a node.
type moveMetrics struct {
	started, completed, aborted prometheus.Counter
	phase                       *prometheus.HistogramVec
	quarantined                 prometheus.Gauge
}

func newMoveMetrics(reg prometheus.Registerer) *moveMetrics {
	m := &moveMetrics{
		started:   prometheus.NewCounter(prometheus.CounterOpts{Name: "nodedb_replica_moves_started_total", Help: "Replica moves started through this node."}),
		completed: prometheus.NewCounter(prometheus.CounterOpts{Name: "nodedb_replica_moves_completed_total", Help: "Replica moves this node finished as coordinator (row deleted after complete)."}),
		aborted:   prometheus.NewCounter(prometheus.CounterOpts{Name: "nodedb_replica_moves_aborted_total", Help: "Replica moves this node finished aborting as coordinator (row deleted after its compensations)."}),
		phase: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "nodedb_replica_move_phase_seconds", Help: "Time a replica move spent in a phase, observed when the coordinator leaves it, counted from the row's last write (the phase's start, a takeover, or a recorded error).",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 14),
		}, []string{"phase"}),
		quarantined: prometheus.NewGauge(prometheus.GaugeOpts{Name: "nodedb_migrations_quarantined", Help: "Migration rows the coordinator found quarantined (bad checksum or payload) on its last pass."}),
	}
	reg.MustRegister(m.started, m.completed, m.aborted, m.phase, m.quarantined)
	return m
}

// pass makes one step of every move, given the metadata state st and the
// groups observed on their leaders (obs; a group without a reachable
// leader is missing). Called by the control loop on the metadata leader.
func (c *moveCoordinator) pass(ctx context.Context, st *metaState, obs map[uint64]*cluster.GroupStatus) {
	rows := migrate.Rows(st)
	now := time.Now()
	if term := c.s.metaTerm(); term != c.term {
		c.term, c.since = term, now
		c.inherited = map[string]bool{}
		for _, r := range rows {
			c.inherited[r.GetId()] = true
		}
		clear(c.recorded)
		clear(c.reported)
		c.log.Info("coordinating migrations", "term", term, "rows", len(rows))
	}
	if len(rows) == 0 {
		c.metrics.quarantined.Set(0)
		return
	}
	views := map[uint64]migrate.GroupView{}
	for g := range migrate.InFlight(rows) {
		if o := obs[g]; o != nil {
			views[g] = groupView(st, g, o)
		}
	}
	// The targets of the moves before their end, with the newest start.
	c.started = map[uint64]time.Time{}
	for _, r := range rows {
		if phase, m, err := migrate.ParseRow(r); err == nil && phase != migrate.PhaseComplete && !m.Started().Before(c.started[m.To]) {
			c.started[m.To] = m.Started()
		}
	}
	c.ping(ctx)
	quarantined := 0
	for _, d := range migrate.Recover(rows, now, migrate.NodeStatesOf(st, c.gone), views, c.cfg) {
		if d.Action == migrate.Quarantine {
			quarantined++
		}
		c.decide(ctx, d, views[d.Move.Group], obs[d.Move.Group])
	}
	c.metrics.quarantined.Set(float64(quarantined))
}

// gone reports whether node has not answered a ping for goneAfter,
// counting at the latest from when this node started coordinating and from
// the start of the newest move to it: a new coordinator, and a new move,
// give the target the full grace before declaring it gone.
//
// This is the coordinator's own failure detector, limited to the targets of
// moves in flight; the metadata state's node states stay the authority on
// membership (a decommissioned target is not ACTIVE, whatever it answers).
func (c *moveCoordinator) gone(node uint64) bool {
	c.pingMu.Lock()
	seen := c.seen[node]
	c.pingMu.Unlock()
	last := c.since
	for _, t := range []time.Time{seen, c.started[node]} {
		if t.After(last) {
			last = t
		}
	}
	return time.Since(last) > c.goneAfter
}

// ping asks the target node of every move before its end (c.started)
// whether it is alive, without waiting: at most one ping per target is in flight, each
// bounded by a second, and an answer is recorded in seen. Pings belong to
// the server's background goroutines (Stop waits for them); the ones of an
// earlier term may still record an answer, which is as true then.
func (c *moveCoordinator) ping(ctx context.Context) {
	for n := range c.started {
		c.pingMu.Lock()
		busy := c.pinging[n]
		switch {
		case ids.NodeID(n) == c.s.id:
			c.seen[n], busy = time.Now(), true
		case !busy:
			c.pinging[n] = true
		}
		c.pingMu.Unlock()
		if busy {
			continue
		}
		c.s.wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			_, err := c.s.ep.Call(cctx, ids.NodeID(n), rpcPing, nil)
			cancel()
			c.pingMu.Lock()
			defer c.pingMu.Unlock()
			c.pinging[n] = false
			if err == nil {
				c.seen[n] = time.Now()
			}
		})
	}
}

// decide carries out one recovery decision: a cleanup, a takeover, an
// abort to record, or the next step of the move.
func (c *moveCoordinator) decide(ctx context.Context, d migrate.Decision, v migrate.GroupView, o *cluster.GroupStatus) {
	log := c.log.With("migration", d.ID)
	switch d.Action {
	case migrate.Quarantine:
		if !c.reported[d.ID] {
			c.reported[d.ID] = true
			log.Error("migration row quarantined: nothing acts on it until an operator deletes it (migrations abort ID)", "err", d.Err)
		}
		return
	case migrate.Wait:
		log.Debug("migration waits", "reason", d.Reason)
		return
	case migrate.Cleanup:
		if _, err := c.write(ctx, "delete", d.Entry()); err != nil {
			log.Info("clean up completed move", "err", err)
			return
		}
		c.finished(log, d.Move, d.From)
		return
	}
	if c.inherited[d.ID] {
		if _, err := c.write(ctx, "takeover", d.TakeoverEntry()); err != nil {
			log.Info("take over migration", "err", err)
			return
		}
		delete(c.inherited, d.ID)
		log.Info("migration taken over", "action", d.Action, "phase", d.Phase, "attempt", d.Attempt+1, "reason", d.Reason)
		c.s.poke()
		return
	}
	if e := d.Entry(); e != nil { // an abort decided by recovery
		if _, err := c.write(ctx, "checkpoint-aborting", e); err != nil {
			log.Info("abort migration", "err", err)
			return
		}
		log.Warn("migration aborting", "reason", d.Reason, "phase", d.From)
		c.metrics.phase.WithLabelValues(d.From.String()).Observe(time.Since(c.rowTime(d.ID)).Seconds())
		c.s.poke()
		return
	}
	step := c.cfg.Next(d.Move, d.From, v)
	if err := c.do(ctx, d.ID, d.Attempt, step, v, o); err != nil {
		c.fail(ctx, log, d.ID, d.Attempt, step, err)
		return
	}
	if step.Kind != migrate.StepWait && step.Kind != migrate.StepInvalid {
		log.Info("migration step", "step", step.String(), "phase", d.From, "attempt", d.Attempt)
		c.s.poke()
	}
}

// do carries out one step of move id, whose row is at attempt.
func (c *moveCoordinator) do(ctx context.Context, id string, attempt uint32, s migrate.Step, v migrate.GroupView, o *cluster.GroupStatus) error {
	g := ids.GroupID(s.Move.Group)
	switch s.Kind {
	case migrate.StepWait:
		return nil
	case migrate.StepInvalid:
		if !c.reported[id] {
			c.reported[id] = true
			c.log.Error("migration row invalid for its phase: nothing acts on it", "migration", id, "err", s.Err)
		}
		return nil
	case migrate.StepAdvance, migrate.StepAbort:
		name := "checkpoint-" + s.Phase.String()
		if s.Kind == migrate.StepAbort {
			name = "checkpoint-aborting"
		}
		if _, err := c.write(ctx, name, s.Entry(id, attempt)); err != nil {
			return err
		}
		c.metrics.phase.WithLabelValues(s.From.String()).Observe(time.Since(c.rowTime(id)).Seconds())
		return nil
	case migrate.StepRecord:
		if _, err := c.write(ctx, "record", s.Entry(id, attempt)); err != nil {
			return err
		}
		c.metrics.phase.WithLabelValues(s.From.String()).Observe(time.Since(c.rowTime(id)).Seconds())
		return nil
	case migrate.StepDelete:
		if _, err := c.write(ctx, "delete", s.Entry(id, attempt)); err != nil {
			return err
		}
		c.finished(c.log.With("migration", id), s.Move, s.From)
		return nil
	case migrate.StepAddLearner:
		r := s.Replica
		if r == 0 {
			res, err := c.write(ctx, "allocate", s.Entry(id, attempt))
			if err != nil {
				return err
			}
			r = res.GetReplicaId()
		}
		return c.change(ctx, "add-learner", o, g, cluster.ReplicaChange{Op: cluster.AddLearner, Replica: ids.ReplicaID(r), Node: ids.NodeID(s.Node)})
	case migrate.StepTransferLeader:
		return c.transfer(ctx, o, g, s.Replica)
	case migrate.StepReplace:
		var ch []cluster.ReplicaChange
		if s.Promote {
			ch = append(ch, cluster.ReplicaChange{Op: cluster.AddVoter, Replica: ids.ReplicaID(s.Replica), Node: ids.NodeID(s.Node)})
		}
		if s.Remove != 0 {
			ch = append(ch, cluster.ReplicaChange{Op: cluster.RemoveReplica, Replica: ids.ReplicaID(s.Remove)})
		}
		if len(ch) == 0 {
			return nil
		}
		return c.change(ctx, "replace", o, g, ch...)
	case migrate.StepCompensate:
		return c.compensate(ctx, id, s.Compensation, v, o)
	}
	return fmt.Errorf("step %v: not carried out by this node", s.Kind)
}

// compensate carries out one compensation of an abort: its Raft part (a
// leadership transfer, or the removal of the move's replica), then its
// metadata record.
func (c *moveCoordinator) compensate(ctx context.Context, id string, comp migrate.Compensation, v migrate.GroupView, o *cluster.GroupStatus) error {
	g := ids.GroupID(comp.Group)
	switch comp.Kind {
	case migrate.RestoreLeaderHint:
		if v.LeaderNode != comp.Node {
			return c.transfer(ctx, o, g, comp.Replica)
		}
	case migrate.RemoveVoter, migrate.RemoveLearner:
		if inConfig(o, comp.Replica) {
			if err := c.change(ctx, "remove", o, g, cluster.ReplicaChange{Op: cluster.RemoveReplica, Replica: ids.ReplicaID(comp.Replica)}); err != nil {
				return err
			}
		}
	}
	e := comp.Entry(id)
	if e == nil {
		return nil
	}
	_, err := c.write(ctx, "compensate", e)
	return err
}

// finished counts a move whose row was deleted: completed or aborted.
func (c *moveCoordinator) finished(log *slog.Logger, m migrate.ReplicaMove, from migrate.Phase) {
	if from == migrate.PhaseComplete {
		c.metrics.completed.Inc()
		log.Info("replica move completed", "group", m.Group, "from", m.From, "to", m.To, "elapsed", time.Since(m.Started()).Round(time.Millisecond))
		return
	}
	c.metrics.aborted.Inc()
	log.Warn("replica move aborted", "group", m.Group, "from", m.From, "to", m.To, "reason", m.LastError)
}

// fail records err as the last error of the row's phase, unless it was
// already recorded or the row moved on (the write then conflicts; the next
// pass reads the row again).
func (c *moveCoordinator) fail(ctx context.Context, log *slog.Logger, id string, attempt uint32, s migrate.Step, err error) {
	log.Info("migration step failed", "step", s.String(), "err", err)
	var me *meta.Error
	if errors.As(err, &me) && me.Code == metapb.Code_CODE_CHECKPOINT_CONFLICT {
		return
	}
	msg := fmt.Sprintf("%s: %v", s.Kind, err)
	if c.recorded[id] == msg {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := c.s.proposeMeta(cctx, s.ErrorEntry(id, attempt, msg)); err != nil {
		log.Debug("record migration error", "err", err)
		return
	}
	c.recorded[id] = msg
}

// write proposes a metadata entry of a move, between the failpoints
// move.before-STEP and move.after-STEP.
func (c *moveCoordinator) write(ctx context.Context, step string, e *metapb.Entry) (*metapb.Result, error) {
	if e == nil {
		return nil, fmt.Errorf("%s: no entry", step)
	}
	if err := failpoint.Inject("move.before-" + step); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := c.s.proposeMeta(ctx, e)
	if err != nil {
		return res, fmt.Errorf("%s: %w", step, err)
	}
	if err := failpoint.Inject("move.after-" + step); err != nil {
		return res, err
	}
	return res, nil
}

// change makes a Raft configuration change of group g on its leader (o),
// between the failpoints move.before-STEP and move.after-STEP.
func (c *moveCoordinator) change(ctx context.Context, step string, o *cluster.GroupStatus, g ids.GroupID, ch ...cluster.ReplicaChange) error {
	if o == nil {
		return fmt.Errorf("%s: group %d has no known leader", step, g)
	}
	if err := failpoint.Inject("move.before-" + step); err != nil {
		return err
	}
	if err := c.s.changeReplicas(ctx, o, g, ch...); err != nil {
		return fmt.Errorf("%s: %w", step, err)
	}
	return failpoint.Inject("move.after-" + step)
}

// transfer moves g's leadership to replica to, between the failpoints
// move.before-transfer and move.after-transfer.
func (c *moveCoordinator) transfer(ctx context.Context, o *cluster.GroupStatus, g ids.GroupID, to uint64) error {
	if o == nil {
		return fmt.Errorf("transfer: group %d has no known leader", g)
	}
	if err := failpoint.Inject("move.before-transfer"); err != nil {
		return err
	}
	if err := c.s.transferTo(ctx, o, g, ids.ReplicaID(to)); err != nil {
		return fmt.Errorf("transfer leadership of group %d to replica %d: %w", g, to, err)
	}
	return failpoint.Inject("move.after-transfer")
}

// rowTime is when row id was last written, per the metadata state.
func (c *moveCoordinator) rowTime(id string) time.Time {
	return time.Unix(0, c.s.view.get().GetMigrations()[id].GetTimestampUnixNanos())
}

// groupView is group g as the metadata state records it and as its
// leader's status o shows it: what migrate's decisions read.
func groupView(st *metaState, g uint64, o *cluster.GroupStatus) migrate.GroupView {
	v := migrate.RecordedView(st, g)
	cs := o.Config.ConfState
	members := func(lists ...[]uint64) []migrate.Member {
		var out []migrate.Member
		for _, l := range lists {
			for _, r := range l {
				n, _ := o.Config.NodeOf(ids.ReplicaID(r))
				out = append(out, migrate.Member{Replica: r, Node: uint64(n)})
			}
		}
		return out
	}
	v.Voters = members(cs.Voters)
	v.Outgoing = members(cs.VotersOutgoing)
	v.Learners = members(cs.Learners, cs.LearnersNext)
	v.LeaderNode = uint64(o.LeaderNode)
	v.Commit = o.Commit
	v.ConfChangePending = o.ConfChangePending
	v.Progress = make(map[uint64]migrate.Progress, len(o.Progress))
	for r, p := range o.Progress {
		v.Progress[uint64(r)] = migrate.Progress{Match: p.Match, Replicating: p.State == "replicate", Active: p.RecentActive}
	}
	return v
}

// inConfig reports whether replica r is in the configuration o shows, in
// any role.
func inConfig(o *cluster.GroupStatus, r uint64) bool {
	if o == nil || r == 0 {
		return false
	}
	cs := o.Config.ConfState
	for _, l := range [][]uint64{cs.Voters, cs.VotersOutgoing, cs.Learners, cs.LearnersNext} {
		if slices.Contains(l, r) {
			return true
		}
	}
	return false
}

// metaTerm is the term of this node's replica of the metadata group.
func (s *Server) metaTerm() uint64 {
	st, err := s.node.Status(MetaGroup)
	if err != nil {
		return 0
	}
	return st.Term
}
