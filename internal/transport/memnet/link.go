package memnet

import (
	"container/heap"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// link is one directed link. Its scheduler goroutine (run) is the only
// goroutine that delivers its batches, so deliveries on one link are
// sequential and follow the heap order; different links deliver
// concurrently. One scheduler per link with a timer heap, rather than a
// goroutine or timer per batch, keeps the cost of a delayed batch to one heap
// entry.
type link struct {
	n     *Network
	key   linkKey
	stats counters
	// wake has room for one token: enqueue leaves one when the scheduler may
	// be sleeping on a later deadline (or none), so it re-examines the heap.
	wake chan struct{}

	mu  sync.Mutex
	rng *rand.Rand
	q   itemHeap
	seq uint64
	// fifo is the delivery time of the last batch sent in FIFO order; a
	// later FIFO batch is never due before it.
	fifo time.Time
	// stopped is set by the scheduler when the network closes; enqueue
	// refuses batches afterwards, so none is left uncounted.
	stopped bool
}

func newLink(n *Network, k linkKey) *link {
	return &link{
		n:    n,
		key:  k,
		wake: make(chan struct{}, 1),
		rng:  linkRand(n.seed, k),
	}
}

// item is one queued batch. buf is owned by the item; dest is the endpoint
// incarnation the batch was addressed to.
type item struct {
	at   time.Time
	seq  uint64
	buf  []byte
	dest *Endpoint
}

// itemHeap orders items by due time, then by send order, which makes
// batches with equal due times FIFO.
type itemHeap []*item

func (h itemHeap) Len() int { return len(h) }
func (h itemHeap) Less(i, j int) bool {
	if !h[i].at.Equal(h[j].at) {
		return h[i].at.Before(h[j].at)
	}
	return h[i].seq < h[j].seq
}
func (h itemHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *itemHeap) Push(x any)   { *h = append(*h, x.(*item)) }
func (h *itemHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return it
}

// enqueue decides the fate of an encoded batch and queues what survives.
// It takes ownership of buf. All random draws happen here, under l.mu, in
// send order, which is what makes a link's behaviour reproducible per seed.
func (l *link) enqueue(buf []byte, nmsgs int, dest *Endpoint, f LinkFaults) error {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return transport.ErrClosed
	}
	l.stats.sent.Add(1)
	l.stats.sentMsgs.Add(uint64(nmsgs))
	if f.DropRate > 0 && l.rng.Float64() < f.DropRate {
		l.stats.droppedFault.Add(1)
		return nil
	}
	copies := 1
	if f.DuplicateRate > 0 && l.rng.Float64() < f.DuplicateRate {
		copies = 2
		l.stats.duplicated.Add(1)
	}
	for i := range copies {
		if len(l.q) >= QueueLimit {
			l.stats.droppedOverflow.Add(1)
			continue
		}
		b := buf
		if i > 0 {
			// Each item owns its buffer; a copy keeps that simple.
			b = append([]byte(nil), buf...)
		}
		at := now
		if f.MaxDelay > 0 {
			at = at.Add(f.MinDelay + time.Duration(l.rng.Int64N(int64(f.MaxDelay-f.MinDelay)+1)))
		}
		if at.Before(l.fifo) {
			at = l.fifo
		}
		if f.ReorderRate > 0 && l.rng.Float64() < f.ReorderRate {
			// Held back outside the FIFO order: later batches are not
			// clamped to it and so overtake it.
			at = at.Add(1 + time.Duration(l.rng.Int64N(int64(f.ReorderHold))))
		} else {
			l.fifo = at
		}
		l.seq++
		heap.Push(&l.q, &item{at: at, seq: l.seq, buf: b, dest: dest})
	}
	select {
	case l.wake <- struct{}{}:
	default:
	}
	return nil
}

// run is the link's scheduler: it sleeps until the earliest batch is due,
// delivers it, and exits when the network closes, counting what it leaves
// behind. Owned by the Network (n.wg).
func (l *link) run() {
	defer l.n.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-l.n.done:
			l.stop()
			return
		default:
		}
		var due *item
		var wait <-chan time.Time
		l.mu.Lock()
		if len(l.q) > 0 {
			if d := time.Until(l.q[0].at); d > 0 {
				// Go 1.23+ timers: Reset needs no drain, and no stale
				// tick is delivered after it.
				timer.Reset(d)
				wait = timer.C
			} else {
				due = heap.Pop(&l.q).(*item)
			}
		}
		l.mu.Unlock()
		if due != nil {
			l.deliver(due)
			continue
		}
		select {
		case <-l.n.done:
			l.stop()
			return
		case <-l.wake:
		case <-wait:
		}
	}
}

// stop refuses further batches and counts the queued ones as discarded.
func (l *link) stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopped = true
	l.stats.droppedClosed.Add(uint64(len(l.q)))
	clear(l.q)
	l.q = nil
}

// deliver hands one due batch to its destination, unless the link is cut,
// the destination incarnation is gone, the batch does not decode or the hook
// removes all of it.
func (l *link) deliver(it *item) {
	n := l.n
	n.mu.RLock()
	cut := n.cutLocked(l.key)
	gone := n.endpoints[l.key.to] != it.dest
	hook := n.hook
	n.mu.RUnlock()
	switch {
	case cut:
		l.stats.droppedCut.Add(1)
		return
	case gone:
		l.stats.droppedUnknown.Add(1)
		return
	}
	msgs, err := transport.DecodeBatch(it.buf)
	// DecodeBatch copied everything out: the buffer can serve another Send.
	putBuf(it.buf)
	it.buf = nil
	if err != nil {
		l.stats.decodeErrors.Add(1)
		return
	}
	if hook != nil {
		kept := msgs[:0]
		for i := range msgs {
			if hook(l.key.from, l.key.to, &msgs[i]) {
				l.stats.hookRemoved.Add(1)
				continue
			}
			kept = append(kept, msgs[i])
		}
		clear(msgs[len(kept):])
		msgs = kept
		if len(msgs) == 0 {
			l.stats.droppedHook.Add(1)
			return
		}
	}
	// Check again: the hook runs unlocked and may have cut the link or
	// closed the endpoint, and acquiring is what makes Close wait for us.
	n.mu.RLock()
	cut = n.cutLocked(l.key)
	ok := !cut && n.endpoints[l.key.to] == it.dest
	if ok {
		it.dest.calls.Add(1)
	}
	n.mu.RUnlock()
	switch {
	case cut:
		l.stats.droppedCut.Add(1)
		return
	case !ok:
		l.stats.droppedUnknown.Add(1)
		return
	}
	nmsgs := len(msgs)
	func() {
		defer it.dest.calls.Done()
		it.dest.h.HandleRaft(l.key.from, msgs)
	}()
	l.stats.delivered.Add(1)
	l.stats.deliveredMsgs.Add(uint64(nmsgs))
}

// bufPool recycles encoded batch buffers between Send and delivery.
var bufPool sync.Pool

func getBuf() []byte {
	if b, ok := bufPool.Get().(*[]byte); ok {
		return (*b)[:0]
	}
	return nil
}

func putBuf(b []byte) {
	if cap(b) > 1<<20 {
		return // keep the pool from pinning rare huge batches
	}
	b = b[:0]
	bufPool.Put(&b)
}
