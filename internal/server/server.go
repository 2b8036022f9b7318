package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nodedb/nodedb-cluster/cluster"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/kv"
	"github.com/nodedb/nodedb-cluster/internal/pki"
	"github.com/nodedb/nodedb-cluster/internal/placement"
	"github.com/nodedb/nodedb-cluster/internal/transport"
	"github.com/nodedb/nodedb-cluster/internal/transport/quicnet"
)

// Server is a running node.
type Server struct {
	cfg      Config
	id       ids.NodeID
	layout   Layout
	peers    map[ids.NodeID]string
	log      *slog.Logger
	sm       *kv.StateMachine
	node     *cluster.Node
	ep       *quicnet.Endpoint
	admin    *adminServer
	registry *prometheus.Registry
}

// TLSDir is where a node keeps its certificate, key and the CA certificate.
func TLSDir(dataDir string) string { return filepath.Join(dataDir, "tls") }

// AdminSocket is the path of a node's admin socket.
func AdminSocket(dataDir string) string { return filepath.Join(dataDir, "admin.sock") }

// Start starts a node from cfg.Dir, creating it at first start.
func Start(cfg Config) (*Server, error) {
	if cfg.Dir == "" {
		return nil, errors.New("a data dir is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, err
	}
	st, err := readStored(cfg.Dir)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, registry: prometheus.NewRegistry()}
	if st == nil {
		if err := s.firstStart(); err != nil {
			return nil, err
		}
	} else if err := s.restart(st); err != nil {
		return nil, err
	}
	s.log = cfg.Logger.With("node", uint64(s.id))
	if err := s.open(st == nil); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// firstStart validates the flags of a new node and records them.
func (s *Server) firstStart() error {
	cfg := s.cfg
	if cfg.NodeID == 0 {
		return errors.New("a new node needs --node-id")
	}
	if err := checkPeerIDs(cfg.Peers); err != nil {
		return fmt.Errorf("--peers: %w", err)
	}
	self, ok := cfg.Peers[cfg.NodeID]
	if !ok {
		return fmt.Errorf("--peers does not list this node (%d)", cfg.NodeID)
	}
	if cfg.Listen == "" {
		cfg.Listen = self
	}
	if err := cfg.Layout.Validate(len(cfg.Peers)); err != nil {
		return err
	}
	s.id, s.layout, s.peers, s.cfg.Listen = cfg.NodeID, cfg.Layout, cfg.Peers, cfg.Listen
	return nil
}

// restart takes the node's identity and layout from its dir; flags may
// update the peers' addresses and the listen address, never the identity.
func (s *Server) restart(st *stored) error {
	if s.cfg.NodeID != 0 && s.cfg.NodeID != ids.NodeID(st.NodeID) {
		return fmt.Errorf("%s belongs to node %d, not %d", s.cfg.Dir, st.NodeID, s.cfg.NodeID)
	}
	s.id, s.layout = ids.NodeID(st.NodeID), st.Layout
	peers, err := st.peers()
	if err != nil {
		return err
	}
	if len(s.cfg.Peers) > 0 {
		if len(s.cfg.Peers) != len(peers) {
			return fmt.Errorf("--peers lists %d nodes, the cluster has %d (membership changes come with the metadata group)", len(s.cfg.Peers), len(peers))
		}
		peers = s.cfg.Peers
	}
	s.peers = peers
	if s.cfg.Listen == "" {
		s.cfg.Listen = st.Listen
	}
	return nil
}

// identity loads the node's certificate, issuing it from the CA at first
// start when the CA key is at hand.
func (s *Server) identity() (*pki.Identity, *pki.Verifier, error) {
	dir := TLSDir(s.cfg.Dir)
	cert, key, err := pki.LoadNode(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if s.cfg.CADir == "" {
			return nil, nil, fmt.Errorf("no node certificate in %s: give --ca-dir (the cluster CA, with its key) or provision one with `nodedb-cluster certs node`", dir)
		}
		ca, err := pki.LoadCA(s.cfg.CADir)
		if err != nil {
			return nil, nil, fmt.Errorf("load CA: %w", err)
		}
		if ca.Key == nil {
			return nil, nil, fmt.Errorf("%s holds no CA key to issue this node's certificate", s.cfg.CADir)
		}
		nk, err := pki.NewNodeKey()
		if err != nil {
			return nil, nil, err
		}
		host, _, _ := net.SplitHostPort(s.cfg.Listen)
		var hosts []string
		if host != "" {
			hosts = append(hosts, host)
		}
		c, err := ca.IssueNode(nk.Public(), s.id, hosts, time.Now(), 0)
		if err != nil {
			return nil, nil, err
		}
		if err := pki.WriteCACert(dir, ca.Cert); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, nil, err
		}
		if err := pki.WriteNode(dir, c, nk); err != nil {
			return nil, nil, err
		}
		cert, key = c, nk
	} else if err != nil {
		return nil, nil, fmt.Errorf("load node certificate: %w", err)
	}
	if got, err := pki.NodeID(cert); err != nil || got != s.id {
		return nil, nil, fmt.Errorf("the certificate in %s is for node %v (%v), this is node %d", dir, got, err, s.id)
	}
	ca, err := pki.LoadCA(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("load CA certificate: %w", err)
	}
	if pki.NeedsRenewal(cert, time.Now()) {
		s.cfg.Logger.Warn("node certificate expires soon; issue a new one (docs/security.md)", "not_after", cert.NotAfter)
	}
	id, err := pki.NewIdentity(cert, nil, key)
	if err != nil {
		return nil, nil, err
	}
	return id, pki.NewVerifier(ca.Cert), nil
}

// open starts the node's storage, transport, groups and admin endpoint.
func (s *Server) open(fresh bool) error {
	id, verifier, err := s.identity()
	if err != nil {
		return err
	}
	s.sm, err = kv.New(s.layout.VShards)
	if err != nil {
		return err
	}
	s.node, err = cluster.Start(cluster.Config{
		NodeID:         s.id,
		Dir:            filepath.Join(s.cfg.Dir, "store"),
		StateMachine:   s.sm,
		TickInterval:   s.cfg.TickInterval,
		ElectionTicks:  s.cfg.ElectionTicks,
		HeartbeatTicks: s.cfg.HeartbeatTicks,
		CacheBytes:     s.cfg.CacheBytes,
		MemTableBytes:  s.cfg.MemTableBytes,
		Logger:         s.log,
		Registerer:     s.registry,
		Connect: func(h transport.Handler) (transport.Transport, error) {
			ep, err := quicnet.Listen(quicnet.Config{
				Identity:   id,
				Verifier:   verifier,
				Listen:     s.cfg.Listen,
				Peers:      s.peers,
				Logger:     s.log.With("component", "quicnet"),
				Registerer: s.registry,
			}, h)
			s.ep = ep
			return ep, err
		},
	})
	if err != nil {
		return err
	}
	s.registerRPCs()
	if fresh {
		if err := s.bootstrap(); err != nil {
			return err
		}
	}
	s.admin, err = startAdmin(s)
	if err != nil {
		return err
	}
	s.log.Info("node started", "listen", s.ep.Addr().String(), "groups", len(s.node.Groups()), "admin", AdminSocket(s.cfg.Dir))
	return nil
}

// bootstrap creates this node's replicas of the static layout, then records
// the node in its dir: a dir without cluster.json is not a node yet, and a
// start that fails before it is written starts over.
func (s *Server) bootstrap() error {
	layout, err := placement.Static(s.layout.Groups, len(s.peers), s.layout.RF)
	if err != nil {
		return err
	}
	for g, founders := range layout {
		for _, f := range founders {
			if f.Node != s.id {
				continue
			}
			err := s.node.BootstrapGroup(ids.GroupID(g+1), f.Replica, founders)
			if err != nil && !errors.Is(err, cluster.ErrReplicaExists) {
				return fmt.Errorf("bootstrap group %d: %w", g+1, err)
			}
		}
	}
	return writeStored(s.cfg.Dir, &stored{NodeID: uint64(s.id), Listen: s.cfg.Listen, Peers: encodePeers(s.peers), Layout: s.layout})
}

// Node returns the embedded cluster node.
func (s *Server) Node() *cluster.Node { return s.node }

// ID returns the node's ID.
func (s *Server) ID() ids.NodeID { return s.id }

// Addr returns the QUIC address the node listens on.
func (s *Server) Addr() net.Addr { return s.ep.Addr() }

// Layout returns the cluster's layout.
func (s *Server) Layout() Layout { return s.layout }

// Stop stops the admin endpoint, then the node.
func (s *Server) Stop() error {
	var errs []error
	if s.admin != nil {
		errs = append(errs, s.admin.close())
	}
	if s.node != nil {
		errs = append(errs, s.node.Stop())
	}
	return errors.Join(errs...)
}

// Wait blocks until ctx ends or the node fails.
func (s *Server) Wait(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := s.node.Err(); err != nil {
				return err
			}
		}
	}
}
