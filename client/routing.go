package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/nodedb/nodedb-cluster/vshard"
)

// The routing cache: the cluster's metadata as GET /v1/cluster reports it,
// reduced to what routing needs. A key's vShard (vshard.ForKey) names its
// group, the group its leader and voters, a node its API address.

// clusterStatus is the part of GET /v1/cluster the client reads.
type clusterStatus struct {
	VShardCount    int    `json:"vshard_count"`
	RoutingVersion uint64 `json:"routing_version"`
	Nodes          []struct {
		ID      uint64 `json:"id"`
		State   string `json:"state"`
		APIAddr string `json:"api_addr"`
	} `json:"nodes"`
	Groups []struct {
		ID     uint64   `json:"id"`
		Voters []uint64 `json:"voters"`
		Leader uint64   `json:"leader"`
	} `json:"groups"`
	VShards []struct {
		ID    uint32 `json:"id"`
		Group uint64 `json:"group"`
		Epoch uint64 `json:"epoch"`
	} `json:"vshards"`
}

type vsRoute struct {
	group uint64
	epoch uint64
}

type groupRoute struct {
	voters []uint64
	leader uint64 // 0: unknown; guarded by Client.mu
}

// table is one routing table. Only groupRoute.leader changes after it is
// built (under Client.mu).
type table struct {
	count          int
	routingVersion uint64
	vshards        []vsRoute
	groups         map[uint64]*groupRoute
	nodes          map[uint64]string // node → API address (nodes that serve one)
	nodeIDs        []uint64          // sorted keys of nodes
}

func newTable(st *clusterStatus) (*table, error) {
	if err := vshard.ValidateCount(st.VShardCount); err != nil {
		return nil, err
	}
	t := &table{
		count:          st.VShardCount,
		routingVersion: st.RoutingVersion,
		vshards:        make([]vsRoute, st.VShardCount),
		groups:         map[uint64]*groupRoute{},
		nodes:          map[uint64]string{},
	}
	for _, n := range st.Nodes {
		if n.APIAddr == "" || n.State == "decommissioned" {
			continue
		}
		t.nodes[n.ID] = n.APIAddr
		t.nodeIDs = append(t.nodeIDs, n.ID)
	}
	slices.Sort(t.nodeIDs)
	if len(t.nodes) == 0 {
		return nil, errors.New("the cluster reports no node with an API address")
	}
	for _, g := range st.Groups {
		gr := &groupRoute{voters: slices.Clone(g.Voters)}
		if _, ok := t.nodes[g.Leader]; ok {
			gr.leader = g.Leader
		}
		t.groups[g.ID] = gr
	}
	for _, v := range st.VShards {
		if int(v.ID) >= st.VShardCount {
			return nil, fmt.Errorf("vshard %d out of range (count %d)", v.ID, st.VShardCount)
		}
		t.vshards[v.ID] = vsRoute{group: v.Group, epoch: v.Epoch}
	}
	return t, nil
}

// route returns the route of vShard vs.
func (t *table) route(vs uint32) vsRoute {
	if int(vs) < len(t.vshards) {
		return t.vshards[vs]
	}
	return vsRoute{}
}

// currentTable returns the routing table, loading it when there is none.
func (c *Client) currentTable(ctx context.Context) (*table, error) {
	c.mu.RLock()
	t := c.tab
	c.mu.RUnlock()
	if t != nil {
		return t, nil
	}
	if err := c.refresh(ctx); err != nil {
		return nil, err
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.tab == nil {
		return nil, &Error{Code: CodeUnavailable, Message: "no routing table yet"}
	}
	return c.tab, nil
}

// refresh reloads the routing table from any node, at most once per
// MinRefreshInterval unless there is no table yet. Concurrent callers share
// one reload.
func (c *Client) refresh(ctx context.Context) error {
	c.refreshMu.Lock()
	if ch := c.refreshing; ch != nil {
		c.refreshMu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		c.refreshMu.Lock()
		err := c.refreshErr
		c.refreshMu.Unlock()
		return err
	}
	c.mu.RLock()
	have := c.tab != nil
	c.mu.RUnlock()
	if have && time.Since(c.lastRefresh) < c.cfg.MinRefreshInterval {
		c.refreshMu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	c.refreshing = ch
	c.refreshMu.Unlock()

	err := c.load(ctx)

	c.refreshMu.Lock()
	c.refreshing = nil
	c.refreshErr = err
	c.lastRefresh = time.Now()
	c.refreshMu.Unlock()
	close(ch)
	return err
}

// load fetches GET /v1/cluster from the known nodes (those not suspected
// first) and then the configured endpoints, until one answers with a table
// no older than the current one.
func (c *Client) load(ctx context.Context) error {
	var cands []string
	seen := map[string]bool{}
	add := func(a string) {
		if a != "" && !seen[a] {
			seen[a] = true
			cands = append(cands, a)
		}
	}
	c.mu.RLock()
	old := c.tab
	var later []string
	if old != nil {
		start := int(c.rr.Add(1))
		for i := range old.nodeIDs {
			id := old.nodeIDs[(start+i)%len(old.nodeIDs)]
			if c.suspectLocked(id) {
				later = append(later, old.nodes[id])
			} else {
				add(old.nodes[id])
			}
		}
	}
	c.mu.RUnlock()
	for _, a := range c.endpoints {
		add(a)
	}
	for _, a := range later {
		add(a)
	}
	var last error
	for _, addr := range cands {
		if ctx.Err() != nil {
			break
		}
		st, err := c.fetchStatus(ctx, addr)
		if err != nil {
			last = fmt.Errorf("%s: %w", addr, err)
			continue
		}
		t, err := newTable(st)
		if err != nil {
			last = fmt.Errorf("%s: routing table: %w", addr, err)
			continue
		}
		c.mu.Lock()
		cur := c.tab
		if cur != nil && t.routingVersion < cur.routingVersion {
			c.mu.Unlock()
			last = fmt.Errorf("%s: routing version %d is older than the cached %d", addr, t.routingVersion, cur.routingVersion)
			continue
		}
		if cur != nil {
			// Keep leaders learned from hints where the answering node
			// knows none.
			for id, g := range t.groups {
				if og := cur.groups[id]; og != nil && g.leader == 0 {
					if _, ok := t.nodes[og.leader]; ok {
						g.leader = og.leader
					}
				}
			}
		}
		c.tab = t
		c.mu.Unlock()
		c.log.Debug("nodedb client: routing table loaded", "from", addr, "routing_version", t.routingVersion, "nodes", len(t.nodes))
		return nil
	}
	if last == nil {
		if err := ctx.Err(); err != nil {
			return err
		}
		last = errors.New("no endpoint to ask")
	}
	return &Error{Code: CodeUnavailable, Message: "cannot load the routing table: " + last.Error(), Err: last}
}

func (c *Client) fetchStatus(ctx context.Context, addr string) (*clusterStatus, error) {
	actx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodGet, c.scheme+"://"+addr+"/v1/cluster", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, parseError(resp.StatusCode, body)
	}
	var st clusterStatus
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("decode /v1/cluster: %w", err)
	}
	return &st, nil
}

// Suspicion: a node that failed at the network level is avoided for a
// while (Config.SuspectFor) when another candidate exists.

func (c *Client) suspectLocked(node uint64) bool {
	until, ok := c.suspect[node]
	return ok && time.Now().Before(until)
}

func (c *Client) markSuspect(node uint64) {
	if node == 0 {
		return
	}
	c.mu.Lock()
	c.suspect[node] = time.Now().Add(c.cfg.SuspectFor)
	c.mu.Unlock()
}

func (c *Client) clearSuspect(node uint64) {
	c.mu.RLock()
	_, ok := c.suspect[node]
	c.mu.RUnlock()
	if ok {
		c.mu.Lock()
		delete(c.suspect, node)
		c.mu.Unlock()
	}
}

// learnLeader records a not_leader hint: node leads group. It reports
// whether the hint names a node of the cluster that is not suspected, so
// that the request can go there at once.
func (c *Client) learnLeader(ctx context.Context, group uint64, hint map[string]any) bool {
	node, ok := hintUint(hint, "leader")
	if !ok || node == 0 || group == 0 {
		return false
	}
	for range 2 {
		c.mu.Lock()
		t := c.tab
		if t != nil {
			if _, known := t.nodes[node]; known {
				if g := t.groups[group]; g != nil {
					g.leader = node
				}
				sus := c.suspectLocked(node)
				c.mu.Unlock()
				return !sus
			}
		}
		c.mu.Unlock()
		// A node the cached table does not know: refresh and look again;
		// a node the cluster does not list is never contacted.
		if err := c.refresh(ctx); err != nil {
			return false
		}
	}
	return false
}

// learnMoved records a moved hint: vShard hint.vshard is owned by group
// hint.group at epoch hint.epoch. It reports whether the hint was news
// about a group the table knows, so that the request can be retried at
// once.
func (c *Client) learnMoved(hint map[string]any) bool {
	vs, ok1 := hintUint(hint, "vshard")
	g, ok2 := hintUint(hint, "group")
	e, ok3 := hintUint(hint, "epoch")
	if !ok1 || !ok2 || !ok3 || g == 0 {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.tab
	if t == nil || vs >= uint64(len(t.vshards)) || t.groups[g] == nil || e <= t.vshards[vs].epoch {
		return false
	}
	t.vshards[vs] = vsRoute{group: g, epoch: e}
	return true
}

// target is where one attempt goes.
type target struct {
	node  uint64
	addr  string
	group uint64
	epoch uint64
}

// pick chooses the node for an attempt of a request on vShard vs (vs < 0:
// any node, for a scan across vShards).
func (c *Client) pick(t *table, vs int64, stale bool) target {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if vs < 0 {
		return c.anyNodeLocked(t)
	}
	r := t.route(uint32(vs))
	g := t.groups[r.group]
	if r.group == 0 || g == nil || len(g.voters) == 0 {
		// An unrouted vShard (group 0 is the metadata group): any node
		// knows more.
		tg := c.anyNodeLocked(t)
		tg.group, tg.epoch = r.group, r.epoch
		return tg
	}
	tg := target{group: r.group, epoch: r.epoch}
	if !stale && g.leader != 0 && !c.suspectLocked(g.leader) {
		tg.node, tg.addr = g.leader, t.nodes[g.leader]
		return tg
	}
	// Stale reads spread over every voter; a linearizable request whose
	// leader is unknown or unreachable goes to a voter, which answers with
	// a leader hint.
	start := int(c.rr.Add(1))
	var fallback uint64
	for i := range g.voters {
		n := g.voters[(start+i)%len(g.voters)]
		if t.nodes[n] == "" {
			continue
		}
		if fallback == 0 {
			fallback = n
		}
		if !c.suspectLocked(n) {
			tg.node, tg.addr = n, t.nodes[n]
			return tg
		}
	}
	if fallback == 0 {
		fb := c.anyNodeLocked(t)
		tg.node, tg.addr = fb.node, fb.addr
		return tg
	}
	tg.node, tg.addr = fallback, t.nodes[fallback]
	return tg
}

func (c *Client) anyNodeLocked(t *table) target {
	start := int(c.rr.Add(1))
	var fallback uint64
	for i := range t.nodeIDs {
		n := t.nodeIDs[(start+i)%len(t.nodeIDs)]
		if fallback == 0 {
			fallback = n
		}
		if !c.suspectLocked(n) {
			return target{node: n, addr: t.nodes[n]}
		}
	}
	return target{node: fallback, addr: t.nodes[fallback]}
}
