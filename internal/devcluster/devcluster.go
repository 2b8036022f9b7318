// Package devcluster runs a local development cluster: N nodes in one
// process, each with its own data dir, its own peer listener on 127.0.0.1
// and its admin socket. It takes the same path as an operator would: node 1
// bootstraps the cluster, the others join it with tokens, and later runs
// restart every node from its dir. It is N copies of what `nodedb-cluster
// start` runs, sharing a process.
package devcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/api"
	"github.com/nodedb/nodedb-cluster/internal/freeport"
	"github.com/nodedb/nodedb-cluster/internal/kv"
	"github.com/nodedb/nodedb-cluster/internal/server"
	"github.com/nodedb/nodedb-cluster/vshard"
)

// DefaultPortBase places node i's QUIC listener on 127.0.0.1:(7400+i) and
// its client API on 127.0.0.1:(8400+i).
const DefaultPortBase = 7400

// APIPortOffset separates a node's API port from its QUIC port.
const APIPortOffset = 1000

// Shape is the cluster's fixed layout, decided at the first run and stored
// in the dir; later runs use the stored shape.
type Shape struct {
	Nodes   int `json:"nodes"`
	Groups  int `json:"groups"`
	VShards int `json:"vshards"`
	RF      int `json:"rf"`
	// Transport is the nodes' peer transport (server.Config.Transport);
	// empty is QUIC.
	Transport string `json:"transport,omitempty"`
}

// Validate checks a shape before anything is created.
func (s Shape) Validate() error {
	if s.Nodes < 1 || s.Nodes > 64 {
		return fmt.Errorf("nodes must be between 1 and 64, got %d", s.Nodes)
	}
	if s.Groups < 1 || s.Groups > s.VShards {
		return fmt.Errorf("groups must be between 1 and the vShard count (%d), got %d", s.VShards, s.Groups)
	}
	if err := vshard.ValidateCount(s.VShards); err != nil {
		return err
	}
	if s.RF < 1 || s.RF > s.Nodes {
		return fmt.Errorf("replication factor must be between 1 and the node count (%d), got %d", s.Nodes, s.RF)
	}
	return server.CheckTransport(s.Transport)
}

const (
	shapeFile     = "cluster.json"
	endpointsFile = "endpoints"
)

// Cluster is a running dev cluster.
type Cluster struct {
	Dir   string
	Shape Shape
	// Restarted is true when the dir already held a cluster.
	Restarted bool
	// Endpoints are the nodes' peer addresses, node 1 first (the endpoints
	// file lists the API addresses, which clients use).
	Endpoints []string
	// APIs are the nodes' client API addresses (plain HTTP), node 1 first.
	APIs []string

	servers []*server.Server
	apis    []*api.Endpoint
}

// NodeDir is node i's data dir.
func NodeDir(dir string, i int) string { return filepath.Join(dir, fmt.Sprintf("node%d", i)) }

// Start starts the cluster in dir. If dir holds a cluster, it is restarted
// with its stored shape and want is ignored (compare Shape to tell the
// user); otherwise node 1 bootstraps a cluster of shape want and the others
// join it. Node i listens on 127.0.0.1:(portBase+i); portBase 0 picks free
// ports at the first run (tests), which later runs keep.
func Start(ctx context.Context, dir string, want Shape, portBase int, log *slog.Logger) (*Cluster, error) {
	return StartWith(ctx, dir, want, Options{PortBase: portBase}, log)
}

// Options are the runtime settings of a dev cluster (not stored: each run
// chooses them).
type Options struct {
	PortBase int
	// ReadLease turns on read leases (server.Config.ReadLease).
	ReadLease bool
	// NoQuiesce keeps idle groups heartbeating (server.Config.NoQuiesce).
	NoQuiesce bool
}

// StartWith is Start with every runtime option.
func StartWith(ctx context.Context, dir string, want Shape, o Options, log *slog.Logger) (*Cluster, error) {
	portBase := o.PortBase
	c := &Cluster{Dir: dir, Shape: want}
	b, err := os.ReadFile(filepath.Join(dir, shapeFile))
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &c.Shape); err != nil {
			return nil, fmt.Errorf("read %s: %w", filepath.Join(dir, shapeFile), err)
		}
		c.Restarted = true
	case errors.Is(err, os.ErrNotExist):
	default:
		return nil, err
	}
	if err := c.Shape.Validate(); err != nil {
		return nil, err
	}
	if portBase < 0 || portBase+c.Shape.Nodes > 65535 {
		return nil, fmt.Errorf("port base %d out of range", portBase)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	settings := server.Settings{VShards: c.Shape.VShards, Groups: c.Shape.Groups, RF: c.Shape.RF}
	for i := 1; i <= c.Shape.Nodes; i++ {
		cfg := server.Config{
			Dir:       NodeDir(dir, i),
			Logger:    log.With("dev_node", i),
			ReadLease: o.ReadLease,
			NoQuiesce: o.NoQuiesce,
			Transport: c.Shape.Transport,
		}
		if !server.IsNode(cfg.Dir) {
			// A node that does not exist yet: node 1 bootstraps (or
			// resumes an interrupted bootstrap), the others join it.
			cfg.Listen = fmt.Sprintf("127.0.0.1:%d", portBase+i)
			cfg.API = fmt.Sprintf("127.0.0.1:%d", portBase+APIPortOffset+i)
			if portBase == 0 {
				free := freeport.UDP
				if c.Shape.Transport == server.TransportTCP {
					free = freeport.TCP
				}
				if cfg.Listen, err = free(); err != nil {
					_ = c.Stop()
					return nil, err
				}
				if cfg.API, err = freeport.TCP(); err != nil {
					_ = c.Stop()
					return nil, err
				}
			}
			if i == 1 {
				cfg.Bootstrap, cfg.Settings = true, settings
			} else {
				tok, _, err := c.servers[0].CreateToken(ctx, 10*time.Minute)
				if err != nil {
					_ = c.Stop()
					return nil, fmt.Errorf("join token for node %d: %w", i, err)
				}
				cfg.Join, cfg.Token = c.Endpoints[0], tok
			}
		}
		s, err := server.Start(ctx, cfg)
		if err != nil {
			_ = c.Stop()
			return nil, fmt.Errorf("node %d: %w", i, err)
		}
		c.servers = append(c.servers, s)
		c.Endpoints = append(c.Endpoints, s.Addr().String())
		ep, err := api.ServeNode(s, s.APIAddr(), "", "", log.With("dev_node", i, "component", "api"))
		if err != nil {
			_ = c.Stop()
			return nil, fmt.Errorf("node %d: %w", i, err)
		}
		c.apis = append(c.apis, ep)
		c.APIs = append(c.APIs, ep.Addr().String())
	}
	if err := os.WriteFile(filepath.Join(dir, endpointsFile), []byte(strings.Join(c.APIs, "\n")+"\n"), 0o644); err != nil {
		_ = c.Stop()
		return nil, err
	}
	if !c.Restarted {
		// The shape file is written last: a dir without it is not a
		// cluster yet, and the next run finishes what this one started.
		b, err := json.MarshalIndent(c.Shape, "", "  ")
		if err != nil {
			_ = c.Stop()
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, shapeFile), append(b, '\n'), 0o600); err != nil {
			_ = c.Stop()
			return nil, err
		}
	}
	return c, nil
}

// Stop stops every node.
func (c *Cluster) Stop() error {
	var errs []error
	for _, a := range c.apis {
		errs = append(errs, a.Close())
	}
	for _, s := range c.servers {
		errs = append(errs, s.Stop())
	}
	return errors.Join(errs...)
}

// Servers returns the running nodes, node 1 first.
func (c *Cluster) Servers() []*server.Server { return c.servers }

// AdminSockets lists the nodes' admin sockets, node 1 first.
func (c *Cluster) AdminSockets() []string {
	var out []string
	for i := range c.servers {
		out = append(out, server.AdminSocket(NodeDir(c.Dir, i+1)))
	}
	return out
}

// Status is the cluster as node 1 has applied it.
func (c *Cluster) Status() (server.ClusterStatus, error) { return c.servers[0].ClusterStatus() }

// WaitReady waits until every node is active and every group has its full
// set of voters (RF, or every node when there are fewer), no learner left,
// and a leader.
func (c *Cluster) WaitReady(ctx context.Context) error {
	want := min(c.Shape.RF, c.Shape.Nodes)
	for {
		err := c.ready(want)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster not ready: %v: %w", err, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (c *Cluster) ready(want int) error {
	st, err := c.Status()
	if err != nil {
		return err
	}
	active := 0
	for _, n := range st.Nodes {
		if n.State == "active" {
			active++
		}
	}
	if active != c.Shape.Nodes {
		return fmt.Errorf("%d of %d nodes active", active, c.Shape.Nodes)
	}
	for _, g := range st.Groups {
		wantVoters := want
		if g.ID == 0 {
			wantVoters = min(5, c.Shape.Nodes)
		}
		if len(g.Voters) != wantVoters || len(g.Learners) != 0 {
			return fmt.Errorf("group %d has voters %v and learners %v", g.ID, g.Voters, g.Learners)
		}
		if !c.hasLeader(g.ID) {
			return fmt.Errorf("group %d has no leader", g.ID)
		}
	}
	return nil
}

func (c *Cluster) hasLeader(g uint64) bool {
	for _, s := range c.servers {
		if s.Node().IsLeader(server.GroupID(g)) {
			return true
		}
	}
	return false
}

// SelfCheck writes a key through node 1 (which forwards it over QUIC to the
// key's group leader when that is another node) and reads it back
// linearizably through every node: the smallest proof that transport,
// forwarding and replication work end to end.
func (c *Cluster) SelfCheck(ctx context.Context) error {
	key := []byte("nodedb-dev/self-check")
	value := []byte(time.Now().UTC().Format(time.RFC3339Nano))
	cmd, err := kv.EncodePut(key, value, nil, kv.DefaultLimits())
	if err != nil {
		return err
	}
	out, err := c.servers[0].Propose(ctx, key, cmd)
	if err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if _, err := kv.DecodeResult(out); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	q, err := kv.EncodeGet(key, kv.DefaultLimits())
	if err != nil {
		return err
	}
	for _, s := range c.servers {
		out, err := s.Read(ctx, key, q)
		if err != nil {
			return fmt.Errorf("read through node %d: %w", s.ID(), err)
		}
		got, err := kv.DecodeGetResponse(out)
		if err != nil {
			return err
		}
		if string(got.Value) != string(value) {
			return fmt.Errorf("node %d read %q, want %q", s.ID(), got.Value, value)
		}
	}
	return nil
}
