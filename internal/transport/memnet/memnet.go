// Package memnet is an in-process network for tests and benchmarks. It
// implements transport.Transport for any number of nodes inside one process
// and lets a test drop, delay, duplicate, reorder and partition traffic per
// directed link, the faults a real network inflicts on Raft.
//
// # Model
//
// A Network holds one endpoint per node and one link per ordered pair of
// nodes (from → to). Send encodes the batch with transport.EncodeBatch,
// decides its fate on the link (drop, duplicate, delay, reorder) and queues
// it; a goroutine owned by the link delivers due batches, decoded with
// transport.DecodeBatch, to the destination's Handler. Crossing the real
// codec means the receiver always gets its own copies, the sender may reuse
// its slices as soon as Send returns, and a message that the wire format or
// transport.ValidateRemote would refuse is refused here too (counted as a
// decode error), instead of passing silently in tests and failing in
// production.
//
// Invariants the rest of the code relies on:
//
//   - Send never blocks on delivery: each link queue holds at most
//     QueueLimit batches and drops (and counts) beyond that, like a
//     congested network.
//   - A link is FIFO unless its ReorderRate is positive: delay jitter alone
//     never lets a batch overtake an earlier one on the same link, as on a
//     single QUIC stream.
//   - A batch is checked against partitions and the destination endpoint
//     both when it is sent and when it is delivered, so after Partition
//     returns no batch crosses the cut except one already being handed to
//     its handler, and after an endpoint's Close returns its handler is
//     never called again.
//   - A batch is delivered only to the endpoint incarnation that was
//     registered when it was sent: a restarted node never receives traffic
//     addressed to its previous incarnation.
//   - Every goroutine the Network starts is stopped by Network.Close, which
//     waits for it, so tests can use goleak.
//   - The counters conserve batches: once the Network is closed,
//     Sent + Duplicated equals the sum of Delivered and every Dropped*
//     counter plus DecodeErrors (see Stats.Conserved).
//
// # Determinism
//
// Every random choice is drawn from a per-link math/rand/v2 PCG source
// seeded from the Network's seed and the link's endpoints, under the link's
// mutex. The fate of the k-th batch sent on a link therefore depends only on
// the seed, the link and k, not on traffic on other links or goroutine
// scheduling. Wall-clock timing of deliveries is not deterministic, but a
// Network created and closed inside a testing/synctest bubble runs on the
// bubble's fake clock, which makes delays exact and tests fast.
package memnet

import (
	"errors"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// QueueLimit bounds the batches queued on one link. It keeps a sender that
// outpaces its receiver (or a link with a long delay) from growing memory
// without bound; Raft tolerates the resulting drops by retrying.
const QueueLimit = 4096

// DefaultReorderHold is the longest extra delay of a reordered batch when
// LinkFaults.ReorderHold is zero. It is long enough for back-to-back batches
// to overtake the held one and short enough not to look like a partition to
// Raft's election timers.
const DefaultReorderHold = 2 * time.Millisecond

// LinkFaults describes how one directed link mistreats the batches sent on
// it. The zero value is a perfect link: no loss, no delay, FIFO.
// Out-of-range values are clamped (rates to [0, 1], delays to >= 0, MaxDelay
// to >= MinDelay) rather than refused.
type LinkFaults struct {
	// DropRate is the probability that a batch is lost.
	DropRate float64
	// DuplicateRate is the probability that a batch that was not lost is
	// delivered twice. The copy draws its own delay.
	DuplicateRate float64
	// MinDelay and MaxDelay bound the delay of each batch, drawn uniformly
	// in [MinDelay, MaxDelay]. Without reordering a batch is never
	// delivered before the batch sent ahead of it, so jitter can stretch a
	// delay beyond MaxDelay but never reorders.
	MinDelay, MaxDelay time.Duration
	// ReorderRate is the probability that a batch is held back by an extra
	// delay in (0, ReorderHold], outside the link's FIFO order, so that
	// batches sent after it may overtake it.
	ReorderRate float64
	// ReorderHold is the longest extra delay of a reordered batch; zero
	// means DefaultReorderHold.
	ReorderHold time.Duration
}

// sanitize clamps f into the ranges the scheduler assumes.
func (f LinkFaults) sanitize() LinkFaults {
	f.DropRate = clampRate(f.DropRate)
	f.DuplicateRate = clampRate(f.DuplicateRate)
	f.ReorderRate = clampRate(f.ReorderRate)
	f.MinDelay = max(f.MinDelay, 0)
	f.MaxDelay = max(f.MaxDelay, f.MinDelay)
	if f.ReorderHold <= 0 {
		f.ReorderHold = DefaultReorderHold
	}
	return f
}

func clampRate(r float64) float64 {
	if math.IsNaN(r) || r <= 0 {
		return 0
	}
	return min(r, 1)
}

// Hook inspects one message at delivery time; returning true removes the
// message from its batch. It is called without any Network lock held, so it
// may change faults or partitions, but it may be called concurrently from
// different links and must be safe for that. It must not close the
// destination endpoint of the message it inspects: Close would wait for the
// delivery that is calling the hook.
type Hook func(from, to ids.NodeID, m *transport.Message) (drop bool)

// linkKey names a directed link.
type linkKey struct{ from, to ids.NodeID }

// Network is an in-process network of endpoints. Its methods are safe for
// concurrent use.
type Network struct {
	seed int64

	// done is closed by Close; link goroutines exit when it is.
	done chan struct{}
	// wg counts every goroutine the Network owns: link schedulers and
	// snapshot receivers. Add happens only under mu while !closed, so it
	// never races with Close's Wait.
	wg sync.WaitGroup

	// bandwidth is the snapshot rate limit in bytes per second; <= 0 means
	// unlimited. Read once per chunk, so a change applies to streams in
	// flight.
	bandwidth atomic.Int64

	// mu guards everything below. Delivery takes it shared; configuration
	// changes take it exclusively.
	mu        sync.RWMutex
	closed    bool
	endpoints map[ids.NodeID]*Endpoint
	links     map[linkKey]*link
	defaults  LinkFaults
	faults    map[linkKey]LinkFaults
	cuts      map[linkKey]struct{}
	isolated  map[ids.NodeID]struct{}
	hook      Hook
	snaps     map[*snapshot]struct{}
}

// New returns an empty network whose random choices derive from seed. Log
// the seed in failing tests so a run can be replayed.
func New(seed int64) *Network {
	return &Network{
		seed:      seed,
		done:      make(chan struct{}),
		endpoints: make(map[ids.NodeID]*Endpoint),
		links:     make(map[linkKey]*link),
		faults:    make(map[linkKey]LinkFaults),
		cuts:      make(map[linkKey]struct{}),
		isolated:  make(map[ids.NodeID]struct{}),
		snaps:     make(map[*snapshot]struct{}),
	}
}

// Seed returns the seed the network was created with.
func (n *Network) Seed() int64 { return n.seed }

// Close stops the network: queued batches are discarded (counted as
// DroppedClosed), snapshot streams fail with transport.ErrClosed, and every
// goroutine the network owns has exited when Close returns, so no handler is
// running or will run again. Later calls on the network or its endpoints
// return transport.ErrClosed. Close is idempotent. It must not be called from
// a handler or hook, which it would wait for.
func (n *Network) Close() {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		n.wg.Wait()
		return
	}
	n.closed = true
	snaps := make([]*snapshot, 0, len(n.snaps))
	for s := range n.snaps {
		snaps = append(snaps, s)
	}
	n.mu.Unlock()
	close(n.done)
	for _, s := range snaps {
		s.abort(transport.ErrClosed)
	}
	n.wg.Wait()
}

// Endpoint registers node with handler h and returns its transport. Closing
// the returned endpoint unregisters the node; calling Endpoint again with
// the same ID then models a restarted process. If node already has an open
// endpoint, that endpoint is closed first (a crash followed by a restart),
// so there is never more than one live incarnation of a node.
//
// A nil h registers a node that discards raft batches and refuses
// snapshots. On a closed network the returned endpoint is closed. Like
// Close, replacing a live incarnation must not be done from that
// incarnation's own handler.
func (n *Network) Endpoint(node ids.NodeID, h transport.Handler) *Endpoint {
	if h == nil {
		h = discardHandler{}
	}
	for {
		n.mu.Lock()
		if n.closed {
			n.mu.Unlock()
			return &Endpoint{n: n, node: node, h: h, closed: true}
		}
		old := n.endpoints[node]
		if old == nil {
			e := &Endpoint{n: n, node: node, h: h}
			n.endpoints[node] = e
			n.mu.Unlock()
			return e
		}
		n.mu.Unlock()
		// Close waits for the old handler's calls; retry in case another
		// goroutine registered the node meanwhile.
		_ = old.Close()
	}
}

// SetLink sets the faults of the link from → to, overriding SetAllLinks for
// that link. It applies to batches sent after it returns.
func (n *Network) SetLink(from, to ids.NodeID, f LinkFaults) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.faults[linkKey{from, to}] = f.sanitize()
}

// SetAllLinks gives every link, present and future, the faults f, replacing
// any per-link setting.
func (n *Network) SetAllLinks(f LinkFaults) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.defaults = f.sanitize()
	clear(n.faults)
}

// ClearFaults makes every link perfect again. Partitions are not affected.
func (n *Network) ClearFaults() { n.SetAllLinks(LinkFaults{}) }

// SetHook installs a per-message delivery hook; nil removes it.
func (n *Network) SetHook(h Hook) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.hook = h
}

// SetSnapshotBandwidth limits each snapshot stream to bytesPerSec; zero or
// less removes the limit. Tests use it to make a snapshot last long enough to
// check that raft traffic keeps flowing beside it.
func (n *Network) SetSnapshotBandwidth(bytesPerSec int) {
	n.bandwidth.Store(int64(max(bytesPerSec, 0)))
}

// Partition cuts every link between a node of a and a node of b, in both
// directions. Links within a or within b, and a node's link to itself, stay
// up.
func (n *Network) Partition(a, b []ids.NodeID) {
	n.cut(func() {
		for _, x := range a {
			for _, y := range b {
				if x != y {
					n.cuts[linkKey{x, y}] = struct{}{}
					n.cuts[linkKey{y, x}] = struct{}{}
				}
			}
		}
	})
}

// Isolate cuts node from every other node, including nodes registered
// later, in both directions, until Heal.
func (n *Network) Isolate(node ids.NodeID) {
	n.cut(func() { n.isolated[node] = struct{}{} })
}

// CutLink cuts the link from → to in that direction only: to still reaches
// from.
func (n *Network) CutLink(from, to ids.NodeID) {
	n.cut(func() { n.cuts[linkKey{from, to}] = struct{}{} })
}

// Heal removes every cut made by Partition, Isolate and CutLink. Link faults
// stay.
func (n *Network) Heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	clear(n.cuts)
	clear(n.isolated)
}

// cut applies change under the lock, then fails every snapshot stream whose
// link is now cut, so a transfer across a new partition ends promptly
// instead of running to completion.
func (n *Network) cut(change func()) {
	n.mu.Lock()
	change()
	var victims []*snapshot
	for s := range n.snaps {
		if n.cutLocked(s.key) {
			victims = append(victims, s)
		}
	}
	n.mu.Unlock()
	for _, s := range victims {
		s.abort(transport.ErrUnreachable)
	}
}

// cutLocked reports whether link k is cut. A node's link to itself is never
// cut: a process does not partition from itself.
func (n *Network) cutLocked(k linkKey) bool {
	if k.from == k.to {
		return false
	}
	if _, ok := n.cuts[k]; ok {
		return true
	}
	_, fromIso := n.isolated[k.from]
	_, toIso := n.isolated[k.to]
	return fromIso || toIso
}

func (n *Network) faultsLocked(k linkKey) LinkFaults {
	if f, ok := n.faults[k]; ok {
		return f
	}
	return n.defaults
}

// link returns the link k, creating it and starting its scheduler on first
// use, or nil if the network is closed.
func (n *Network) link(k linkKey) *link {
	n.mu.RLock()
	l := n.links[k]
	n.mu.RUnlock()
	if l != nil {
		return l
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if l := n.links[k]; l != nil {
		return l
	}
	if n.closed {
		return nil
	}
	l = newLink(n, k)
	n.links[k] = l
	n.wg.Add(1)
	go l.run()
	return l
}

// Stats returns the counters summed over every link.
func (n *Network) Stats() Stats {
	n.mu.RLock()
	defer n.mu.RUnlock()
	var s Stats
	for _, l := range n.links {
		s.add(l.stats.load())
	}
	return s
}

// LinkStats returns the counters of the link from → to.
func (n *Network) LinkStats(from, to ids.NodeID) Stats {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if l := n.links[linkKey{from, to}]; l != nil {
		return l.stats.load()
	}
	return Stats{}
}

// Stats counts traffic. Batch counters count each batch once per copy (a
// duplicate is one more batch); snapshot counters count SendSnapshot calls
// that got past the closed checks.
type Stats struct {
	Sent            uint64 // batches accepted by Send, including those dropped at once
	SentMessages    uint64 // messages in those batches
	Delivered       uint64 // batches handed to a handler
	DeliveredMsgs   uint64 // messages in those batches
	Duplicated      uint64 // extra copies created by DuplicateRate
	DroppedFault    uint64 // batches lost to DropRate
	DroppedCut      uint64 // batches sent on, or in flight over, a cut link
	DroppedUnknown  uint64 // batches to a node with no endpoint, or whose endpoint closed before delivery
	DroppedOverflow uint64 // batches refused because the link queue was full
	DroppedHook     uint64 // batches whose every message the hook removed
	DroppedClosed   uint64 // batches still queued when the network closed
	DecodeErrors    uint64 // batches refused by transport.DecodeBatch
	HookRemoved     uint64 // messages removed by the hook
	SnapshotsOK     uint64 // snapshot streams the receiver accepted
	SnapshotsFailed uint64 // snapshot streams that failed for any reason
}

// Conserved reports whether every batch is accounted for: Sent plus
// Duplicated equals Delivered plus every drop. It holds once the network is
// closed. While the network runs, batches in flight are in no outcome
// counter, so on Stats taken from a live network Conserved means that
// nothing was in flight at some instant during the Stats call: tests poll it
// to wait until the network is idle.
func (s Stats) Conserved() bool {
	return s.Sent+s.Duplicated == s.Delivered+s.DroppedFault+s.DroppedCut+
		s.DroppedUnknown+s.DroppedOverflow+s.DroppedHook+s.DroppedClosed+s.DecodeErrors
}

func (s *Stats) add(o Stats) {
	s.Sent += o.Sent
	s.SentMessages += o.SentMessages
	s.Delivered += o.Delivered
	s.DeliveredMsgs += o.DeliveredMsgs
	s.Duplicated += o.Duplicated
	s.DroppedFault += o.DroppedFault
	s.DroppedCut += o.DroppedCut
	s.DroppedUnknown += o.DroppedUnknown
	s.DroppedOverflow += o.DroppedOverflow
	s.DroppedHook += o.DroppedHook
	s.DroppedClosed += o.DroppedClosed
	s.DecodeErrors += o.DecodeErrors
	s.HookRemoved += o.HookRemoved
	s.SnapshotsOK += o.SnapshotsOK
	s.SnapshotsFailed += o.SnapshotsFailed
}

// counters is the live, atomically updated form of Stats for one link.
type counters struct {
	sent, sentMsgs, delivered, deliveredMsgs, duplicated                   atomic.Uint64
	droppedFault, droppedCut, droppedUnknown, droppedOverflow, droppedHook atomic.Uint64
	droppedClosed, decodeErrors, hookRemoved, snapshotsOK, snapshotsFailed atomic.Uint64
}

// load reads every outcome counter before the input counters (Sent,
// Duplicated). A batch is counted as input before its outcome, so outcomes
// never exceed inputs at any instant, and reading in this order makes
// equality prove that the link was idle at the moment between the two
// groups of reads; reading inputs first could show a batch's outcome without
// its duplicate's and look idle while a copy is still in flight.
func (c *counters) load() Stats {
	s := Stats{
		Delivered:       c.delivered.Load(),
		DeliveredMsgs:   c.deliveredMsgs.Load(),
		DroppedFault:    c.droppedFault.Load(),
		DroppedCut:      c.droppedCut.Load(),
		DroppedUnknown:  c.droppedUnknown.Load(),
		DroppedOverflow: c.droppedOverflow.Load(),
		DroppedHook:     c.droppedHook.Load(),
		DroppedClosed:   c.droppedClosed.Load(),
		DecodeErrors:    c.decodeErrors.Load(),
		HookRemoved:     c.hookRemoved.Load(),
		SnapshotsOK:     c.snapshotsOK.Load(),
		SnapshotsFailed: c.snapshotsFailed.Load(),
	}
	s.Duplicated = c.duplicated.Load()
	s.Sent = c.sent.Load()
	s.SentMessages = c.sentMsgs.Load()
	return s
}

// linkRand returns the random source of link k: seeded by the network seed
// and a mix of the link's endpoints, so each link has its own reproducible
// sequence.
func linkRand(seed int64, k linkKey) *rand.Rand {
	return rand.New(rand.NewPCG(uint64(seed), splitmix64(splitmix64(uint64(k.from))^uint64(k.to))))
}

// splitmix64 is the SplitMix64 finalizer: a cheap bijective mix so that
// nearby node IDs give unrelated streams.
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// errNoHandler is returned to a snapshot sender whose receiver registered
// without a handler.
var errNoHandler = errors.New("memnet: receiver has no handler")
