// Package devcluster runs a local development cluster: N nodes in one
// process, each with its own data dir, its own QUIC listener on 127.0.0.1
// (mutual TLS with a CA kept in the dir) and its admin socket, bootstrapped
// once and restarted from their dirs on later runs. It is N copies of what
// `nodedb-cluster start` runs, sharing a process.
package devcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/kv"
	"github.com/nodedb/nodedb-cluster/internal/pki"
	"github.com/nodedb/nodedb-cluster/internal/placement"
	"github.com/nodedb/nodedb-cluster/internal/server"
	"github.com/nodedb/nodedb-cluster/vshard"
)

// DefaultPortBase places node i's QUIC listener on 127.0.0.1:(7400+i) and,
// once the API exists, its API on 127.0.0.1:(8400+i).
const DefaultPortBase = 7400

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
	// Endpoints are the nodes' QUIC addresses, node 1 first.
	Endpoints []string

	servers []*server.Server
}

// NodeDir is node i's data dir.
func NodeDir(dir string, i int) string { return filepath.Join(dir, fmt.Sprintf("node%d", i)) }

// Start starts the cluster in dir. If dir holds a cluster, it is restarted
// with its stored shape and want is ignored (compare Shape to tell the
// user); otherwise a cluster of shape want is bootstrapped. Node i listens
// on 127.0.0.1:(portBase+i); portBase 0 picks free ports (tests).
func Start(dir string, want Shape, portBase int, log *slog.Logger) (*Cluster, error) {
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
	caDir := filepath.Join(dir, "ca")
	if !c.Restarted {
		if err := ensureCA(caDir); err != nil {
			return nil, err
		}
	}
	peers := map[ids.NodeID]string{}
	for i := 1; i <= c.Shape.Nodes; i++ {
		addr := fmt.Sprintf("127.0.0.1:%d", portBase+i)
		if portBase == 0 {
			if addr, err = freeUDPAddr(); err != nil {
				return nil, err
			}
		}
		peers[ids.NodeID(i)] = addr
		c.Endpoints = append(c.Endpoints, addr)
	}
	for i := 1; i <= c.Shape.Nodes; i++ {
		s, err := server.Start(server.Config{
			Dir:    NodeDir(dir, i),
			NodeID: ids.NodeID(i),
			Listen: peers[ids.NodeID(i)],
			Peers:  peers,
			Layout: server.Layout{Groups: c.Shape.Groups, VShards: c.Shape.VShards, RF: c.Shape.RF},
			CADir:  caDir,
			Logger: log.With("node", i),
		})
		if err != nil {
			_ = c.Stop()
			return nil, fmt.Errorf("node %d: %w", i, err)
		}
		c.servers = append(c.servers, s)
	}
	if err := os.WriteFile(filepath.Join(dir, endpointsFile), []byte(strings.Join(c.Endpoints, "\n")+"\n"), 0o644); err != nil {
		_ = c.Stop()
		return nil, err
	}
	if !c.Restarted {
		// The shape file is written last: a dir without it is not a
		// cluster yet.
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

// ensureCA creates the dev cluster's CA unless a previous, interrupted first
// run already did.
func ensureCA(dir string) error {
	if _, err := pki.LoadCA(dir); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("dev CA in %s: %w", dir, err)
	}
	ca, err := pki.NewCA("nodedb-dev", time.Now())
	if err != nil {
		return err
	}
	return pki.WriteCA(dir, ca)
}

func freeUDPAddr() (string, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer pc.Close()
	return pc.LocalAddr().String(), nil
}

// Stop stops every node.
func (c *Cluster) Stop() error {
	var errs []error
	for _, s := range c.servers {
		errs = append(errs, s.Stop())
	}
	return errors.Join(errs...)
}

// AdminSockets lists the nodes' admin sockets, node 1 first.
func (c *Cluster) AdminSockets() []string {
	var out []string
	for i := range c.servers {
		out = append(out, server.AdminSocket(NodeDir(c.Dir, i+1)))
	}
	return out
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

func (c *Cluster) leader(g ids.GroupID) *server.Server {
	for _, s := range c.servers {
		if s.Node().IsLeader(g) {
			return s
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
			if st, err := l.Node().Status(gl.Group); err == nil {
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
