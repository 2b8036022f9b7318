package server

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nodedb/nodedb-cluster/cluster"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/kv"
	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/pki"
	"github.com/nodedb/nodedb-cluster/internal/transport"
	"github.com/nodedb/nodedb-cluster/internal/transport/quicnet"
	"github.com/nodedb/nodedb-cluster/internal/transport/tcpnet"
)

// GroupID identifies a Raft group.
type GroupID = ids.GroupID

// MetaGroup is the metadata group's ID.
const MetaGroup ids.GroupID = 0

// Server is a running node.
type Server struct {
	cfg       Config
	id        ids.NodeID
	clusterID string
	vshards   int
	created   bool // this Start bootstrapped the cluster
	log       *slog.Logger
	kv        *kv.StateMachine
	metaSM    *meta.StateMachine
	view      metaView
	node      *cluster.Node
	ep        peerEndpoint
	admin     *adminServer
	registry  *prometheus.Registry
	identity  *pki.Identity
	moves     *moveCoordinator // runs in the control loop

	// Background loops (reconciliation, placement) stop with cancel.
	cancel context.CancelFunc
	wg     sync.WaitGroup
	kick   chan struct{}

	limits     kv.Limits
	closed     closedPoints
	staleStats struct{ local, refreshes atomic.Uint64 }

	peersMu sync.Mutex
	peers   map[ids.NodeID]string // addresses handed to the endpoint
	// joinPeers are the peers the join answer named, kept in cluster.json
	// (stored.JoinPeers).
	joinPeers map[ids.NodeID]string
}

// peerEndpoint is what a node uses of its peer transport, QUIC
// (quicnet) or TCP (tcpnet): Raft traffic, RPCs, peer addresses and the
// state of each link.
type peerEndpoint interface {
	transport.Transport
	transport.Caller
	Handle(method string, h transport.RPCHandler)
	SetPeer(id ids.NodeID, addr string)
	PeerState(id ids.NodeID) transport.PeerState
	JoinStats() *transport.JoinStats
	Addr() net.Addr
}

// TLSDir is where a node keeps its certificate, key and the CA certificate.
func TLSDir(dataDir string) string { return filepath.Join(dataDir, "tls") }

// AdminSocket is the path of a node's admin socket.
func AdminSocket(dataDir string) string { return filepath.Join(dataDir, "admin.sock") }

// ErrNoNode is returned when a dir holds no node and neither Bootstrap nor
// Join was asked for: a node never creates a cluster on its own.
var ErrNoNode = errors.New("the data dir holds no node")

// Start starts the node in cfg.Dir: restarts it when the dir holds one,
// otherwise bootstraps a new cluster (cfg.Bootstrap) or joins one (cfg.Join
// and cfg.Token). Joining talks to the cluster and may take until ctx ends
// or cfg.JoinTimeout passes.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	cfg.setDefaults()
	if cfg.Dir == "" {
		return nil, errors.New("a data dir is required")
	}
	if err := CheckTransport(cfg.Transport); err != nil {
		return nil, err
	}
	for flag, a := range map[string]string{"listen": cfg.Listen, "advertise": cfg.Advertise, "join": cfg.Join} {
		if err := checkAddr(flag, a); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, err
	}
	st, err := readStored(cfg.Dir)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		registry: prometheus.NewRegistry(),
		kick:     make(chan struct{}, 1),
		peers:    map[ids.NodeID]string{},
	}
	s.log = cfg.Logger
	s.limits = kv.Limits{MaxKeySize: cfg.MaxKeyBytes, MaxValueSize: cfg.MaxValueBytes}
	if st == nil {
		s.cfg.Transport = cmp.Or(cfg.Transport, TransportQUIC) // a new node's
	}
	switch {
	case st != nil:
		if cfg.Join != "" || cfg.Token != "" {
			cfg.Logger.Info("data dir already belongs to a cluster; --join and --token ignored", "dir", cfg.Dir, "node", st.NodeID, "cluster", st.ClusterID)
		}
		err = s.restart(st)
	case cfg.Bootstrap && cfg.Join != "":
		return nil, errors.New("--bootstrap and --join exclude each other")
	case cfg.Bootstrap:
		err = s.bootstrap(ctx)
	case cfg.Join != "" || cfg.Token != "":
		if cfg.Join == "" || cfg.Token == "" {
			return nil, errors.New("joining needs both --join ADDR and --token TOKEN")
		}
		err = s.join(ctx)
	default:
		return nil, fmt.Errorf("%w: %s; give --bootstrap to create a new cluster, or --join ADDR --token TOKEN to join one", ErrNoNode, cfg.Dir)
	}
	if err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// restart opens a node from its dir; flags may change its addresses, never
// its identity.
func (s *Server) restart(st *stored) error {
	s.id, s.clusterID, s.vshards = ids.NodeID(st.NodeID), st.ClusterID, st.VShards
	s.log = s.cfg.Logger.With("node", st.NodeID)
	if s.cfg.Listen == "" {
		s.cfg.Listen = st.Listen
	}
	if s.cfg.Advertise == "" {
		s.cfg.Advertise = st.Advertise
	}
	if s.cfg.API == "" {
		s.cfg.API = st.API
	}
	if s.cfg.Zone == "" {
		s.cfg.Zone = st.Zone
	}
	stTransport := cmp.Or(st.Transport, TransportQUIC)
	if s.cfg.Transport != "" && s.cfg.Transport != stTransport {
		return fmt.Errorf("%s is a node that talks to its peers over %s; it cannot switch to %s (its peers dial it over %s): leave --transport out or give %s", s.cfg.Dir, stTransport, s.cfg.Transport, stTransport, stTransport)
	}
	s.cfg.Transport = stTransport
	id, verifier, err := loadIdentity(TLSDir(s.cfg.Dir), s.id, s.log)
	if err != nil {
		return err
	}
	if s.joinPeers, err = parseJoinPeers(st.JoinPeers); err != nil {
		return err
	}
	if err := s.open(id, verifier, s.joinPeers); err != nil {
		return err
	}
	if s.cfg.Listen != st.Listen || s.cfg.Advertise != st.Advertise || s.cfg.API != st.API || s.cfg.Zone != st.Zone {
		return writeStored(s.cfg.Dir, s.stored())
	}
	return nil
}

// parseJoinPeers reads stored.JoinPeers.
func parseJoinPeers(m map[string]string) (map[ids.NodeID]string, error) {
	peers := make(map[ids.NodeID]string, len(m))
	for n, a := range m {
		id, err := strconv.ParseUint(n, 10, 64)
		if err != nil || id == 0 || a == "" {
			return nil, fmt.Errorf("%s: join peer %q: %q is not a node ID with an address", storedFile, n, a)
		}
		peers[ids.NodeID(id)] = a
	}
	return peers, nil
}

func (s *Server) stored() *stored {
	st := &stored{
		NodeID: uint64(s.id), ClusterID: s.clusterID, VShards: s.vshards,
		Listen: s.cfg.Listen, Advertise: s.cfg.Advertise, API: s.cfg.API, Zone: s.cfg.Zone,
		Transport: s.cfg.Transport,
	}
	if len(s.joinPeers) > 0 {
		st.JoinPeers = map[string]string{}
		for n, a := range s.joinPeers {
			st.JoinPeers[strconv.FormatUint(uint64(n), 10)] = a
		}
	}
	return st
}

// advertise is the address other nodes dial.
func (s *Server) advertise() string {
	if s.cfg.Advertise != "" {
		return s.cfg.Advertise
	}
	return s.cfg.Listen
}

// loadIdentity loads a node's certificate and the cluster CA from dir.
func loadIdentity(dir string, node ids.NodeID, log *slog.Logger) (*pki.Identity, *pki.Verifier, error) {
	cert, key, err := pki.LoadNode(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("load node certificate: %w", err)
	}
	if got, err := pki.NodeID(cert); err != nil || got != node {
		return nil, nil, fmt.Errorf("the certificate in %s is for node %v (%v), this is node %d", dir, got, err, node)
	}
	ca, err := pki.LoadCA(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("load CA certificate: %w", err)
	}
	if pki.NeedsRenewal(cert, time.Now()) {
		log.Warn("node certificate expires soon; issue a new one (docs/security.md)", "not_after", cert.NotAfter)
	}
	// The CA certificate goes in the chain: a joining node finds it there
	// and checks it against the hash in its token.
	id, err := pki.NewIdentity(cert, []*x509.Certificate{ca.Cert}, key)
	if err != nil {
		return nil, nil, err
	}
	return id, pki.NewVerifier(ca.Cert), nil
}

// open starts the node's storage, transport, background loops and admin
// endpoint. peers seeds the endpoint's address book (a joiner has no
// metadata yet); the metadata state keeps it current afterwards.
func (s *Server) open(id *pki.Identity, verifier *pki.Verifier, peers map[ids.NodeID]string) error {
	if s.cfg.Listen == "" {
		return errors.New("--listen is required")
	}
	s.identity = id
	s.metaSM = meta.NewStateMachine(func(st *metaState) { s.view.set(st); s.poke() })
	var err error
	s.kv, err = kv.New(s.vshards)
	if err != nil {
		return err
	}
	for n, a := range peers {
		s.peers[n] = a
	}
	s.node, err = cluster.Start(cluster.Config{
		NodeID:       s.id,
		Dir:          filepath.Join(s.cfg.Dir, "store"),
		StateMachine: s.kv,
		GroupStateMachine: func(g ids.GroupID) cluster.StateMachine {
			if g == MetaGroup {
				return s.metaSM
			}
			return nil
		},
		TickInterval:       s.cfg.TickInterval,
		ElectionTicks:      s.cfg.ElectionTicks,
		HeartbeatTicks:     s.cfg.HeartbeatTicks,
		ReadLease:          s.cfg.ReadLease,
		NoQuiesce:          s.cfg.NoQuiesce,
		DiskStallStepDown:  s.cfg.DiskStallStepDown,
		ClientIdleExpiry:   s.cfg.ClientIdleExpiry,
		CacheBytes:         s.cfg.CacheBytes,
		MemTableBytes:      s.cfg.MemTableBytes,
		LogMaxEntries:      s.cfg.LogMaxEntries,
		LogKeepEntries:     s.cfg.LogKeepEntries,
		LogTruncateEntries: s.cfg.LogTruncateEntries,
		Logger:             s.log,
		Registerer:         s.registry,
		Connect: func(h transport.Handler) (transport.Transport, error) {
			ep, err := s.listenPeers(id, verifier, peers, h)
			if err != nil {
				return nil, err
			}
			s.ep = ep
			return ep, nil
		},
	})
	if err != nil {
		return err
	}
	s.registerRPCs()
	if err := s.view.load(s.node); err != nil {
		return fmt.Errorf("load metadata: %w", err)
	}
	s.moves = newMoveCoordinator(s, s.cfg)
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.controlLoop(ctx)
	}()
	s.admin, err = startAdmin(s)
	if err != nil {
		return err
	}
	s.log.Info("node started", "listen", s.ep.Addr().String(), "transport", s.cfg.Transport, "cluster", s.clusterID, "admin", AdminSocket(s.cfg.Dir))
	return nil
}

// poke wakes the control loop.
func (s *Server) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Node returns the embedded cluster node.
func (s *Server) Node() *cluster.Node { return s.node }

// ID returns the node's ID.
func (s *Server) ID() ids.NodeID { return s.id }

// Created reports whether this start bootstrapped a new cluster (as
// opposed to restarting a node or joining).
func (s *Server) Created() bool { return s.created }

// ClusterID returns the ID of the node's cluster.
func (s *Server) ClusterID() string { return s.clusterID }

// Addr returns the QUIC address the node listens on.
func (s *Server) Addr() net.Addr { return s.ep.Addr() }

// listenPeers starts the node's peer endpoint on its transport.
func (s *Server) listenPeers(id *pki.Identity, verifier *pki.Verifier, peers map[ids.NodeID]string, h transport.Handler) (peerEndpoint, error) {
	log := s.log.With("component", s.cfg.Transport+"net")
	if s.cfg.Transport == TransportTCP {
		return tcpnet.Listen(tcpnet.Config{Identity: id, Verifier: verifier, Listen: s.cfg.Listen, Peers: peers,
			Join: s.handleJoin, Logger: log, Registerer: s.registry}, h)
	}
	return quicnet.Listen(quicnet.Config{Identity: id, Verifier: verifier, Listen: s.cfg.Listen, Peers: peers,
		Join: s.handleJoin, Logger: log, Registerer: s.registry}, h)
}

// Transport is the node's peer transport, TransportQUIC or TransportTCP.
func (s *Server) Transport() string { return s.cfg.Transport }

// Dir is the node's data dir.
func (s *Server) Dir() string { return s.cfg.Dir }

// Registry is the node's metrics registry.
func (s *Server) Registry() *prometheus.Registry { return s.registry }

// APIAddr is the client API address this node announces (empty if none).
func (s *Server) APIAddr() string { return s.cfg.API }

// APITLS is a TLS configuration for the client API that presents this
// node's certificate (signed by the cluster CA; clients trust ca.crt).
func (s *Server) APITLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.identity.Certificate(), nil
		},
	}
}

// Stop stops the admin endpoint, the background loops, then the node.
func (s *Server) Stop() error {
	var errs []error
	if s.admin != nil {
		errs = append(errs, s.admin.close())
	}
	if s.cancel != nil {
		s.cancel()
		s.wg.Wait()
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
