package memnet

import (
	"errors"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

func TestCleanLinkDeliversInOrder(t *testing.T) {
	n := New(1)
	defer n.Close()
	a := n.Endpoint(1, nil)
	r := &recorder{}
	n.Endpoint(2, r)

	const batches = 3000
	var seq uint64
	buf := make([]transport.Message, 0, 3)
	for i := range batches {
		buf = buf[:0]
		for range i%3 + 1 {
			buf = append(buf, hb(seq, ids.GroupID(seq%7)))
			seq++
		}
		send(t, a, 2, buf...)
		// The sender may reuse its slice as soon as Send returns.
		for j := range buf {
			buf[j].Msg.Commit = math.MaxUint64
			buf[j].Group = 99
		}
	}
	waitIdle(t, n)

	got := r.messages()
	if len(got) != int(seq) {
		t.Fatalf("got %d messages, want %d", len(got), seq)
	}
	for i, m := range got {
		want := hb(uint64(i), ids.GroupID(uint64(i)%7))
		if m.Group != want.Group || m.Msg.Commit != want.Msg.Commit || m.Msg.Type != want.Msg.Type {
			t.Fatalf("message %d = %v/%v, want %v/%v", i, m.Group, m.Msg.Commit, want.Group, want.Msg.Commit)
		}
	}
	r.mu.Lock()
	nb := len(r.batches)
	for _, f := range r.froms {
		if f != 1 {
			t.Errorf("batch from %s, want n1", f)
		}
	}
	r.mu.Unlock()
	if nb != batches {
		t.Errorf("got %d batches, want %d (batches must not be split or merged)", nb, batches)
	}
	s := n.LinkStats(1, 2)
	if s.Sent != batches || s.Delivered != batches || s.SentMessages != seq || s.DeliveredMsgs != seq {
		t.Errorf("link stats = %+v", s)
	}
	if s2 := n.LinkStats(2, 1); s2 != (Stats{}) {
		t.Errorf("reverse link stats = %+v, want zero", s2)
	}
}

func TestDropRate(t *testing.T) {
	n := New(7)
	defer n.Close()
	a := n.Endpoint(1, nil)
	r := &recorder{}
	n.Endpoint(2, r)
	n.SetLink(1, 2, LinkFaults{DropRate: 0.25})

	const total = 20000
	for i := range total {
		send(t, a, 2, hb(uint64(i), 1))
		if i%1000 == 999 {
			waitIdle(t, n) // stay far from the queue limit
		}
	}
	waitIdle(t, n)
	s := n.Stats()
	rate := float64(s.DroppedFault) / total
	// 20000 trials at p=0.25: sigma is 0.003, so this is over 9 sigma.
	if rate < 0.22 || rate > 0.28 {
		t.Errorf("drop rate %.3f, want about 0.25", rate)
	}
	if got := r.count(); uint64(got) != s.Delivered || s.Delivered+s.DroppedFault != total {
		t.Errorf("delivered %d (recorder %d) + dropped %d != %d", s.Delivered, got, s.DroppedFault, total)
	}
	if inv := inversions(r.messages()); inv != 0 {
		t.Errorf("%d inversions on a link without reordering", inv)
	}
}

func TestDuplicates(t *testing.T) {
	n := New(3)
	defer n.Close()
	a := n.Endpoint(1, nil)
	r := &recorder{}
	n.Endpoint(2, r)
	n.SetLink(1, 2, LinkFaults{DuplicateRate: 1})

	const total = 500
	for i := range total {
		send(t, a, 2, hb(uint64(i), 1))
	}
	waitIdle(t, n)
	seen := make(map[uint64]int)
	for _, m := range r.messages() {
		seen[m.Msg.Commit]++
	}
	for i := range uint64(total) {
		if seen[i] != 2 {
			t.Fatalf("message %d delivered %d times, want 2", i, seen[i])
		}
	}
	if s := n.Stats(); s.Duplicated != total || s.Delivered != 2*total {
		t.Errorf("stats = %+v", s)
	}
}

func TestFixedDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := New(1)
		defer n.Close()
		a := n.Endpoint(1, nil)
		r := &recorder{}
		n.Endpoint(2, r)
		n.SetLink(1, 2, LinkFaults{MinDelay: 100 * time.Millisecond, MaxDelay: 100 * time.Millisecond})

		send(t, a, 2, hb(0, 1))
		time.Sleep(99 * time.Millisecond)
		synctest.Wait()
		if got := r.count(); got != 0 {
			t.Fatalf("delivered %d messages before the delay", got)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if got := r.count(); got != 1 {
			t.Fatalf("delivered %d messages at the delay, want 1", got)
		}
		// The reverse link has no delay.
		b := n.Endpoint(3, nil)
		n.Endpoint(1, r) // replaces a: a restart with a handler
		send(t, b, 1, hb(1, 1))
		synctest.Wait()
		if got := r.count(); got != 2 {
			t.Fatalf("undelayed link delivered %d, want 2", got-1)
		}
	})
}

func TestDelayRange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := New(5)
		defer n.Close()
		a := n.Endpoint(1, nil)
		r := &recorder{}
		n.Endpoint(2, r)
		const lo, hi = 20 * time.Millisecond, 60 * time.Millisecond
		n.SetLink(1, 2, LinkFaults{MinDelay: lo, MaxDelay: hi})
		start := time.Now()
		for i := range 200 {
			send(t, a, 2, hb(uint64(i), 1))
		}
		time.Sleep(time.Second)
		synctest.Wait()
		r.mu.Lock()
		defer r.mu.Unlock()
		if len(r.at) != 200 {
			t.Fatalf("delivered %d, want 200", len(r.at))
		}
		distinct := make(map[time.Duration]bool)
		for i, at := range r.at {
			d := at.Sub(start)
			if d < lo || d > hi {
				t.Errorf("message %d delayed %v, want in [%v, %v]", i, d, lo, hi)
			}
			distinct[d] = true
		}
		if len(distinct) < 5 {
			t.Errorf("only %d distinct delays: not drawn from the range", len(distinct))
		}
		if inv := inversions(r.msgs); inv != 0 {
			t.Errorf("jitter reordered %d messages", inv)
		}
	})
}

func TestDelayRealClock(t *testing.T) {
	n := New(1)
	defer n.Close()
	a := n.Endpoint(1, nil)
	r := &recorder{}
	n.Endpoint(2, r)
	const d = 30 * time.Millisecond
	n.SetAllLinks(LinkFaults{MinDelay: d, MaxDelay: d})
	start := time.Now()
	send(t, a, 2, hb(0, 1))
	waitFor(t, 5*time.Second, "delivery", func() bool { return r.count() == 1 })
	if el := time.Since(start); el < d {
		t.Errorf("delivered after %v, want at least %v", el, d)
	}
}

func TestReorder(t *testing.T) {
	n := New(11)
	defer n.Close()
	a := n.Endpoint(1, nil)
	r := &recorder{}
	n.Endpoint(2, r)
	n.SetLink(1, 2, LinkFaults{ReorderRate: 0.2})
	const total = 2000
	for i := range total {
		send(t, a, 2, hb(uint64(i), 1))
	}
	waitIdle(t, n)
	got := r.messages()
	if len(got) != total {
		t.Fatalf("delivered %d, want %d: reordering must not lose batches", len(got), total)
	}
	if inv := inversions(got); inv == 0 {
		t.Errorf("no batch overtaken with ReorderRate 0.2")
	}
	seqs := make([]uint64, len(got))
	for i, m := range got {
		seqs[i] = m.Msg.Commit
	}
	slices.Sort(seqs)
	for i, s := range seqs {
		if s != uint64(i) {
			t.Fatalf("sorted sequence %d = %d: lost or duplicated", i, s)
		}
	}
}

func TestJitterKeepsFIFO(t *testing.T) {
	n := New(2)
	defer n.Close()
	a := n.Endpoint(1, nil)
	r := &recorder{}
	n.Endpoint(2, r)
	n.SetLink(1, 2, LinkFaults{MaxDelay: 3 * time.Millisecond})
	for i := range 1000 {
		send(t, a, 2, hb(uint64(i), 1))
	}
	waitIdle(t, n)
	if got := r.messages(); len(got) != 1000 || inversions(got) != 0 {
		t.Errorf("delivered %d with %d inversions, want 1000 in order", len(got), inversions(got))
	}
}

// deliveredSequence runs a fixed sequential workload on a faulty link inside
// a synctest bubble, where time stands still while the test sends, and
// returns the order in which messages arrived.
func deliveredSequence(t *testing.T, seed int64) []uint64 {
	var out []uint64
	synctest.Test(t, func(t *testing.T) {
		n := New(seed)
		defer n.Close()
		a := n.Endpoint(1, nil)
		r := &recorder{}
		n.Endpoint(2, r)
		n.SetLink(1, 2, LinkFaults{
			DropRate: 0.2, DuplicateRate: 0.2, ReorderRate: 0.2,
			MinDelay: time.Millisecond, MaxDelay: 10 * time.Millisecond,
		})
		for i := range 500 {
			send(t, a, 2, hb(uint64(i), 1))
			if i%50 == 0 {
				time.Sleep(3 * time.Millisecond)
			}
		}
		time.Sleep(time.Second)
		synctest.Wait()
		for _, m := range r.messages() {
			out = append(out, m.Msg.Commit)
		}
	})
	return out
}

func TestDeterministicPerSeed(t *testing.T) {
	a, b := deliveredSequence(t, 42), deliveredSequence(t, 42)
	if !slices.Equal(a, b) {
		t.Errorf("same seed, different deliveries:\n%v\n%v", a, b)
	}
	if c := deliveredSequence(t, 43); slices.Equal(a, c) {
		t.Errorf("different seeds gave identical deliveries")
	}
}

func TestPartitionAndHeal(t *testing.T) {
	n := New(1)
	defer n.Close()
	var r [4]*recorder
	var e [4]*Endpoint
	for i := 1; i <= 3; i++ {
		r[i] = &recorder{}
		e[i] = n.Endpoint(ids.NodeID(i), r[i])
	}
	// deliveredOn sends one message on each ordered link, waits, and
	// reports which links carried it.
	var seq uint64
	deliveredOn := func() map[[2]int]bool {
		t.Helper()
		before := [4]int{}
		for i := 1; i <= 3; i++ {
			before[i] = r[i].count()
		}
		want := make(map[uint64][2]int)
		for i := 1; i <= 3; i++ {
			for j := 1; j <= 3; j++ {
				if i != j {
					send(t, e[i], ids.NodeID(j), hb(seq, 1))
					want[seq] = [2]int{i, j}
					seq++
				}
			}
		}
		waitIdle(t, n)
		got := make(map[[2]int]bool)
		for j := 1; j <= 3; j++ {
			for _, m := range r[j].messages()[before[j]:] {
				got[want[m.Msg.Commit]] = true
			}
		}
		return got
	}
	all := func(except ...[2]int) map[[2]int]bool {
		m := make(map[[2]int]bool)
		for i := 1; i <= 3; i++ {
			for j := 1; j <= 3; j++ {
				if i != j && !slices.Contains(except, [2]int{i, j}) {
					m[[2]int{i, j}] = true
				}
			}
		}
		return m
	}
	check := func(name string, want map[[2]int]bool) {
		t.Helper()
		if got := deliveredOn(); !mapsEqual(got, want) {
			t.Errorf("%s: links that delivered = %v, want %v", name, got, want)
		}
	}

	check("clean", all())
	n.Partition([]ids.NodeID{1}, []ids.NodeID{2, 3})
	check("partition {1} | {2,3}", all([2]int{1, 2}, [2]int{2, 1}, [2]int{1, 3}, [2]int{3, 1}))
	n.Heal()
	check("healed", all())
	n.CutLink(1, 2)
	check("one-way cut 1→2", all([2]int{1, 2}))
	n.Heal()
	n.Isolate(3)
	check("isolate 3", all([2]int{1, 3}, [2]int{3, 1}, [2]int{2, 3}, [2]int{3, 2}))
	n.Heal()
	check("healed again", all())
	if s := n.Stats(); s.DroppedCut != 9 {
		t.Errorf("DroppedCut = %d, want 9", s.DroppedCut)
	}
}

func mapsEqual(a, b map[[2]int]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func TestCutDropsInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := New(1)
		defer n.Close()
		a := n.Endpoint(1, nil)
		r := &recorder{}
		n.Endpoint(2, r)
		n.SetLink(1, 2, LinkFaults{MinDelay: 50 * time.Millisecond, MaxDelay: 50 * time.Millisecond})
		send(t, a, 2, hb(0, 1))
		n.CutLink(1, 2)
		time.Sleep(100 * time.Millisecond)
		synctest.Wait()
		if r.count() != 0 {
			t.Fatal("a batch in flight crossed a link cut before its delivery")
		}
		n.Heal()
		send(t, a, 2, hb(1, 1))
		time.Sleep(100 * time.Millisecond)
		synctest.Wait()
		if got := r.messages(); len(got) != 1 || got[0].Msg.Commit != 1 {
			t.Fatalf("after heal got %v", got)
		}
		if s := n.Stats(); s.DroppedCut != 1 {
			t.Errorf("DroppedCut = %d, want 1", s.DroppedCut)
		}
	})
}

func TestFaultsSurviveHealAndClear(t *testing.T) {
	n := New(1)
	defer n.Close()
	a := n.Endpoint(1, nil)
	r := &recorder{}
	n.Endpoint(2, r)
	n.SetLink(1, 2, LinkFaults{DropRate: 1})
	n.Isolate(2)
	n.Heal()
	send(t, a, 2, hb(0, 1))
	waitIdle(t, n)
	if r.count() != 0 {
		t.Fatal("Heal removed link faults")
	}
	n.ClearFaults()
	send(t, a, 2, hb(1, 1))
	waitIdle(t, n)
	if r.count() != 1 {
		t.Fatal("ClearFaults left faults")
	}
	n.SetAllLinks(LinkFaults{DropRate: 1})
	send(t, a, 2, hb(2, 1))
	waitIdle(t, n)
	if r.count() != 1 {
		t.Fatal("SetAllLinks did not apply")
	}
	if s := n.Stats(); s.DroppedFault != 2 || s.Delivered != 1 {
		t.Errorf("stats = %+v", s)
	}
}

func TestInvalidFaultsAreClamped(t *testing.T) {
	n := New(1)
	defer n.Close()
	a := n.Endpoint(1, nil)
	r := &recorder{}
	n.Endpoint(2, r)
	n.SetLink(1, 2, LinkFaults{
		DropRate: math.NaN(), DuplicateRate: -1, ReorderRate: math.Inf(-1),
		MinDelay: -time.Second, MaxDelay: -2 * time.Second, ReorderHold: -1,
	})
	for i := range 100 {
		send(t, a, 2, hb(uint64(i), 1))
	}
	waitIdle(t, n)
	if got := r.messages(); len(got) != 100 || inversions(got) != 0 {
		t.Errorf("nonsense faults did not behave as a clean link: %d delivered", len(got))
	}
	n.SetLink(1, 2, LinkFaults{DropRate: 7})
	send(t, a, 2, hb(100, 1))
	waitIdle(t, n)
	if r.count() != 100 {
		t.Error("DropRate above 1 did not drop")
	}
}

func TestUnknownDestination(t *testing.T) {
	n := New(1)
	defer n.Close()
	a := n.Endpoint(1, nil)
	if err := a.Send(9, []transport.Message{hb(0, 1)}); err != nil {
		t.Fatalf("Send to unknown node: %v, want nil", err)
	}
	if err := a.Send(9, nil); err != nil {
		t.Fatalf("empty Send: %v", err)
	}
	if s := n.LinkStats(1, 9); s.Sent != 1 || s.DroppedUnknown != 1 {
		t.Errorf("stats = %+v", s)
	}
}

func TestHook(t *testing.T) {
	n := New(1)
	defer n.Close()
	a := n.Endpoint(1, nil)
	r := &recorder{}
	n.Endpoint(2, r)
	var calls atomic.Int64
	n.SetHook(func(from, to ids.NodeID, m *transport.Message) bool {
		calls.Add(1)
		if from != 1 || to != 2 {
			t.Errorf("hook called for %s→%s", from, to)
		}
		return m.Group == 7
	})
	send(t, a, 2, hb(0, 7), hb(1, 1), hb(2, 7))
	send(t, a, 2, hb(3, 7))
	send(t, a, 2, hb(4, 2))
	waitIdle(t, n)
	var got []uint64
	for _, m := range r.messages() {
		got = append(got, m.Msg.Commit)
	}
	if !slices.Equal(got, []uint64{1, 4}) {
		t.Errorf("delivered %v, want [1 4]", got)
	}
	s := n.Stats()
	if calls.Load() != 5 || s.HookRemoved != 3 || s.DroppedHook != 1 || s.Delivered != 2 {
		t.Errorf("hook calls %d, stats %+v", calls.Load(), s)
	}
	n.SetHook(nil)
	send(t, a, 2, hb(5, 7))
	waitIdle(t, n)
	if r.count() != 3 {
		t.Error("hook still active after SetHook(nil)")
	}
}

func TestDecodeErrorIsCounted(t *testing.T) {
	n := New(1)
	defer n.Close()
	a := n.Endpoint(1, nil)
	r := &recorder{}
	n.Endpoint(2, r)
	// A proposal must never cross the network: DecodeBatch refuses it.
	prop := transport.Message{Group: 1, Msg: raftpb.Message{Type: raftpb.MsgProp, From: 1, To: 2}}
	send(t, a, 2, hb(0, 1), prop)
	send(t, a, 2, hb(1, 1))
	waitIdle(t, n)
	if got := r.messages(); len(got) != 1 || got[0].Msg.Commit != 1 {
		t.Errorf("delivered %v, want only the valid batch", got)
	}
	if s := n.Stats(); s.DecodeErrors != 1 {
		t.Errorf("DecodeErrors = %d, want 1", s.DecodeErrors)
	}
}

func TestQueueOverflow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := New(1)
		a := n.Endpoint(1, nil)
		n.Endpoint(2, &recorder{})
		n.SetLink(1, 2, LinkFaults{MinDelay: time.Hour, MaxDelay: time.Hour})
		const total = QueueLimit + 904
		for i := range total {
			send(t, a, 2, hb(uint64(i), 1))
		}
		if s := n.Stats(); s.DroppedOverflow != 904 {
			t.Errorf("DroppedOverflow = %d, want 904", s.DroppedOverflow)
		}
		n.Close()
		s := n.Stats()
		if s.DroppedClosed != QueueLimit || !s.Conserved() {
			t.Errorf("after Close: %+v", s)
		}
	})
}

func TestEndpointCloseAndRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := New(1)
		defer n.Close()
		a := n.Endpoint(1, nil)
		old := &recorder{}
		e2 := n.Endpoint(2, old)
		n.SetLink(1, 2, LinkFaults{MinDelay: 50 * time.Millisecond, MaxDelay: 50 * time.Millisecond})
		send(t, a, 2, hb(0, 1)) // in flight to the old incarnation
		if err := e2.Close(); err != nil {
			t.Fatal(err)
		}
		old.closed.Store(true)
		if err := e2.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if err := e2.Send(1, []transport.Message{hb(9, 1)}); !errors.Is(err, transport.ErrClosed) {
			t.Errorf("Send on closed endpoint: %v, want ErrClosed", err)
		}
		send(t, a, 2, hb(1, 1)) // to no one
		fresh := &recorder{}
		n.Endpoint(2, fresh)
		time.Sleep(time.Second)
		synctest.Wait()
		if fresh.count() != 0 || old.count() != 0 {
			t.Fatalf("traffic for the old incarnation delivered: old %d, new %d", old.count(), fresh.count())
		}
		send(t, a, 2, hb(2, 1))
		time.Sleep(time.Second)
		synctest.Wait()
		if got := fresh.messages(); len(got) != 1 || got[0].Msg.Commit != 2 {
			t.Fatalf("restarted node got %v", got)
		}
		if s := n.Stats(); s.DroppedUnknown != 2 {
			t.Errorf("DroppedUnknown = %d, want 2", s.DroppedUnknown)
		}
	})
}

// blockingHandler blocks in HandleRaft until released, to observe that Close
// waits for a running handler.
type blockingHandler struct {
	recorder
	entered chan struct{}
	release chan struct{}
}

func (h *blockingHandler) HandleRaft(from ids.NodeID, msgs []transport.Message) {
	h.entered <- struct{}{}
	<-h.release
	h.recorder.HandleRaft(from, msgs)
}

func TestEndpointCloseWaitsForHandler(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := New(1)
		defer n.Close()
		a := n.Endpoint(1, nil)
		h := &blockingHandler{entered: make(chan struct{}), release: make(chan struct{})}
		e2 := n.Endpoint(2, h)
		send(t, a, 2, hb(0, 1))
		send(t, a, 2, hb(1, 1))
		<-h.entered
		var closed atomic.Bool
		go func() {
			_ = e2.Close()
			closed.Store(true)
		}()
		synctest.Wait()
		if closed.Load() {
			t.Fatal("Close returned while a handler call was running")
		}
		close(h.release)
		synctest.Wait()
		if !closed.Load() {
			t.Fatal("Close did not return after the handler did")
		}
		if got := h.count(); got != 1 {
			t.Errorf("handler got %d messages, want 1: the queued batch must be discarded", got)
		}
	})
}

func TestRestartStress(t *testing.T) {
	n := New(1)
	defer n.Close()
	a := n.Endpoint(1, nil)
	n.SetLink(1, 2, LinkFaults{MaxDelay: time.Millisecond, DuplicateRate: 0.1})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := uint64(0); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_ = a.Send(2, []transport.Message{hb(i, 1)})
			if i%64 == 0 {
				time.Sleep(50 * time.Microsecond)
			}
		}
	})
	var olds []*recorder
	for range 100 {
		r := &recorder{}
		e := n.Endpoint(2, r)
		time.Sleep(200 * time.Microsecond)
		_ = e.Close()
		r.closed.Store(true)
		olds = append(olds, r)
	}
	close(stop)
	wg.Wait()
	time.Sleep(5 * time.Millisecond)
	var got int
	for i, r := range olds {
		if l := r.late.Load(); l != 0 {
			t.Errorf("incarnation %d called %d times after Close", i, l)
		}
		got += r.count()
	}
	if got == 0 {
		t.Error("no incarnation received anything: the test exercised nothing")
	}
}

func TestEndpointReplacesLiveIncarnation(t *testing.T) {
	n := New(1)
	defer n.Close()
	a := n.Endpoint(1, nil)
	old := &recorder{}
	e1 := n.Endpoint(2, old)
	fresh := &recorder{}
	n.Endpoint(2, fresh)
	if err := e1.Send(1, []transport.Message{hb(0, 1)}); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("replaced endpoint Send: %v, want ErrClosed", err)
	}
	send(t, a, 2, hb(1, 1))
	waitIdle(t, n)
	if old.count() != 0 || fresh.count() != 1 {
		t.Errorf("old got %d, new got %d", old.count(), fresh.count())
	}
}

func TestUseAfterNetworkClose(t *testing.T) {
	n := New(1)
	a := n.Endpoint(1, nil)
	n.Endpoint(2, &recorder{})
	send(t, a, 2, hb(0, 1))
	n.Close()
	n.Close() // idempotent
	if err := a.Send(2, []transport.Message{hb(1, 1)}); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Send after Close: %v", err)
	}
	if err := a.Send(3, []transport.Message{hb(1, 1)}); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Send on a new link after Close: %v", err)
	}
	if err := a.SendSnapshot(t.Context(), 2, nil); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("SendSnapshot after Close: %v", err)
	}
	late := n.Endpoint(5, &recorder{})
	if err := late.Send(1, []transport.Message{hb(1, 1)}); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Send on an endpoint made after Close: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Errorf("endpoint Close after network Close: %v", err)
	}
	_ = late.Close()
	// Configuration calls on a closed network are harmless.
	n.SetAllLinks(LinkFaults{DropRate: 0.5})
	n.Partition([]ids.NodeID{1}, []ids.NodeID{2})
	n.Heal()
	if !n.Stats().Conserved() {
		t.Errorf("stats not conserved after Close: %+v", n.Stats())
	}
}

// TestConcurrentChaos runs every operation at once; run it with -race. It
// checks that nothing deadlocks, no old incarnation is called after its
// Close, and every batch is accounted for.
func TestConcurrentChaos(t *testing.T) {
	n := New(99)
	const nodes = 5
	type incarnation struct {
		e *Endpoint
		r *recorder
	}
	var cur [nodes + 1]atomic.Pointer[incarnation]
	var allRecs sync.Map
	register := func(i int) {
		r := &recorder{}
		allRecs.Store(r, true)
		cur[i].Store(&incarnation{n.Endpoint(ids.NodeID(i), r), r})
	}
	for i := 1; i <= nodes; i++ {
		register(i)
	}
	n.SetAllLinks(LinkFaults{DropRate: 0.05, DuplicateRate: 0.05, ReorderRate: 0.05, MaxDelay: 2 * time.Millisecond})
	n.SetSnapshotBandwidth(4 << 20)
	n.SetHook(func(_, _ ids.NodeID, m *transport.Message) bool { return m.Msg.Commit%97 == 0 })

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 1; i <= nodes; i++ {
		wg.Go(func() { // raft traffic
			buf := make([]transport.Message, 4)
			for seq := uint64(0); ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				for j := range buf {
					buf[j] = hb(seq*4+uint64(j), ids.GroupID(j))
				}
				_ = cur[i].Load().e.Send(ids.NodeID(seq%nodes+1), buf)
				if seq%32 == 0 {
					time.Sleep(100 * time.Microsecond)
				}
			}
		})
		wg.Go(func() { // snapshots
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				to := ids.NodeID((i+k)%nodes + 1)
				_ = cur[i].Load().e.SendSnapshot(t.Context(), to, &zeroReader{n: 16 << 10})
			}
		})
	}
	wg.Go(func() { // partitions and faults
		for k := 0; ; k++ {
			select {
			case <-stop:
				return
			default:
			}
			switch k % 5 {
			case 0:
				n.Partition([]ids.NodeID{1, 2}, []ids.NodeID{3, 4, 5})
			case 1:
				n.Isolate(ids.NodeID(k%nodes + 1))
			case 2:
				n.CutLink(ids.NodeID(k%nodes+1), ids.NodeID((k+1)%nodes+1))
			case 3:
				n.SetLink(1, 2, LinkFaults{DropRate: 0.5, MaxDelay: time.Millisecond})
			case 4:
				n.Heal()
			}
			_ = n.Stats()
			time.Sleep(time.Millisecond)
		}
	})
	wg.Go(func() { // restarts
		for k := 0; ; k++ {
			select {
			case <-stop:
				return
			default:
			}
			i := k%nodes + 1
			old := cur[i].Load()
			_ = old.e.Close()
			old.r.closed.Store(true)
			register(i)
			time.Sleep(3 * time.Millisecond)
		}
	})
	time.Sleep(500 * time.Millisecond)
	n.Close()
	close(stop)
	wg.Wait()

	s := n.Stats()
	if !s.Conserved() {
		t.Errorf("batches not conserved: %+v", s)
	}
	if s.Delivered == 0 || s.SnapshotsOK == 0 || s.SnapshotsFailed == 0 || s.DroppedCut == 0 {
		t.Errorf("chaos exercised too little: %+v", s)
	}
	t.Logf("stats: %+v", s)
	allRecs.Range(func(k, _ any) bool {
		if l := k.(*recorder).late.Load(); l != 0 {
			t.Errorf("handler called %d times after Close", l)
		}
		return true
	})
}
