// Package server runs one node of a nodedb-cluster as a process would: its
// data dir, its TLS identity, its QUIC endpoint, the Raft groups it holds,
// forwarding of requests to group leaders over QUIC, and the local admin
// endpoint (a Unix socket in the data dir that only the dir's owner can use).
//
// Until the metadata group lands, the cluster's membership and group layout
// are static: every node is started with the same peer list and layout, like
// etcd's --initial-cluster, and records them in its data dir at first start.
// This is temporary and documented as such.
package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/vshard"
)

// Layout is the static shape of a cluster: its vShard count, data groups and
// replication factor. It is fixed at the cluster's creation.
type Layout struct {
	Groups  int `json:"groups"`
	VShards int `json:"vshards"`
	RF      int `json:"rf"`
}

// Validate checks a layout against the number of nodes.
func (l Layout) Validate(nodes int) error {
	if err := vshard.ValidateCount(l.VShards); err != nil {
		return err
	}
	if l.Groups < 1 || l.Groups > l.VShards {
		return fmt.Errorf("groups must be between 1 and the vShard count (%d), got %d", l.VShards, l.Groups)
	}
	if l.RF < 1 || l.RF > nodes {
		return fmt.Errorf("replication factor must be between 1 and the node count (%d), got %d", nodes, l.RF)
	}
	return nil
}

// Config configures a node process.
type Config struct {
	// Dir is the node's data dir.
	Dir string
	// NodeID may be zero on a restart: the data dir knows it.
	NodeID ids.NodeID
	// Listen is the QUIC address (UDP). On a restart it defaults to the
	// stored one.
	Listen string
	// Peers maps every node of the cluster, this one included, to its QUIC
	// address. Required at first start; later starts use the stored list
	// unless given again.
	Peers map[ids.NodeID]string
	// Layout is used at first start only.
	Layout Layout
	// CADir holds the cluster CA (ca.crt, and ca.key to issue this node's
	// certificate at first start). Not needed once the node has its
	// certificate in Dir/tls.
	CADir string

	TickInterval   time.Duration
	ElectionTicks  int
	HeartbeatTicks int
	CacheBytes     int64
	MemTableBytes  uint64
	Logger         *slog.Logger
}

// stored is what a node records in its data dir at first start.
type stored struct {
	NodeID uint64            `json:"node_id"`
	Listen string            `json:"listen"`
	Peers  map[string]string `json:"peers"`
	Layout Layout            `json:"layout"`
}

const storedFile = "cluster.json"

func readStored(dir string) (*stored, error) {
	b, err := os.ReadFile(filepath.Join(dir, storedFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s stored
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Join(dir, storedFile), err)
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
	return os.Rename(tmp, filepath.Join(dir, storedFile))
}

func (s *stored) peers() (map[ids.NodeID]string, error) {
	out := map[ids.NodeID]string{}
	for k, v := range s.Peers {
		id, err := strconv.ParseUint(k, 10, 64)
		if err != nil || id == 0 {
			return nil, fmt.Errorf("stored peer id %q", k)
		}
		out[ids.NodeID(id)] = v
	}
	return out, nil
}

func encodePeers(p map[ids.NodeID]string) map[string]string {
	out := map[string]string{}
	for id, a := range p {
		out[strconv.FormatUint(uint64(id), 10)] = a
	}
	return out
}

// ParsePeers parses "1=host:port,2=host:port,...". Node IDs must be 1..N
// without gaps (the static layout places groups on nodes 1..N), and every
// address must be a host:port.
func ParsePeers(s string) (map[ids.NodeID]string, error) {
	out := map[ids.NodeID]string{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("peer %q: want ID=HOST:PORT", part)
		}
		id, err := strconv.ParseUint(k, 10, 64)
		if err != nil || id == 0 {
			return nil, fmt.Errorf("peer %q: bad node ID", part)
		}
		if _, _, err := net.SplitHostPort(v); err != nil {
			return nil, fmt.Errorf("peer %q: %w", part, err)
		}
		if _, dup := out[ids.NodeID(id)]; dup {
			return nil, fmt.Errorf("peer %d listed twice", id)
		}
		out[ids.NodeID(id)] = v
	}
	return out, checkPeerIDs(out)
}

func checkPeerIDs(p map[ids.NodeID]string) error {
	if len(p) == 0 {
		return errors.New("no peers")
	}
	keys := make([]ids.NodeID, 0, len(p))
	for id := range p {
		keys = append(keys, id)
	}
	slices.Sort(keys)
	for i, id := range keys {
		if id != ids.NodeID(i+1) {
			return fmt.Errorf("node IDs must be 1..%d without gaps, got %v", len(p), keys)
		}
	}
	return nil
}
