// Package server runs one node of a nodedb-cluster as a process does: its
// data dir, its TLS identity, its QUIC endpoint, its replica of the metadata
// group and of the data groups placed on it, forwarding of requests to group
// leaders over QUIC, and the local admin endpoint (a Unix socket in the data
// dir that only the dir's owner can use).
//
// A node comes to exist in exactly two ways, both explicit: Bootstrap
// creates a new cluster, Join enters an existing one with a single-use
// token. A dir that already holds a node restarts it and ignores both.
package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/migrate"
	"github.com/nodedb/nodedb-cluster/vshard"
)

// Settings shape a new cluster; they are used by Bootstrap only and live in
// the metadata group afterwards.
type Settings struct {
	// VShards is the number of vShards, a power of two from 16 to 16384.
	VShards int
	// Groups is the number of data groups created at bootstrap.
	Groups int
	// RF is the number of voters of each data group.
	RF int
}

// DefaultSettings are the defaults of `start --bootstrap`.
func DefaultSettings() Settings { return Settings{VShards: 1024, Groups: 16, RF: 3} }

// Validate checks bootstrap settings.
func (s Settings) Validate() error {
	if err := vshard.ValidateCount(s.VShards); err != nil {
		return err
	}
	if s.Groups < 1 || s.Groups > s.VShards {
		return fmt.Errorf("groups must be between 1 and the vShard count (%d), got %d", s.VShards, s.Groups)
	}
	if s.RF < 1 || s.RF > 7 {
		return fmt.Errorf("replication factor must be between 1 and 7, got %d", s.RF)
	}
	return nil
}

// Config configures a node process.
type Config struct {
	// Dir is the node's data dir.
	Dir string
	// Listen is the peer address: UDP for QUIC, TCP with Transport "tcp".
	// Required to create a node; a restart defaults to the stored one.
	Listen string
	// Transport is how this node talks to its peers: "quic" (the default)
	// or "tcp" (TCP with the same mutual TLS 1.3, for networks that block
	// UDP). Every node of a cluster must use the same; a node keeps the one
	// it was created with, and a restart that names another is refused.
	Transport string
	// Advertise is the address other nodes dial; default Listen.
	Advertise string
	// API is the client API address this node announces in the metadata
	// (internal/api serves it; clients find every node's API there).
	API string
	// Zone labels the node's failure domain; replicas of a group go to
	// distinct zones when zones are given.
	Zone string

	// Bootstrap creates a new cluster in an empty dir, with Settings.
	Bootstrap bool
	Settings  Settings
	// Join is the peer address of any node of the cluster to join, with
	// Token (from `token create`).
	Join  string
	Token string
	// JoinTimeout bounds the whole join, retries included. Default 2m.
	JoinTimeout time.Duration

	TickInterval   time.Duration
	ElectionTicks  int
	HeartbeatTicks int
	// ReadLease: see cluster.Config.ReadLease.
	ReadLease bool
	// NoQuiesce: see cluster.Config.NoQuiesce.
	NoQuiesce bool
	// DiskStallStepDown: see cluster.Config.DiskStallStepDown.
	DiskStallStepDown time.Duration
	// ClientIdleExpiry: see cluster.Config.ClientIdleExpiry (zero: its
	// default, an hour; negative: never).
	ClientIdleExpiry time.Duration
	CacheBytes       int64
	MemTableBytes    uint64
	// LogMaxEntries and LogKeepEntries bound every group's Raft log (see
	// cluster.Config); zero keeps the defaults.
	LogMaxEntries, LogKeepEntries uint64
	// LogTruncateEntries is the log length above which a leader whose
	// followers are all caught up truncates to what they all hold (default
	// of the cluster package when zero).
	LogTruncateEntries uint64
	// MaxKeyBytes and MaxValueBytes bound keys and values of the KV API;
	// defaults 4 KiB and 1 MiB.
	MaxKeyBytes, MaxValueBytes int
	// ControlInterval is how often the metadata leader reconciles placement
	// and every node reconciles its replicas. Default 500ms.
	ControlInterval time.Duration
	// MoveAbortTimeout: a replica move still before its point of no return
	// this long after it started is aborted. Default 1h.
	MoveAbortTimeout time.Duration
	// NodeGoneAfter: the target of a replica move that has not answered the
	// coordinator for this long is gone, and a move to it before its point
	// of no return is aborted. Default 5m.
	NodeGoneAfter time.Duration
	Logger        *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.JoinTimeout <= 0 {
		c.JoinTimeout = 2 * time.Minute
	}
	if c.ControlInterval <= 0 {
		c.ControlInterval = 500 * time.Millisecond
	}
	if c.MoveAbortTimeout <= 0 {
		c.MoveAbortTimeout = migrate.DefaultAbortTimeout
	}
	if c.NodeGoneAfter <= 0 {
		c.NodeGoneAfter = 5 * time.Minute
	}
	if c.Settings == (Settings{}) {
		c.Settings = DefaultSettings()
	}
}

// stored is a node's identity, recorded in DIR/cluster.json once the node
// exists (bootstrapped, or joined): a dir without it is not a node yet.
type stored struct {
	NodeID    uint64 `json:"node_id"`
	ClusterID string `json:"cluster_id"`
	// VShards is the cluster's vShard count, fixed at bootstrap (the KV
	// state machine needs it before the metadata state is loaded).
	VShards   int    `json:"vshards"`
	Listen    string `json:"listen"`
	Advertise string `json:"advertise,omitempty"`
	API       string `json:"api,omitempty"`
	Zone      string `json:"zone,omitempty"`
	// Transport is the node's peer transport; empty (dirs made before there
	// was a choice) is QUIC.
	Transport string `json:"transport,omitempty"`
	// Peers is the static peer list of nodes made before the metadata group
	// existed; such a dir is refused.
	Peers map[string]string `json:"peers,omitempty"`
	// JoinPeers are the nodes (ID → peer address) the join answer named. A
	// joined node learns the metadata state from its peers until it holds a
	// replica of the metadata group; one restarted before that (stopped
	// right after joining) knows no peer but these.
	JoinPeers map[string]string `json:"join_peers,omitempty"`
}

const storedFile = "cluster.json"

func readStored(dir string) (*stored, error) {
	path := filepath.Join(dir, storedFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s stored
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(s.Peers) > 0 {
		return nil, fmt.Errorf("%s was created by an older release with a static --peers list; it cannot join a cluster with a metadata group: start a new cluster", dir)
	}
	if s.NodeID == 0 || s.ClusterID == "" {
		return nil, fmt.Errorf("%s: no node or cluster ID", path)
	}
	if err := vshard.ValidateCount(s.VShards); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &s, nil
}

func writeStored(dir string, s *stored) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, storedFile+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, storedFile)); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// checkAddr validates a HOST:PORT flag.
func checkAddr(flag, addr string) error {
	if addr == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--%s %q: %w", flag, addr, err)
	}
	if port == "" || port == "0" {
		return fmt.Errorf("--%s %q: a fixed port is required (other nodes dial it)", flag, addr)
	}
	_ = host
	return nil
}

// IsNode reports whether dir holds a node (bootstrapped or joined), so that
// starting it needs neither --bootstrap nor --join.
func IsNode(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, storedFile))
	return err == nil
}

// Peer transports (Config.Transport).
const (
	TransportQUIC = "quic"
	TransportTCP  = "tcp"
)

// CheckTransport validates a Config.Transport ("" is allowed: the stored
// one, or QUIC).
func CheckTransport(t string) error {
	switch t {
	case "", TransportQUIC, TransportTCP:
		return nil
	}
	return fmt.Errorf("transport %q: want %q or %q", t, TransportQUIC, TransportTCP)
}
