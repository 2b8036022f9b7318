package raftstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/storage"
	"github.com/nodedb/nodedb-cluster/internal/transport"
	"github.com/nodedb/nodedb-cluster/statemachine"
)

// Host runs every Raft group replica of one node.
type Host struct {
	cfg Config
	log *slog.Logger
	eng *storage.Engine
	tr  transport.Transport

	mu       sync.RWMutex
	replicas map[ids.GroupID]*replica
	// destroying holds, per group, a channel closed once the deletion of a
	// destroyed replica's data has committed. Until then no new replica of
	// the group may be created: the deletion would erase its writes.
	destroying map[ids.GroupID]chan struct{}

	// Scheduler: replicas with pending input, taken by the workers.
	readyMu   sync.Mutex
	readyCond *sync.Cond
	ready     []*replica
	workers   []workerState

	nextProposal atomic.Uint64
	nextRead     atomic.Uint64
	snapshots    outgoingSnapshots
	snapSem      chan struct{}
	appender     appender
	// lastStallStepDown is when the ticker last asked this node's leaders
	// to leave because the disk stalled (diskstall.go); only the ticker
	// touches it.
	lastStallStepDown time.Time

	started  atomic.Bool
	stopping atomic.Bool
	// engineUse is held for reading by every read of the engine that is not
	// part of Raft processing (client reads, exports, hashes); Stop takes it
	// for writing, so that the caller may close the engine once Stop returns.
	engineUse sync.RWMutex
	stopc     chan struct{}
	wg        sync.WaitGroup // driver, ticker, workers, snapshot senders
	failed    atomic.Pointer[error]

	// heard and sent: when a batch last came from, and last left for, each
	// node (quiesce.go: liveness of quiesced groups, and pings).
	heard nodeClocks
	sent  nodeClocks

	stats     Stats
	latencies latencies
}

// minCacheShare is the least a replica's cache gets.
const minCacheShare = 64 << 10

// shareOf is a replica's share of a cache budget: an even share over the
// replicas the node holds, at most most and at least minCacheShare.
func shareOf(budget, most, replicas int) int {
	return max(minCacheShare, min(most, budget/max(replicas, 1)))
}

// reshareCachesLocked gives every replica its share of the node's cache
// budgets over the replicas the node now holds, so that the caches together
// stay within the budgets (down to the floor per replica) as replicas are
// loaded, created and destroyed. A read cache is resized at once; a value
// cache by its owner, the apply path, at its next apply. Caller holds h.mu
// (or is New).
func (h *Host) reshareCachesLocked() {
	n := len(h.replicas)
	values := shareOf(valueCacheBudget, valueCacheMost, n)
	reads := shareOf(h.cfg.ReadCacheBytes, h.cfg.ReadCacheBytes, n)
	for _, r := range h.replicas {
		r.valueCacheBytes.Store(int64(values))
		if r.readCache != nil {
			r.readCache.Resize(reads)
		}
	}
}

// New loads every replica stored in cfg.Engine. The host does no work until
// Start.
func New(cfg Config) (*Host, error) {
	if cfg.Transport == nil {
		cfg.Transport = unstartedTransport{}
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	if err := os.MkdirAll(cfg.SnapshotDir, 0o700); err != nil {
		return nil, fmt.Errorf("create snapshot dir: %w", err)
	}
	// Snapshots half-received before a restart are useless: Raft will ask
	// again.
	if err := clearDir(cfg.SnapshotDir); err != nil {
		return nil, err
	}
	h := &Host{
		cfg:        cfg,
		log:        cfg.Logger.With("node", uint64(cfg.NodeID)),
		eng:        cfg.Engine,
		replicas:   make(map[ids.GroupID]*replica),
		destroying: make(map[ids.GroupID]chan struct{}),
		workers:    make([]workerState, cfg.Workers),
		snapSem:    make(chan struct{}, cfg.ConcurrentSnapshots),
		stopc:      make(chan struct{}),
	}
	h.readyCond = sync.NewCond(&h.readyMu)
	h.latencies = newLatencies()
	h.snapshots.init()
	h.appender = appender{h: h, signal: make(chan struct{}, 1), acks: map[ackKey]int{}}
	// Proposal IDs only need to be unique per node incarnation among entries
	// that may still be applied; starting from the clock keeps them unique
	// across restarts too.
	h.nextProposal.Store(uint64(time.Now().UnixNano()))
	locals, err := cfg.Engine.LocalReplicas()
	if err != nil {
		return nil, err
	}
	for _, lr := range locals {
		r, err := h.loadReplica(lr.Group, lr.Replica)
		if err != nil {
			return nil, fmt.Errorf("load replica %s/%s: %w", lr.Group, lr.Replica, err)
		}
		h.replicas[lr.Group] = r
	}
	h.reshareCachesLocked()
	h.registerMetrics(cfg.Registerer)
	return h, nil
}

// Start begins processing with transport t (which must deliver incoming
// traffic to this host's HandleRaft and HandleSnapshot).
func (h *Host) Start(t transport.Transport) {
	h.tr = t
	h.cfg.Transport = t
	h.started.Store(true)
	for i := range h.workers {
		h.wg.Add(1)
		go h.work(&h.workers[i])
	}
	h.wg.Add(2)
	go h.tick()
	go h.appender.run()
	h.mu.RLock()
	for _, r := range h.replicas {
		h.markReady(r)
	}
	h.mu.RUnlock()
}

// Stop stops all processing, fails everything still waiting, and waits for
// the host's goroutines to exit. It does not close the engine or transport.
func (h *Host) Stop() {
	if !h.stopping.CompareAndSwap(false, true) {
		return
	}
	close(h.stopc)
	h.engineUse.Lock()
	defer h.engineUse.Unlock()
	h.readyMu.Lock()
	h.readyCond.Broadcast()
	h.readyMu.Unlock()
	h.wg.Wait()
	h.mu.Lock()
	reps := h.replicas
	h.replicas = map[ids.GroupID]*replica{}
	h.mu.Unlock()
	for _, r := range reps {
		r.mu.Lock()
		r.failAll(ErrStopped)
		r.mu.Unlock()
	}
	h.snapshots.releaseAll()
}

// Err returns the fatal error that stopped the host, if any.
func (h *Host) Err() error {
	if p := h.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// UseEngine runs fn with the engine's database unless the host is stopping;
// Stop waits for fn to return.
func (h *Host) UseEngine(fn func(db *pebble.DB) error) error {
	h.engineUse.RLock()
	defer h.engineUse.RUnlock()
	if h.stopping.Load() {
		return ErrStopped
	}
	return fn(h.eng.DB())
}

// NodeID returns the node this host runs on.
func (h *Host) NodeID() ids.NodeID { return h.cfg.NodeID }

// Stats returns the host's counters.
func (h *Host) Stats() *Stats { return &h.stats }

// fatal records an unrecoverable error (storage failed) and stops the host
// without waiting: continuing could acknowledge writes that are not durable.
func (h *Host) fatal(err error) {
	if h.failed.CompareAndSwap(nil, &err) {
		h.log.Error("raft host stopped by a fatal error", "err", err)
		go h.Stop()
	}
}

func (h *Host) replica(g ids.GroupID) *replica {
	h.mu.RLock()
	r := h.replicas[g]
	h.mu.RUnlock()
	return r
}

// Groups lists the groups this node holds a replica of.
func (h *Host) Groups() []ids.GroupID {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make([]ids.GroupID, 0, len(h.replicas))
	for g := range h.replicas {
		out = append(out, g)
	}
	return out
}

// BootstrapGroup creates this node's replica of a new group whose founding
// members are replicas (which must include local). Every founding member must
// be bootstrapped with the same list. Replica IDs must be non-zero and
// distinct, each on a distinct node.
func (h *Host) BootstrapGroup(g ids.GroupID, local ids.ReplicaID, replicas []storage.ReplicaDesc) error {
	st := storage.AppliedState{Index: bootstrapIndex, Term: bootstrapTerm}
	found := false
	nodes := map[ids.NodeID]bool{}
	for _, d := range replicas {
		if d.Replica == 0 || d.Node == 0 {
			return fmt.Errorf("bootstrap %s: replica and node IDs must be non-zero", g)
		}
		if nodes[d.Node] {
			return fmt.Errorf("bootstrap %s: two replicas on %s", g, d.Node)
		}
		nodes[d.Node] = true
		if _, dup := st.NodeOf(d.Replica); dup {
			return fmt.Errorf("bootstrap %s: duplicate replica %s", g, d.Replica)
		}
		st.Replicas = append(st.Replicas, d)
		st.ConfState.Voters = append(st.ConfState.Voters, uint64(d.Replica))
		st.MaxReplicaID = max(st.MaxReplicaID, d.Replica)
		if d.Replica == local {
			if d.Node != h.cfg.NodeID {
				return fmt.Errorf("bootstrap %s: local replica %s placed on %s, this is %s", g, local, d.Node, h.cfg.NodeID)
			}
			found = true
		}
	}
	if !found {
		return fmt.Errorf("bootstrap %s: local replica %s not among the founding replicas", g, local)
	}
	return h.createReplica(g, local, func(b *pebble.Batch) error {
		return storage.WriteBootstrap(b, g, local, &st)
	})
}

// The state every founding replica starts from. Starting the log after a
// non-zero index makes every later replica start from a snapshot, which
// carries the group's data and configuration.
const (
	bootstrapIndex = 5
	bootstrapTerm  = 5
)

// CreateReplica creates an empty, uninitialized replica of an existing group
// on this node, to be added to the group by a configuration change. It
// receives the group's state from the leader as a snapshot.
func (h *Host) CreateReplica(g ids.GroupID, local ids.ReplicaID) error {
	return h.createReplica(g, local, func(b *pebble.Batch) error {
		return storage.WriteReplicaRecord(b, g, local)
	})
}

func (h *Host) createReplica(g ids.GroupID, local ids.ReplicaID, write func(*pebble.Batch) error) error {
	if local == 0 {
		return fmt.Errorf("create replica of %s: replica ID must be non-zero", g)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopping.Load() {
		return ErrStopped
	}
	if _, ok := h.replicas[g]; ok {
		return fmt.Errorf("create replica %s of %s: %w", local, g, ErrReplicaExists)
	}
	if _, ok := h.destroying[g]; ok {
		return fmt.Errorf("create replica %s of %s: %w: the previous replica's data is still being deleted", local, g, ErrReplicaExists)
	}
	tomb, err := h.eng.Tombstone(g)
	if err != nil {
		return err
	}
	if local < tomb {
		return fmt.Errorf("create replica %s of %s (tombstone %s): %w", local, g, tomb, ErrReplicaTombstoned)
	}
	b := h.eng.DB().NewBatch()
	defer b.Close()
	if err := write(b); err != nil {
		return fmt.Errorf("create replica %s of %s: %w", local, g, err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("create replica %s of %s: %w", local, g, err)
	}
	r, err := h.loadReplica(g, local)
	if err != nil {
		return fmt.Errorf("create replica %s of %s: %w", local, g, err)
	}
	h.replicas[g] = r
	h.reshareCachesLocked()
	if h.started.Load() {
		h.markReady(r)
	}
	return nil
}

// stateMachine returns the state machine that group g runs.
func (h *Host) stateMachine(g ids.GroupID) statemachine.StateMachine {
	if h.cfg.GroupStateMachine != nil {
		if sm := h.cfg.GroupStateMachine(g); sm != nil {
			return sm
		}
	}
	return h.cfg.StateMachine
}

func (h *Host) loadReplica(g ids.GroupID, id ids.ReplicaID) (*replica, error) {
	log, applied, err := storage.LoadRaftLog(h.eng, g)
	if err != nil {
		return nil, err
	}
	r := &replica{
		h:       h,
		group:   g,
		id:      id,
		sm:      h.stateMachine(g),
		log:     log,
		applied: applied,
		peers:   map[ids.ReplicaID]ids.NodeID{},
		pending: map[uint64]*proposal{},
		reads:   map[uint64]*readBatch{},
	}
	r.expiry.lastEnd = h.cfg.Now()
	if h.cfg.ReadCacheBytes > 0 {
		r.readCache = storage.NewReadCache(0) // sized by reshareCachesLocked
		r.readCache.CountInto(&h.stats.ReadCacheHits, &h.stats.ReadCacheMisses)
	}
	log.SetSnapshotFunc(r.buildSnapshot)
	rn, err := raft.NewRawNode(&raft.Config{
		ID:                        uint64(id),
		ElectionTick:              h.cfg.ElectionTicks,
		HeartbeatTick:             h.cfg.HeartbeatTicks,
		Storage:                   log,
		Applied:                   applied.Index,
		MaxSizePerMsg:             h.cfg.MaxSizePerMsg,
		MaxCommittedSizePerReady:  4 * h.cfg.MaxSizePerMsg,
		MaxUncommittedEntriesSize: h.cfg.MaxUncommittedBytes,
		MaxInflightMsgs:           h.cfg.MaxInflightMsgs,
		CheckQuorum:               true,
		PreVote:                   true,
		StepDownOnRemoval:         true,
		AsyncStorageWrites:        true,
		ReadOnlyOption:            raft.ReadOnlySafe,
		DisableProposalForwarding: true,
		Logger:                    raftLogger{h.log.With("group", uint64(g), "replica", uint64(id))},
	})
	if err != nil {
		return nil, fmt.Errorf("start raft: %w", err)
	}
	r.rn = rn
	r.appliedIndex.Store(applied.Index)
	// A configuration change may sit in the log above the applied index.
	if _, last := log.Bounds(); last > applied.Index {
		ents, err := log.Entries(applied.Index+1, last+1, math.MaxUint64)
		if err != nil {
			return nil, fmt.Errorf("scan unapplied log: %w", err)
		}
		r.noteConfChanges(ents)
	}
	return r, nil
}

// DestroyReplica removes this node's replica of g and everything it stores,
// and tombstones its replica ID so that it can never come back. Use it for a
// replica that has been removed from its group's configuration.
//
// The destruction runs on a worker, at the start of the replica's next
// processing: then no worker holds uncommitted apply writes of the replica
// that could land after its data is deleted.
func (h *Host) DestroyReplica(g ids.GroupID) error {
	r := h.replica(g)
	if r == nil {
		return ErrGroupNotFound
	}
	done := make(chan error, 1)
	r.enqueueCtrl(func() { done <- h.destroyLocked(r) })
	t := time.NewTicker(h.cfg.TickInterval)
	defer t.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-h.stopc:
			return ErrStopped
		case <-t.C:
			// Destroyed by someone else first: our request was dropped.
			// Return once that destruction has committed, so that the
			// caller may create a new replica of the group.
			if r.gone.Load() {
				h.mu.Lock()
				ch := h.destroying[g]
				h.mu.Unlock()
				if ch == nil {
					return nil
				}
				select {
				case <-ch:
					return nil
				case <-h.stopc:
					return ErrStopped
				}
			}
		}
	}
}

// destroyLocked removes r; the caller holds r.mu. The deletion goes through
// the appender, after any log write of r still queued there, and is waited
// for, so a replica created later for the same group never races with it.
func (h *Host) destroyLocked(r *replica) error {
	if r.destroyed {
		return nil
	}
	r.gone.Store(true)
	r.destroyed = true
	r.readCache.Clear() // and never ended: the data goes
	r.stopNotices()
	deleted := make(chan struct{})
	h.mu.Lock()
	if h.replicas[r.group] == r {
		delete(h.replicas, r.group)
		h.reshareCachesLocked()
	}
	h.destroying[r.group] = deleted
	h.mu.Unlock()
	r.failAll(ErrGroupNotFound)
	done := make(chan error, 1)
	h.appender.submit([]*appendJob{{r: r, destroy: true, done: done}})
	var err error
	select {
	case err = <-done:
	case <-h.stopc:
		err = ErrStopped
	}
	h.mu.Lock()
	if h.destroying[r.group] == deleted {
		delete(h.destroying, r.group)
	}
	h.mu.Unlock()
	close(deleted)
	if err != nil {
		return fmt.Errorf("destroy replica %s of %s: %w", r.id, r.group, err)
	}
	h.log.Info("replica destroyed", "group", uint64(r.group), "replica", uint64(r.id))
	return nil
}

// HandleRaft implements transport.Handler.
func (h *Host) HandleRaft(from ids.NodeID, msgs []transport.Message) {
	if !h.started.Load() || h.stopping.Load() {
		return
	}
	h.stats.MessagesReceived.Add(uint64(len(msgs)))
	h.heard.note(from, time.Now().UnixNano())
	var touched []*replica
	var last *replica
	for i := range msgs {
		m := &msgs[i]
		if m.Group == pingGroup {
			continue // a ping: noted above
		}
		r := last
		if r == nil || r.group != m.Group {
			r = h.replica(m.Group)
		}
		if r == nil || ids.ReplicaID(m.Msg.To) != r.id {
			// Unknown group, or a message for another incarnation of our
			// replica (IDs are never reused, so it is stale or premature).
			h.stats.MessagesDropped.Add(1)
			continue
		}
		if r != last {
			touched = append(touched, r)
		}
		last = r
		r.inboxMu.Lock()
		r.inMsgs = append(r.inMsgs, inboundMsg{from: from, msg: m.Msg})
		r.inboxMu.Unlock()
	}
	h.markAllReady(touched)
}

// tick advances every replica's logical clock.
func (h *Host) tick() {
	defer h.wg.Done()
	t := time.NewTicker(h.cfg.TickInterval)
	defer t.Stop()
	// Quiesced replicas (quiesce.go) get no ticks; every half election
	// timeout they are asked to check that their peers' nodes are alive.
	checkEvery := uint64(max(1, h.cfg.ElectionTicks/2))
	pingEvery := uint64(h.cfg.HeartbeatTicks)
	var n uint64
	for {
		select {
		case <-h.stopc:
			return
		case <-t.C:
		}
		n++
		h.mu.RLock()
		all := make([]*replica, 0, len(h.replicas))
		for _, r := range h.replicas {
			if r.dormant.Load() {
				if n%checkEvery == 0 {
					r.checkDue.Store(true)
					all = append(all, r)
				}
				continue
			}
			r.ticks.Add(1)
			all = append(all, r)
		}
		h.mu.RUnlock()
		h.markAllReady(all)
		now := time.Now()
		if h.quiescence() && n%pingEvery == 0 {
			h.ping(now)
		}
		h.snapshots.expire(now.Add(-snapshotIdleTimeout))
		h.checkDiskStall(now)
	}
}

// waitCtx waits for done or ctx. It returns ctx's error wrapped with
// ErrOutcomeUnknown when the caller gave up first.
func (h *Host) waitCtx(ctx context.Context, done <-chan struct{}) error {
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrOutcomeUnknown, ctx.Err())
	case <-h.stopc:
		return ErrStopped
	}
}

func clearDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read %s: %w", dir, err)
	}
	var errs []error
	for _, e := range ents {
		errs = append(errs, os.RemoveAll(dir+string(os.PathSeparator)+e.Name()))
	}
	return errors.Join(errs...)
}

// raftLogger routes etcd raft's logs to slog. Raft's Info lines (elections,
// term changes) are debug-level noise at our scale of thousands of groups.
type raftLogger struct{ l *slog.Logger }

func (r raftLogger) Debug(v ...any)              { r.l.Debug(fmt.Sprint(v...)) }
func (r raftLogger) Debugf(f string, v ...any)   { r.l.Debug(fmt.Sprintf(f, v...)) }
func (r raftLogger) Info(v ...any)               { r.l.Debug(fmt.Sprint(v...)) }
func (r raftLogger) Infof(f string, v ...any)    { r.l.Debug(fmt.Sprintf(f, v...)) }
func (r raftLogger) Warning(v ...any)            { r.l.Warn(fmt.Sprint(v...)) }
func (r raftLogger) Warningf(f string, v ...any) { r.l.Warn(fmt.Sprintf(f, v...)) }
func (r raftLogger) Error(v ...any)              { r.l.Error(fmt.Sprint(v...)) }
func (r raftLogger) Errorf(f string, v ...any)   { r.l.Error(fmt.Sprintf(f, v...)) }
func (r raftLogger) Fatal(v ...any)              { r.l.Error(fmt.Sprint(v...)); panic(fmt.Sprint(v...)) }
func (r raftLogger) Fatalf(f string, v ...any)   { s := fmt.Sprintf(f, v...); r.l.Error(s); panic(s) }
func (r raftLogger) Panic(v ...any)              { s := fmt.Sprint(v...); r.l.Error(s); panic(s) }
func (r raftLogger) Panicf(f string, v ...any)   { s := fmt.Sprintf(f, v...); r.l.Error(s); panic(s) }

var _ raft.Logger = raftLogger{}

// unstartedTransport stands in until Start provides the real transport.
type unstartedTransport struct{}

func (unstartedTransport) Send(ids.NodeID, []transport.Message) error { return transport.ErrClosed }
func (unstartedTransport) SendSnapshot(context.Context, ids.NodeID, io.Reader) error {
	return transport.ErrClosed
}
func (unstartedTransport) Close() error { return nil }
