package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nodedb/nodedb-cluster/cluster"
	"github.com/nodedb/nodedb-cluster/statemachine"

	// The cluster package has no exported way to build its QUIC transport
	// or node certificates (Config.Connect's type is internal/transport's),
	// so this uses the packages the built-in server uses. The go command
	// allows it: the internal rule compares import paths, and this module's
	// path is under github.com/nodedb/nodedb-cluster/.
	"github.com/nodedb/nodedb-cluster/internal/pki"
	"github.com/nodedb/nodedb-cluster/internal/transport"
	"github.com/nodedb/nodedb-cluster/internal/transport/quicnet"
)

// oursGroups is our side: 3 cluster.Nodes in this process, each a replica
// of every group, over QUIC with mutual TLS on 127.0.0.1.
type oursGroups struct {
	nodes  []*cluster.Node
	leader []atomic.Int32 // per group: index of the node leading it
}

// benchSM is the state machine of our side: it sets the proposal's key to
// its value in the vShard's state (the batch that also records the applied
// index), the library's counterpart of dragonboat's in-memory map.
type benchSM struct{}

func (benchSM) Apply(w statemachine.Writer, _ uint32, cmds []statemachine.Command, results [][]byte) error {
	for i, c := range cmds {
		k, v, ok := decodeCmd(c.Data)
		if !ok {
			results[i] = []byte("malformed")
			continue
		}
		if err := w.Set(k, v); err != nil {
			return err
		}
	}
	return nil
}

func (benchSM) Read(r statemachine.Reader, _ uint32, query []byte) ([]byte, error) {
	return r.Get(query)
}

func startOursGroups(ctx context.Context, o groupOptions) (_ groupSystem, err error) {
	const nodes = 3
	c := &oursGroups{leader: make([]atomic.Int32, o.groups)}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	now := time.Now()
	ca, err := pki.NewCA("bench-manygroups", now)
	if err != nil {
		return nil, err
	}
	verifier := pki.NewVerifier(ca.Cert)
	addrs := map[cluster.NodeID]string{}
	idents := map[cluster.NodeID]*pki.Identity{}
	for i := 1; i <= nodes; i++ {
		id := cluster.NodeID(i)
		key, err := pki.NewNodeKey()
		if err != nil {
			return nil, err
		}
		cert, err := ca.IssueNode(key.Public(), id, []string{"127.0.0.1"}, now, 0)
		if err != nil {
			return nil, err
		}
		if idents[id], err = pki.NewIdentity(cert, nil, key); err != nil {
			return nil, err
		}
		if addrs[id], err = freeAddr(); err != nil {
			return nil, err
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var founders []cluster.Replica
	for i := 1; i <= nodes; i++ {
		founders = append(founders, cluster.Replica{Replica: cluster.ReplicaID(i), Node: cluster.NodeID(i)})
	}
	for i := 1; i <= nodes; i++ {
		id := cluster.NodeID(i)
		peers := map[cluster.NodeID]string{}
		for n, a := range addrs {
			if n != id {
				peers[n] = a
			}
		}
		nlog := log.With("node", i)
		n, err := cluster.Start(cluster.Config{
			NodeID:         id,
			Dir:            filepath.Join(o.dir, fmt.Sprintf("n%d", i)),
			StateMachine:   benchSM{},
			TickInterval:   o.tick,
			ElectionTicks:  mgElectionTicks,
			HeartbeatTicks: mgHeartbeatTicks,
			Workers:        o.oursWorkers,
			Logger:         nlog,
			Connect: func(h transport.Handler) (transport.Transport, error) {
				return quicnet.Listen(quicnet.Config{
					Identity: idents[id],
					Verifier: verifier,
					Listen:   addrs[id],
					Peers:    peers,
					Logger:   nlog.With("component", "quicnet"),
				}, h)
			},
		})
		if err != nil {
			return nil, fmt.Errorf("node %d: %w", i, err)
		}
		c.nodes = append(c.nodes, n)
		for g := 1; g <= o.groups; g++ {
			if err := n.BootstrapGroup(cluster.GroupID(g), cluster.ReplicaID(i), founders); err != nil {
				return nil, fmt.Errorf("node %d: bootstrap group %d: %w", i, g, err)
			}
		}
	}
	// Let the node meant to lead each group campaign first, so that most
	// elections already give the spread; spreadLeaders moves the rest.
	for g := range o.groups {
		_ = c.nodes[spreadTarget(g, nodes)].Campaign(cluster.GroupID(g + 1))
	}
	if err := c.spreadLeaders(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *oursGroups) leaderOf(g int) int {
	for i, n := range c.nodes {
		if n.IsLeader(cluster.GroupID(g + 1)) {
			return i
		}
	}
	return -1
}

// agreedLeader returns the index of the node that leads group g if every
// node sees it so, or -1.
func (c *oursGroups) agreedLeader(g int) int {
	l := c.leaderOf(g)
	if l < 0 {
		return -1
	}
	for _, n := range c.nodes {
		if _, node, err := n.Leader(cluster.GroupID(g + 1)); err != nil || int(node)-1 != l {
			return -1
		}
	}
	return l
}

func (c *oursGroups) spreadLeaders(ctx context.Context) error {
	deadline := time.Now().Add(2 * time.Minute)
	var moved time.Time
	for {
		done := true
		var moves []func()
		for g := range c.leader {
			l := c.agreedLeader(g)
			want := spreadTarget(g, len(c.nodes))
			switch {
			case l < 0:
				done = false
			case l != want:
				done = false
				moves = append(moves, func() {
					tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
					defer cancel()
					_ = c.nodes[l].TransferLeadership(tctx, cluster.GroupID(g+1), cluster.ReplicaID(want+1))
				})
			}
			if l >= 0 {
				c.leader[g].Store(int32(l))
			}
		}
		if done {
			return nil
		}
		if len(moves) > 0 && time.Since(moved) > time.Second {
			moved = time.Now()
			var wg sync.WaitGroup
			for _, m := range moves {
				wg.Go(m)
			}
			wg.Wait()
		}
		if time.Now().After(deadline) {
			for g := range c.leader {
				if c.leaderOf(g) < 0 {
					return fmt.Errorf("nodedb: group %d has no leader", g+1)
				}
			}
			logf("nodedb: leaderships not spread after 2 minutes, going on: %v", c.leaders())
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (c *oursGroups) name() string { return "nodedb" }

func (c *oursGroups) propose(ctx context.Context, g int, cmd []byte) error {
	l := c.leader[g].Load()
	_, err := c.nodes[l].Propose(ctx, cluster.GroupID(g+1), cluster.Proposal{VShard: uint32(g), Payload: cmd})
	if err != nil {
		// Leadership may have moved: follow the hint for the next proposal.
		var nle *cluster.NotLeaderError
		if errors.As(err, &nle) && nle.LeaderNode >= 1 && int(nle.LeaderNode) <= len(c.nodes) {
			c.leader[g].Store(int32(nle.LeaderNode) - 1)
		} else if nl := c.leaderOf(g); nl >= 0 {
			c.leader[g].Store(int32(nl))
		}
	}
	return err
}

func (c *oursGroups) leaders() []int {
	out := make([]int, len(c.nodes))
	for g := range c.leader {
		if l := c.leaderOf(g); l >= 0 {
			out[l]++
		}
	}
	return out
}

func (c *oursGroups) terms() uint64 {
	var sum uint64
	for g := range c.leader {
		var t uint64
		for _, n := range c.nodes {
			if st, err := n.Status(cluster.GroupID(g + 1)); err == nil {
				t = max(t, st.Term)
			}
		}
		sum += t
	}
	return sum
}

func (c *oursGroups) close() error {
	var errs []error
	for _, n := range c.nodes {
		if err := n.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	c.nodes = nil
	return errors.Join(errs...)
}
