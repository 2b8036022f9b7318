package client

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// A porcupine model of one key-value register per key with versions: put,
// compare-and-set and get (internal/testcluster's model, without deletes).

type opKind int

const (
	opGet opKind = iota
	opPut
	opCAS
)

type kvIn struct {
	kind      opKind
	key       string
	value     string
	ifVersion uint64 // opCAS: 0 means "only if absent"
}

// kvOut is what the client was told. unknown marks a write whose outcome
// the client never learned: it may take effect at any point after its
// call, or never.
type kvOut struct {
	unknown bool
	ok      bool // cas: the condition held
	found   bool
	value   string
	version uint64 // after a write; the current one for a failed cas or a get
}

type kvState struct {
	exists  bool
	value   string
	version uint64
}

var kvModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(kvIn).key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return kvState{} },
	Step: func(state, input, output any) (bool, any) {
		s, in, out := state.(kvState), input.(kvIn), output.(kvOut)
		next := kvState{exists: true, value: in.value, version: s.version + 1}
		switch in.kind {
		case opGet:
			if !s.exists {
				return !out.found, s
			}
			return out.found && out.value == s.value && out.version == s.version, s
		case opPut:
			return out.unknown || out.version == next.version, next
		case opCAS:
			holds := in.ifVersion == s.version // 0 when absent
			switch {
			case out.unknown && holds:
				return true, next
			case out.unknown:
				return true, s
			case out.ok != holds:
				return false, s
			case !holds:
				return out.version == s.version, s
			}
			return out.version == next.version, next
		}
		return false, s
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(kvIn), output.(kvOut)
		res := fmt.Sprintf("ok=%v found=%v %q@%d", out.ok, out.found, out.value, out.version)
		if out.unknown {
			res = "unknown"
		}
		switch in.kind {
		case opGet:
			return fmt.Sprintf("get(%s) -> %s", in.key, res)
		case opCAS:
			return fmt.Sprintf("cas(%s, %q if %d) -> %s", in.key, in.value, in.ifVersion, res)
		}
		return fmt.Sprintf("put(%s, %q) -> %s", in.key, in.value, res)
	},
	DescribeState: func(state any) string {
		s := state.(kvState)
		if !s.exists {
			return "absent"
		}
		return fmt.Sprintf("%q@%d", s.value, s.version)
	},
}

// history records operations from concurrent clients.
type history struct {
	mu    sync.Mutex
	start time.Time
	ops   []porcupine.Operation
}

func (h *history) now() int64 { return int64(time.Since(h.start)) }

// add records an operation; an unknown outcome never returns.
func (h *history) add(client int, in kvIn, call int64, out kvOut, ret int64) {
	if out.unknown {
		ret = math.MaxInt64
	}
	h.mu.Lock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
	h.mu.Unlock()
}

func checkLinearizable(t *testing.T, ops []porcupine.Operation, timeout time.Duration) {
	t.Helper()
	res, info := porcupine.CheckOperationsVerbose(kvModel, ops, timeout)
	switch res {
	case porcupine.Ok:
	case porcupine.Unknown:
		t.Errorf("linearizability check of %d operations did not finish within %v", len(ops), timeout)
	default:
		path := filepath.Join(os.TempDir(), fmt.Sprintf("nodedb-client-lin-%d.html", time.Now().UnixNano()))
		if err := porcupine.VisualizePath(kvModel, info, path); err == nil {
			t.Errorf("history of %d operations is not linearizable; visualization: %s", len(ops), path)
		} else {
			t.Errorf("history of %d operations is not linearizable (visualization: %v)", len(ops), err)
		}
	}
}

// TestModelChecksValues: the model refuses histories with a lost write, a
// stale read, a made-up value or a duplicated write, so the linearizability
// test below can fail.
func TestModelChecksValues(t *testing.T) {
	put := func(v string, ver uint64, call, ret int64) porcupine.Operation {
		return porcupine.Operation{ClientId: 0, Input: kvIn{kind: opPut, key: "k", value: v}, Call: call, Output: kvOut{version: ver}, Return: ret}
	}
	get := func(v string, ver uint64, call, ret int64) porcupine.Operation {
		return porcupine.Operation{ClientId: 1, Input: kvIn{kind: opGet, key: "k"}, Call: call, Output: kvOut{found: true, value: v, version: ver}, Return: ret}
	}
	for name, tc := range map[string]struct {
		ops  []porcupine.Operation
		want bool
	}{
		"ok":              {[]porcupine.Operation{put("a", 1, 0, 1), get("a", 1, 2, 3), put("b", 2, 4, 5), get("b", 2, 6, 7)}, true},
		"concurrent":      {[]porcupine.Operation{put("a", 1, 0, 10), get("a", 1, 2, 3)}, true},
		"stale read":      {[]porcupine.Operation{put("a", 1, 0, 1), put("b", 2, 2, 3), get("a", 1, 4, 5)}, false},
		"made-up value":   {[]porcupine.Operation{put("a", 1, 0, 1), get("x", 1, 2, 3)}, false},
		"applied twice":   {[]porcupine.Operation{put("a", 1, 0, 1), put("b", 3, 2, 3)}, false},
		"read before put": {[]porcupine.Operation{get("a", 1, 0, 1), put("a", 1, 2, 3)}, false},
		"unknown may apply": {[]porcupine.Operation{
			{ClientId: 0, Input: kvIn{kind: opPut, key: "k", value: "u"}, Call: 0, Output: kvOut{unknown: true}, Return: math.MaxInt64},
			get("u", 1, 2, 3)}, true},
		"cas": {[]porcupine.Operation{put("a", 1, 0, 1),
			{ClientId: 2, Input: kvIn{kind: opCAS, key: "k", value: "c", ifVersion: 1}, Call: 2, Output: kvOut{ok: true, version: 2}, Return: 3},
			{ClientId: 2, Input: kvIn{kind: opCAS, key: "k", value: "d", ifVersion: 1}, Call: 4, Output: kvOut{ok: true, version: 3}, Return: 5}}, false},
	} {
		if got := porcupine.CheckOperations(kvModel, tc.ops); got != tc.want {
			t.Errorf("%s: linearizable %v, want %v", name, got, tc.want)
		}
	}
}

// TestLinearizableWhileLeadersMove: eight goroutines put, compare-and-set
// and get a few keys for 6s while leaderships move every 300ms and, midway,
// a node stops. The history must be linearizable, and every key's final
// version must be explained by the writes that were acknowledged or whose
// outcome is unknown: no write applied twice, none lost.
func TestLinearizableWhileLeadersMove(t *testing.T) {
	c := startCluster(t, 3, 20*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	// One key per group, and one more.
	byGroup, groups := c.keysByGroup("lin/", 2)
	var keys []string
	for _, g := range groups {
		keys = append(keys, byGroup[g][0])
	}
	keys = append(keys, byGroup[groups[0]][1])

	const (
		workers  = 8
		duration = 6 * time.Second
	)
	h := &history{start: time.Now()}
	shared := c.newClient(t, Config{RequestTimeout: time.Second})
	var (
		acked, unknown  [8]atomic.Int64 // per key index
		okAfterStop     atomic.Int64
		stopped         atomic.Bool
		readErrs        atomic.Int64
		ackedVersionsMu sync.Mutex
		ackedVersions   = map[string]map[uint64]string{}
	)
	for _, k := range keys {
		ackedVersions[k] = map[uint64]string{}
	}
	end := time.Now().Add(duration)
	var wg sync.WaitGroup
	// Half the workers have their own client, and lose a tenth of their
	// write answers.
	lossy := &lossyTransport{base: &http.Transport{MaxIdleConnsPerHost: 64}, percent: 10}
	t.Cleanup(lossy.base.CloseIdleConnections)
	for w := range workers {
		cl := shared
		if w%2 == 1 {
			cl = c.newClient(t, Config{RequestTimeout: time.Second, HTTPClient: &http.Client{Transport: lossy}})
		}
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			seen := map[string]uint64{}
			for n := 0; time.Now().Before(end); n++ {
				ki := rng.IntN(len(keys))
				key := keys[ki]
				octx, ocancel := context.WithTimeout(ctx, 3*time.Second)
				in := kvIn{key: key, value: fmt.Sprintf("w%d-%d", w, n)}
				var out kvOut
				call := h.now()
				switch p := rng.IntN(100); {
				case p < 35:
					in.kind = opGet
					in.value = ""
					g, err := cl.Get(octx, []byte(key))
					switch {
					case err == nil:
						out = kvOut{found: true, value: string(g.Value), version: g.Version}
						seen[key] = g.Version
					case errors.Is(err, ErrNotFound):
						out = kvOut{}
						seen[key] = 0
					default:
						readErrs.Add(1)
						ocancel()
						continue // a failed read has no effect
					}
				case p < 70:
					in.kind = opPut
					wr, err := cl.Put(octx, []byte(key), []byte(in.value))
					if err != nil {
						t.Logf("put %s %q: %v", key, in.value, err)
						out.unknown = true
					} else {
						out.version = wr.Version
						seen[key] = wr.Version
					}
				default:
					in.kind = opCAS
					in.ifVersion = seen[key]
					wr, err := cl.Put(octx, []byte(key), []byte(in.value), WithIfVersion(in.ifVersion))
					cur, conflict := CurrentVersion(err)
					switch {
					case err == nil:
						out = kvOut{ok: true, version: wr.Version}
						seen[key] = wr.Version
					case errors.Is(err, ErrConflict) && conflict:
						out = kvOut{version: cur}
						seen[key] = cur
					default:
						t.Logf("cas %s %q: %v", key, in.value, err)
						out.unknown = true
					}
				}
				ret := h.now()
				ocancel()
				h.add(w, in, call, out, ret)
				if in.kind != opGet {
					if out.unknown {
						unknown[ki].Add(1)
					} else if in.kind == opPut || out.ok {
						acked[ki].Add(1)
						ackedVersionsMu.Lock()
						if prev, dup := ackedVersions[key][out.version]; dup {
							t.Errorf("key %s version %d acknowledged to %q and %q", key, out.version, prev, in.value)
						}
						ackedVersions[key][out.version] = in.value
						ackedVersionsMu.Unlock()
					}
				}
				if stopped.Load() && !out.unknown {
					okAfterStop.Add(1)
				}
				time.Sleep(time.Duration(rng.IntN(2000)) * time.Microsecond)
			}
		})
	}

	// The nemesis: move a random group's leadership every ~300ms; stop a
	// random node midway.
	var transfers, failedTransfers int
	victim := rand.IntN(3)
	nemesisRNG := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	for time.Now().Before(end) {
		time.Sleep(time.Duration(200+nemesisRNG.IntN(200)) * time.Millisecond)
		if !stopped.Load() && time.Until(end) < duration/2 {
			c.stopNode(victim)
			stopped.Store(true)
			t.Logf("stopped node %d at %v", victim+1, time.Duration(h.now()))
			continue
		}
		g := groups[nemesisRNG.IntN(len(groups))]
		var live []int
		for i := range c.addrs {
			if c.node(i) != nil && c.leader(g) != i {
				live = append(live, i)
			}
		}
		if len(live) == 0 {
			continue
		}
		tctx, tcancel := context.WithTimeout(ctx, time.Second)
		if err := c.transfer(tctx, ids.GroupID(g), live[nemesisRNG.IntN(len(live))]); err != nil {
			failedTransfers++
		} else {
			transfers++
		}
		tcancel()
	}
	wg.Wait()

	// Final reads, part of the history.
	finals := map[string]uint64{}
	for ki, k := range keys {
		call := h.now()
		g, err := shared.Get(ctx, []byte(k))
		switch {
		case err == nil:
			h.add(99, kvIn{kind: opGet, key: k}, call, kvOut{found: true, value: string(g.Value), version: g.Version}, h.now())
			finals[k] = g.Version
		case errors.Is(err, ErrNotFound):
			h.add(99, kvIn{kind: opGet, key: k}, call, kvOut{}, h.now())
		default:
			t.Fatalf("final read of %s: %v", k, err)
		}
		a, u := uint64(acked[ki].Load()), uint64(unknown[ki].Load())
		if f := finals[k]; f < a || f > a+u {
			t.Errorf("key %s: final version %d, but %d writes were acknowledged and %d have an unknown outcome", k, f, a, u)
		}
	}

	var nUnknown int64
	for ki := range keys {
		nUnknown += unknown[ki].Load()
	}
	t.Logf("%d operations (%d of unknown outcome, %d failed reads), %d after the stop; %d write answers lost; %d leadership transfers (%d failed); final versions %v",
		len(h.ops), nUnknown, readErrs.Load(), okAfterStop.Load(), lossy.dropped.Load(), transfers, failedTransfers, finals)
	if lossy.dropped.Load() == 0 {
		t.Error("no write answer was lost")
	}
	if okAfterStop.Load() < 50 {
		t.Errorf("only %d operations succeeded after node %d stopped", okAfterStop.Load(), victim+1)
	}
	if transfers < 3 {
		t.Errorf("only %d leadership transfers", transfers)
	}
	checkLinearizable(t, h.ops, 30*time.Second)
}

// TestStaleReadsBounded: a writer increments a counter while readers read
// it with WithStale(300ms) from any voter; a read that started at time c
// returns at least every value acknowledged before c - 300ms.
func TestStaleReadsBounded(t *testing.T) {
	c := startCluster(t, 3, 20*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ct := newCountingTransport()
	t.Cleanup(ct.close)
	writer := c.newClient(t, Config{})
	reader := c.newClient(t, Config{HTTPClient: &http.Client{Transport: ct}})
	const (
		bound    = 300 * time.Millisecond
		duration = 3 * time.Second
	)
	key := []byte("stale/counter")
	if _, err := writer.Put(ctx, key, []byte("0")); err != nil {
		t.Fatal(err)
	}
	type ack struct {
		at time.Time
		v  int
	}
	type read struct {
		call time.Time
		v    int
	}
	var (
		mu    sync.Mutex
		acks  = []ack{{time.Now(), 0}}
		reads []read
		errs  int
	)
	end := time.Now().Add(duration)
	var wg sync.WaitGroup
	wg.Go(func() {
		for v := 1; time.Now().Before(end); v++ {
			if _, err := writer.Put(ctx, key, []byte(strconv.Itoa(v))); err != nil {
				t.Errorf("put %d: %v", v, err)
				return
			}
			mu.Lock()
			acks = append(acks, ack{time.Now(), v})
			mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	})
	for range 3 {
		wg.Go(func() {
			for time.Now().Before(end) {
				call := time.Now()
				g, err := reader.Get(ctx, key, WithStale(bound))
				mu.Lock()
				if err != nil {
					errs++
				} else if v, perr := strconv.Atoi(string(g.Value)); perr != nil {
					t.Errorf("read %q", g.Value)
				} else {
					reads = append(reads, read{call, v})
				}
				mu.Unlock()
				time.Sleep(time.Millisecond)
			}
		})
	}
	wg.Wait()

	stale := 0
	for _, r := range reads {
		// The last value acknowledged before call - bound.
		i := sort.Search(len(acks), func(i int) bool { return !acks[i].at.Before(r.call.Add(-bound)) })
		if i > 0 && acks[i-1].v > r.v {
			t.Errorf("a read at %v returned %d, but %d was acknowledged at %v, more than %v before", r.call.Format(time.StampMicro), r.v, acks[i-1].v, acks[i-1].at.Format(time.StampMicro), bound)
		}
		j := sort.Search(len(acks), func(i int) bool { return !acks[i].at.Before(r.call) })
		if j > 0 && acks[j-1].v > r.v {
			stale++
		}
	}
	req, _, _ := ct.snapshot()
	_, g := c.node(0).Route(key)
	leaderAddr := ""
	if l := c.leader(g); l >= 0 {
		leaderAddr = c.addrs[l]
	}
	t.Logf("%d writes, %d stale reads (%d older than the last acknowledged write, %d errors); reads per node %v (leader %s)", len(acks)-1, len(reads), stale, errs, req, leaderAddr)
	if len(reads) < 100 || len(acks) < 100 {
		t.Errorf("too little work: %d reads, %d writes", len(reads), len(acks))
	}
	if errs > len(reads)/10 {
		t.Errorf("%d stale reads failed", errs)
	}
	others := 0
	for a, n := range req {
		if a != leaderAddr {
			others += n
		}
	}
	if len(req) < 2 || others == 0 {
		t.Errorf("stale reads were not spread over the voters: %v", req)
	}
}
