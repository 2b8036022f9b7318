package client

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// leaders returns the index of each data group's leader (-1: none).
func (c *testCluster) leaders(groups []ids.GroupID) map[ids.GroupID]int {
	out := map[ids.GroupID]int{}
	for _, g := range groups {
		out[g] = c.leader(g)
	}
	return out
}

// waitStableLeaders waits until every group has a leader, the leaderships
// are balanced (the control loop moves none) and unchanged for 500ms.
func (c *testCluster) waitStableLeaders(ctx context.Context, groups []ids.GroupID) map[ids.GroupID]int {
	var last map[ids.GroupID]int
	since := time.Now()
	for {
		cur := c.leaders(groups)
		count := map[int]int{}
		ok := true
		for _, l := range cur {
			ok = ok && l >= 0
			count[l]++
		}
		lo, hi := len(groups), 0
		for i := range c.addrs {
			if c.node(i) != nil {
				lo, hi = min(lo, count[i]), max(hi, count[i])
			}
		}
		ok = ok && hi-lo <= 1
		if !ok || fmt.Sprint(cur) != fmt.Sprint(last) {
			last, since = cur, time.Now()
		} else if time.Since(since) > 500*time.Millisecond {
			return cur
		}
		select {
		case <-ctx.Done():
			c.t.Fatalf("leaderships not stable: %v", cur)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// keysByGroup returns n keys of each data group.
func (c *testCluster) keysByGroup(prefix string, n int) (map[ids.GroupID][]string, []ids.GroupID) {
	out := map[ids.GroupID][]string{}
	var groups []ids.GroupID
	for i := 0; ; i++ {
		k := fmt.Sprintf("%s%d", prefix, i)
		_, g := c.node(0).Route([]byte(k))
		if len(out[g]) == 0 {
			groups = append(groups, g)
		}
		if len(out[g]) < n {
			out[g] = append(out[g], k)
		}
		done := len(out) == 4
		for _, ks := range out {
			done = done && len(ks) == n
		}
		if done || i > 100000 {
			return out, groups
		}
	}
}

// TestStraightToLeader: with a warm cache every request goes to the
// leader of its key's group and none needs a not_leader retry; after a
// leadership transfer the client follows the not_leader hint at once (no
// routing reload); when a node is unreachable the client fails over to the
// group's other voters.
func TestStraightToLeader(t *testing.T) {
	c := startCluster(t, 3, 20*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	keys, groups := c.keysByGroup("route/", 3)
	if len(groups) != 4 {
		t.Fatalf("keys of %d groups, want 4", len(groups))
	}
	ct := newCountingTransport()
	t.Cleanup(ct.close)
	// Requests one by one, so that the transport counts each (exchanges
	// of POST /v1/multi are tested in multi_test.go).
	cl := c.newClient(t, Config{HTTPClient: &http.Client{Transport: ct}, DisableMulti: true})

	leaders := c.waitStableLeaders(ctx, groups)
	// Warm up: the first requests may meet leaders that moved since the
	// routing table was loaded.
	for _, g := range groups {
		for _, k := range keys[g] {
			if _, err := cl.Put(ctx, []byte(k), []byte("warm")); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Measure; redo if the leaderships moved meanwhile.
	for try := 0; ; try++ {
		ct.reset()
		want := map[string]int{}
		for round := range 3 {
			for _, g := range groups {
				for _, k := range keys[g] {
					if _, err := cl.Put(ctx, []byte(k), []byte(fmt.Sprint(round))); err != nil {
						t.Fatal(err)
					}
					if _, err := cl.Get(ctx, []byte(k)); err != nil {
						t.Fatal(err)
					}
					want[c.addrs[leaders[g]]] += 2
				}
			}
		}
		req, nl, loads := ct.snapshot()
		if now := c.leaders(groups); fmt.Sprint(now) != fmt.Sprint(leaders) {
			if try > 3 {
				t.Fatalf("leaderships keep moving: %v then %v", leaders, now)
			}
			leaders = c.waitStableLeaders(ctx, groups)
			continue
		}
		if fmt.Sprint(req) != fmt.Sprint(want) || len(nl) != 0 || loads != 0 {
			t.Fatalf("requests per node %v, want %v (leaders %v); not_leader answers %v; routing loads %d", req, want, leaders, nl, loads)
		}
		t.Logf("requests per node: %v (leaders %v)", req, leaders)
		break
	}

	// Move a group's leadership from a node with the most leaderships to
	// one with the fewest (the control loop keeps such a move).
	count := map[int]int{}
	for _, l := range leaders {
		count[l]++
	}
	var g ids.GroupID
	from, to := -1, -1
	for _, gg := range groups {
		if l := leaders[gg]; from < 0 || count[l] > count[from] {
			g, from = gg, l
		}
	}
	for i := range c.addrs {
		if i != from && (to < 0 || count[i] < count[to]) {
			to = i
		}
	}
	if err := c.transfer(ctx, g, to); err != nil {
		t.Fatal(err)
	}
	ct.reset()
	k := keys[g][0]
	if _, err := cl.Put(ctx, []byte(k), []byte("after transfer")); err != nil {
		t.Fatal(err)
	}
	req, nl, loads := ct.snapshot()
	if req[c.addrs[from]] != 1 || nl[c.addrs[from]] != 1 || req[c.addrs[to]] != 1 || len(req) != 2 || loads != 0 {
		t.Fatalf("after moving group %d from node %d to node %d: requests %v, not_leader answers %v, routing loads %d", g, from+1, to+1, req, nl, loads)
	}
	ct.reset()
	for _, k := range keys[g] {
		if _, err := cl.Get(ctx, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	if req, nl, _ := ct.snapshot(); req[c.addrs[to]] != len(keys[g]) || len(req) != 1 || len(nl) != 0 {
		t.Fatalf("after following the hint: requests %v, not_leader answers %v", req, nl)
	}

	// Stop the new leader: the group re-elects among the others and the
	// client gets there through them.
	c.stopNode(to)
	start := time.Now()
	for i, k := range keys[g] {
		if _, err := cl.Put(ctx, []byte(k), []byte(fmt.Sprint("after stop ", i))); err != nil {
			t.Fatalf("put after the leader stopped: %v", err)
		}
	}
	t.Logf("failover after the leader stopped: %v", time.Since(start))
	ct.reset()
	for _, gg := range groups {
		for _, k := range keys[gg] {
			if g, err := cl.Get(ctx, []byte(k)); err != nil || g.Version < 2 {
				t.Fatalf("get after the stop: %+v %v", g, err)
			}
		}
	}
	if req, _, _ := ct.snapshot(); req[c.addrs[to]] > 2 {
		t.Fatalf("requests to the stopped node %d: %v", to+1, req)
	}
}
