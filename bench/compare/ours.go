package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/netloss"

	"github.com/nodedb/nodedb-cluster/client"
)

// oursCluster is a 3-node nodedb-cluster of separate processes.
type oursCluster struct {
	nodes []*proc
	dirs  []string
	apis  []string
	// metrics are the nodes' /metrics URLs.
	metrics []string
	cl      *client.Client
	tr      *http.Transport
	// status is the last cluster status seen while waiting for placement.
	status clusterStatus
}

type oursOptions struct {
	bin       string
	root      string
	certs     *certFiles // for the client API's TLS
	clientTLS bool
	readLease bool   // start the nodes with --read-lease
	transport string // the nodes' --transport (empty: their default, QUIC)
	nodes     int
	maxConns  int            // idle HTTP connections kept per node
	loss      *netloss.Table // drops a share of the peer packets (nil: none)
	extra     []string       // more flags for every node's start
}

// clusterStatus is the part of `nodedb-cluster status --json` used here.
type clusterStatus struct {
	Nodes []struct {
		ID    uint64 `json:"id"`
		State string `json:"state"`
	} `json:"nodes"`
	Groups []struct {
		ID       uint64   `json:"id"`
		Voters   []uint64 `json:"voters"`
		Learners []uint64 `json:"learners"`
		Leader   uint64   `json:"leader"`
	} `json:"groups"`
}

// ready reports whether the cluster has n active nodes, every group n
// voters (at most RF) and a leader, and data-group leaderships spread over
// the nodes (counts differ by at most one), with a reason when not.
func (st clusterStatus) ready(n int) (bool, string) {
	active := 0
	for _, nd := range st.Nodes {
		if nd.State == "active" {
			active++
		}
	}
	if active != n {
		return false, fmt.Sprintf("%d of %d nodes active", active, n)
	}
	lead := map[uint64]int{}
	for _, g := range st.Groups {
		if len(g.Voters) != min(n, 3) || len(g.Learners) != 0 || g.Leader == 0 {
			return false, fmt.Sprintf("group %d: voters %v learners %v leader %d", g.ID, g.Voters, g.Learners, g.Leader)
		}
		if g.ID != 0 {
			lead[g.Leader]++
		}
	}
	lo, hi := -1, 0
	for _, nd := range st.Nodes {
		c := lead[nd.ID]
		if lo < 0 || c < lo {
			lo = c
		}
		hi = max(hi, c)
	}
	if hi-lo > 1 {
		return false, fmt.Sprintf("leaderships not spread: %v", lead)
	}
	return true, ""
}

// leaders returns how many data groups each node leads.
func (st clusterStatus) leaders() map[uint64]int {
	lead := map[uint64]int{}
	for _, g := range st.Groups {
		if g.ID != 0 {
			lead[g.Leader]++
		}
	}
	return lead
}

func startOurs(ctx context.Context, ps *procs, o oursOptions) (*oursCluster, error) {
	if err := os.MkdirAll(o.root, 0o755); err != nil {
		return nil, err
	}
	c := &oursCluster{}
	var listens []string
	for i := range o.nodes {
		l, err := freeAddr()
		if err == nil && o.loss != nil {
			err = o.loss.Add(ctx, l)
		}
		if err != nil {
			return nil, err
		}
		a, err := freeAddr()
		if err != nil {
			return nil, err
		}
		listens = append(listens, l)
		c.apis = append(c.apis, a)
		c.dirs = append(c.dirs, filepath.Join(o.root, fmt.Sprintf("n%d", i+1)))
	}
	startNode := func(i int, extra ...string) error {
		args := []string{"start", "--dir", c.dirs[i], "--listen", listens[i], "--api", c.apis[i], "--log-level", "warn"}
		if o.clientTLS {
			args = append(args, "--api-cert", o.certs.Cert, "--api-key", o.certs.Key)
		}
		args = append(args, fmt.Sprintf("--read-lease=%t", o.readLease))
		if o.transport != "" {
			args = append(args, "--transport", o.transport)
		}
		args = append(args, o.extra...)
		args = append(args, extra...)
		p, err := ps.start(fmt.Sprintf("nodedb n%d", i+1), c.dirs[i]+".log", o.bin, args...)
		if err != nil {
			return err
		}
		c.nodes = append(c.nodes, p)
		return nil
	}
	if err := startNode(0, "--bootstrap"); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(3 * time.Minute)
	for i := 1; i < o.nodes; i++ {
		var tok string
		for {
			if err := c.checkAlive(); err != nil {
				return nil, err
			}
			out, err := exec.CommandContext(ctx, o.bin, "token", "create", "--dir", c.dirs[0]).Output()
			if err == nil {
				lines := strings.Split(strings.TrimSpace(string(out)), "\n")
				tok = strings.TrimSpace(lines[len(lines)-1])
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return nil, fmt.Errorf("token create: %v", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if err := startNode(i, "--join", listens[0], "--token", tok); err != nil {
			return nil, err
		}
	}
	// Wait for placement: every group on three voters, leaders spread.
	why := ""
	for {
		if err := c.checkAlive(); err != nil {
			return nil, err
		}
		out, err := exec.CommandContext(ctx, o.bin, "status", "--dir", c.dirs[0], "--json").Output()
		if err == nil {
			var st clusterStatus
			if err = json.NewDecoder(bytes.NewReader(out)).Decode(&st); err == nil {
				c.status = st
				var ok bool
				if ok, why = st.ready(o.nodes); ok {
					break
				}
			}
		}
		if err != nil {
			why = err.Error()
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("nodedb-cluster never placed: %s", why)
		}
		time.Sleep(250 * time.Millisecond)
	}
	c.tr = &http.Transport{MaxIdleConns: 3 * o.maxConns, MaxIdleConnsPerHost: o.maxConns, IdleConnTimeout: 90 * time.Second}
	cfg := client.Config{Endpoints: c.apis, HTTPClient: &http.Client{Transport: c.tr}}
	scheme := "http"
	if o.clientTLS {
		cfg.TLS = o.certs.clientTLS()
		c.tr.TLSClientConfig = cfg.TLS
		c.tr.ForceAttemptHTTP2 = true
		scheme = "https"
	}
	for _, a := range c.apis {
		c.metrics = append(c.metrics, scheme+"://"+a+"/metrics")
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cl, err := client.New(cctx, cfg)
	if err != nil {
		return nil, err
	}
	c.cl = cl
	return c, nil
}

func (c *oursCluster) checkAlive() error {
	for _, p := range c.nodes {
		if p.exited() {
			return fmt.Errorf("%s exited: %v\n%s", p.name, p.err, p.tail(20))
		}
	}
	return nil
}

func (c *oursCluster) name() string     { return "nodedb" }
func (c *oursCluster) servers() []*proc { return c.nodes }

func (c *oursCluster) timings(ctx context.Context) (serverHistograms, error) {
	const sync, prop = "nodedb_storage_wal_sync_duration_seconds", "nodedb_raft_proposal_duration_seconds"
	hs, err := sumHistograms(ctx, &http.Client{Transport: c.tr, Timeout: 5 * time.Second}, c.metrics, sync, prop)
	return serverHistograms{walSync: hs[sync], proposal: hs[prop]}, err
}

func (c *oursCluster) put(ctx context.Context, _ int, key, value []byte) error {
	_, err := c.cl.Put(ctx, key, value)
	return err
}

// get is a linearizable read (the client's default).
func (c *oursCluster) get(ctx context.Context, _ int, key []byte) error {
	_, err := c.cl.Get(ctx, key)
	return err
}

func (c *oursCluster) close() {
	if c.cl != nil {
		c.cl.Close()
	}
	if c.tr != nil {
		c.tr.CloseIdleConnections()
	}
}
