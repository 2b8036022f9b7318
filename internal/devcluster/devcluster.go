// Package devcluster runs a local development cluster: N nodes in one
// process, each with its own data dir, bootstrapped once and restarted from
// their dirs on later runs.
//
// Nodes talk over the in-process network (memnet) for now: the QUIC
// transport, the client API and their listeners come with later issues, so a
// dev cluster has no ports yet and says so.
package devcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/nodedb/nodedb-cluster/cluster"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/kv"
	"github.com/nodedb/nodedb-cluster/internal/placement"
	"github.com/nodedb/nodedb-cluster/internal/transport"
	"github.com/nodedb/nodedb-cluster/internal/transport/memnet"
	"github.com/nodedb/nodedb-cluster/vshard"
)

// Shape is the cluster's fixed layout, decided at the first run and stored
// in the dir; later runs use the stored shape.
type Shape struct {
	Nodes   int `json:"nodes"`
	Groups  int `json:"groups"`
	VShards int `json:"vshards"`
	RF      int `json:"rf"`
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
	return nil
}

const shapeFile = "cluster.json"

// Cluster is a running dev cluster.
type Cluster struct {
	Dir   string
	Shape Shape
	// Restarted is true when the dir already held a cluster.
	Restarted bool

	net   *memnet.Network
	nodes []*cluster.Node
}

// Start starts the cluster in dir. If dir holds a cluster, it is restarted
// with its stored shape and want is ignored (compare Shape to tell the
// user); otherwise a cluster of shape want is bootstrapped.
func Start(dir string, want Shape, log *slog.Logger) (*Cluster, error) {
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
	sm, err := kv.New(c.Shape.VShards)
	if err != nil {
		return nil, err
	}
	c.net = memnet.New(time.Now().UnixNano())
	for i := 1; i <= c.Shape.Nodes; i++ {
		id := ids.NodeID(i)
		n, err := cluster.Start(cluster.Config{
			NodeID:       id,
			Dir:          filepath.Join(dir, fmt.Sprintf("node%d", i)),
			StateMachine: sm,
			Connect: func(h transport.Handler) (transport.Transport, error) {
				return c.net.Endpoint(id, h), nil
			},
			Logger: log.With("node", i),
		})
		if err != nil {
			_ = c.Stop()
			return nil, err
		}
		c.nodes = append(c.nodes, n)
	}
	if !c.Restarted {
		if err := c.bootstrap(); err != nil {
			_ = c.Stop()
			return nil, err
		}
	}
	return c, nil
}

func (c *Cluster) bootstrap() error {
	layout, err := placement.Static(c.Shape.Groups, c.Shape.Nodes, c.Shape.RF)
	if err != nil {
		return err
	}
	for g, founders := range layout {
		for _, f := range founders {
			if err := c.nodes[f.Node-1].BootstrapGroup(ids.GroupID(g+1), f.Replica, founders); err != nil {
				return fmt.Errorf("bootstrap group %d: %w", g+1, err)
			}
		}
	}
	// The shape file is written last: a dir without it is not a cluster yet.
	b, err := json.MarshalIndent(c.Shape, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(c.Dir, shapeFile), append(b, '\n'), 0o600)
}

// Stop stops every node.
func (c *Cluster) Stop() error {
	var errs []error
	for _, n := range c.nodes {
		errs = append(errs, n.Stop())
	}
	if c.net != nil {
		c.net.Close()
	}
	return errors.Join(errs...)
}

// GroupLine summarizes one group.
type GroupLine struct {
	Group      ids.GroupID
	Leader     ids.NodeID
	Term       uint64
	Applied    uint64
	Replicas   []ids.NodeID
	VShardFrom uint32
	VShardTo   uint32
}

// WaitReady waits until every group has a leader.
func (c *Cluster) WaitReady(ctx context.Context) error {
	for {
		missing := 0
		for g := 1; g <= c.Shape.Groups; g++ {
			if c.leader(ids.GroupID(g)) == nil {
				missing++
			}
		}
		if missing == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d groups without a leader: %w", missing, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (c *Cluster) leader(g ids.GroupID) *cluster.Node {
	for _, n := range c.nodes {
		if n.IsLeader(g) {
			return n
		}
	}
	return nil
}

// Status summarizes every group.
func (c *Cluster) Status() []GroupLine {
	var out []GroupLine
	for g := 1; g <= c.Shape.Groups; g++ {
		gl := GroupLine{Group: ids.GroupID(g)}
		first := true
		for vs := range uint32(c.Shape.VShards) {
			if placement.VShardGroup(vs, c.Shape.VShards, c.Shape.Groups) == gl.Group {
				if first {
					gl.VShardFrom, first = vs, false
				}
				gl.VShardTo = vs
			}
		}
		if l := c.leader(gl.Group); l != nil {
			if st, err := l.Status(gl.Group); err == nil {
				gl.Leader, gl.Term, gl.Applied = l.ID(), st.Term, st.Applied
				for _, r := range st.Config.Replicas {
					gl.Replicas = append(gl.Replicas, r.Node)
				}
			}
		}
		out = append(out, gl)
	}
	return out
}

// SelfCheck writes a key through Raft and reads it back linearizably, the
// smallest proof that replication works end to end.
func (c *Cluster) SelfCheck(ctx context.Context) error {
	key := []byte("nodedb-dev/self-check")
	vs := vshard.ForKey(key, c.Shape.VShards)
	g := placement.VShardGroup(vs, c.Shape.VShards, c.Shape.Groups)
	l := c.leader(g)
	if l == nil {
		return fmt.Errorf("group %d has no leader", g)
	}
	value := []byte(time.Now().UTC().Format(time.RFC3339Nano))
	cmd, err := kv.EncodePut(key, value, nil, kv.DefaultLimits())
	if err != nil {
		return err
	}
	res, err := l.Propose(ctx, g, cluster.Proposal{VShard: vs, Payload: cmd})
	if err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if _, err := kv.DecodeResult(res); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	q, err := kv.EncodeGet(key, kv.DefaultLimits())
	if err != nil {
		return err
	}
	for _, n := range c.nodes {
		for _, hg := range n.Groups() {
			if hg != g {
				continue
			}
			out, err := n.Read(ctx, g, vs, q)
			if err != nil {
				return fmt.Errorf("read on node %d: %w", n.ID(), err)
			}
			got, err := kv.DecodeGetResponse(out)
			if err != nil {
				return err
			}
			if string(got.Value) != string(value) {
				return fmt.Errorf("node %d read %q, want %q", n.ID(), got.Value, value)
			}
		}
	}
	return nil
}
