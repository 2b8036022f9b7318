// Package cluster is the embeddable nodedb-cluster node: one process's
// storage engine and every Raft group replica it hosts, running a state
// machine of your choice.
//
// A Node owns one Pebble engine in its data dir and a multi-Raft host. Groups
// are created explicitly: BootstrapGroup on each founding member, or
// CreateReplica followed by ChangeReplicas on the leader to add a member
// later. Commands are proposed to a group's leader (Propose) and reads are
// linearizable by default (Read).
//
// This package is the embeddable core: group placement and routing are the
// caller's job. The built-in server (internal/server) places groups and
// routes keys through its metadata group; the test cluster places them
// statically.
package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/raftstore"
	"github.com/nodedb/nodedb-cluster/internal/storage"
	"github.com/nodedb/nodedb-cluster/internal/transport"
	"github.com/nodedb/nodedb-cluster/statemachine"
)

// Identifiers. See package ids for why they are distinct types.
type (
	NodeID    = ids.NodeID
	GroupID   = ids.GroupID
	ReplicaID = ids.ReplicaID
)

// Re-exported so that embedders need only this package.
type (
	StateMachine = statemachine.StateMachine
	Proposal     = raftstore.Proposal
	PendingRead  = raftstore.PendingRead
	// PendingProposal is a proposal started by Node.StartPropose.
	PendingProposal = raftstore.PendingProposal
	GroupStatus     = raftstore.GroupStatus
	ReplicaChange   = raftstore.ReplicaChange
	Replica         = storage.ReplicaDesc
	Stats           = raftstore.Stats
)

// Replica change operations.
const (
	AddVoter      = raftstore.AddVoter
	AddLearner    = raftstore.AddLearner
	RemoveReplica = raftstore.RemoveReplica
)

// Errors. Match them with errors.Is / errors.As.
var (
	ErrStopped            = raftstore.ErrStopped
	ErrGroupNotFound      = raftstore.ErrGroupNotFound
	ErrProposalDropped    = raftstore.ErrProposalDropped
	ErrOutcomeUnknown     = raftstore.ErrOutcomeUnknown
	ErrTooLarge           = raftstore.ErrTooLarge
	ErrStaleSequence      = raftstore.ErrStaleSequence
	ErrConfChangeRejected = raftstore.ErrConfChangeRejected
	ErrReplicaExists      = raftstore.ErrReplicaExists
	ErrReplicaTombstoned  = raftstore.ErrReplicaTombstoned
	ErrTransferAborted    = raftstore.ErrTransferAborted
	ErrReadNotDone        = raftstore.ErrReadNotDone
	ErrProposalNotDone    = raftstore.ErrProposalNotDone
	// ErrWrongNode is returned when a data dir belongs to another node.
	ErrWrongNode = errors.New("cluster: data dir belongs to another node")
)

// NotLeaderError names the leader a request should go to.
type NotLeaderError = raftstore.NotLeaderError

// Config configures a Node.
type Config struct {
	// NodeID is this node's identity; required. A data dir remembers the
	// node it belongs to and refuses to open as another.
	NodeID NodeID
	// Dir is the node's data dir; required.
	Dir string
	// StateMachine is the replicated service; required.
	StateMachine StateMachine
	// GroupStateMachine, when set, overrides StateMachine for the groups it
	// returns non-nil for (the built-in server runs the metadata state
	// machine on group 0). It must answer the same for a group every time.
	GroupStateMachine func(GroupID) StateMachine
	// Connect attaches the node to its network: given the handler for
	// incoming traffic it returns the transport for outgoing traffic. The
	// node closes the transport when it stops.
	Connect func(transport.Handler) (transport.Transport, error)

	// TickInterval is the Raft clock period. Default 100ms: elections after
	// 1-2s of leader silence, heartbeats every 200ms.
	TickInterval time.Duration
	// ElectionTicks and HeartbeatTicks, in ticks. Defaults 10 and 2.
	ElectionTicks, HeartbeatTicks int
	// CommitNoticeDelay is how long a leader holds back the empty append
	// that tells followers of a new commit index, in case the next
	// proposal's append (or a heartbeat) carries the same news. Followers
	// of a group that goes quiet apply its last writes that much later;
	// clients never wait for it. Default 50ms; negative sends at once.
	CommitNoticeDelay time.Duration
	// ReadLease serves linearizable reads from the leader's lease, without
	// a quorum round per batch of reads; it assumes clocks on different
	// nodes run at rates within 10% of each other. Off by default.
	ReadLease bool
	// NoQuiesce keeps idle groups heartbeating. By default a group with
	// nothing to do stops its Raft clock (docs/architecture.md,
	// Quiescence); leases (ReadLease) turn quiescence off.
	NoQuiesce bool
	// DiskStallStepDown is how long one Raft log write may take before
	// this node hands the groups it leads to other replicas, whose disks
	// still work (docs/architecture.md, "A stalled disk"). Default two
	// election timeouts, at least 2 s; negative turns it off.
	DiskStallStepDown time.Duration
	// Workers is the Raft worker pool size. Default GOMAXPROCS.
	Workers int
	// LogMaxEntries is the log length that triggers truncation of applied
	// entries; LogKeepEntries how many applied entries it keeps. Defaults
	// 10000 and 5000.
	LogMaxEntries, LogKeepEntries uint64
	// LogTruncateEntries is the log length above which a leader whose
	// followers are all caught up truncates every replica's log to what
	// they all hold. Default 512.
	LogTruncateEntries uint64
	// MaxProposalBytes bounds one proposal. Default 8 MiB.
	MaxProposalBytes int
	// ClientIdleExpiry is how long a client's exactly-once record in a
	// vShard outlives the client's last write there (a write retried later
	// than that applies again). Default 1 hour; negative keeps records
	// forever.
	ClientIdleExpiry time.Duration
	// Now is the clock of proposal timestamps and expiry sweeps. Default
	// time.Now.
	Now func() time.Time
	// MaxSnapshotFrameBytes bounds one frame of an incoming snapshot stream.
	// Default 64 MiB.
	MaxSnapshotFrameBytes int
	// SnapshotChunkBytes is the chunk size of outgoing snapshots. Default 1 MiB.
	SnapshotChunkBytes int
	// CacheBytes and MemTableBytes size Pebble. Defaults 64 MiB and 32 MiB.
	CacheBytes    int64
	MemTableBytes uint64
	// Logger receives logs. Default slog.Default().
	Logger *slog.Logger
	// Registerer receives metrics. Default none.
	Registerer prometheus.Registerer
}

// Node is one running node.
type Node struct {
	cfg  Config
	eng  *storage.Engine
	host *raftstore.Host
	tr   transport.Transport
}

// nodeIDKey is the node-local record naming the node a data dir belongs to.
var nodeIDKey = storage.NodeKey("node-id")

// Start opens the data dir and starts the node. Replicas stored in the dir
// resume where they stopped.
func Start(cfg Config) (*Node, error) {
	switch {
	case cfg.NodeID == 0:
		return nil, errors.New("cluster: NodeID is required")
	case cfg.Dir == "":
		return nil, errors.New("cluster: Dir is required")
	case cfg.StateMachine == nil:
		return nil, errors.New("cluster: StateMachine is required")
	case cfg.Connect == nil:
		return nil, errors.New("cluster: Connect is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	eng, err := storage.Open(storage.Options{
		Dir:          filepath.Join(cfg.Dir, "store"),
		CacheSize:    cfg.CacheBytes,
		MemTableSize: cfg.MemTableBytes,
		Logger:       cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, eng: eng}
	if err := n.claimDir(); err != nil {
		_ = eng.Close()
		return nil, err
	}
	host, err := raftstore.New(raftstore.Config{
		NodeID:                cfg.NodeID,
		Engine:                eng,
		StateMachine:          cfg.StateMachine,
		GroupStateMachine:     cfg.GroupStateMachine,
		SnapshotDir:           filepath.Join(cfg.Dir, "snapshots"),
		TickInterval:          cfg.TickInterval,
		ElectionTicks:         cfg.ElectionTicks,
		HeartbeatTicks:        cfg.HeartbeatTicks,
		CommitNoticeDelay:     cfg.CommitNoticeDelay,
		ReadLease:             cfg.ReadLease,
		NoQuiesce:             cfg.NoQuiesce,
		DiskStallStepDown:     cfg.DiskStallStepDown,
		Workers:               cfg.Workers,
		LogMaxEntries:         cfg.LogMaxEntries,
		LogKeepEntries:        cfg.LogKeepEntries,
		LogTruncateEntries:    cfg.LogTruncateEntries,
		MaxProposalBytes:      cfg.MaxProposalBytes,
		ClientIdleExpiry:      cfg.ClientIdleExpiry,
		Now:                   cfg.Now,
		MaxSnapshotFrameBytes: cfg.MaxSnapshotFrameBytes,
		SnapshotChunkBytes:    cfg.SnapshotChunkBytes,
		Logger:                cfg.Logger,
		Registerer:            cfg.Registerer,
	})
	if err != nil {
		_ = eng.Close()
		return nil, err
	}
	tr, err := cfg.Connect(host)
	if err != nil {
		_ = eng.Close()
		return nil, fmt.Errorf("connect %s: %w", cfg.NodeID, err)
	}
	n.host, n.tr = host, tr
	host.Start(tr)
	return n, nil
}

// claimDir records the node's ID in a fresh dir, or checks it in a used one.
func (n *Node) claimDir() error {
	v, ok, err := storage.Get(n.eng.DB(), nodeIDKey)
	if err != nil {
		return err
	}
	if ok {
		if len(v) != 8 {
			return fmt.Errorf("%w: node identity record", storage.ErrCorrupt)
		}
		if got := NodeID(binary.BigEndian.Uint64(v)); got != n.cfg.NodeID {
			return fmt.Errorf("%w: %s is %s, not %s", ErrWrongNode, n.cfg.Dir, got, n.cfg.NodeID)
		}
		return nil
	}
	return n.eng.DB().Set(nodeIDKey, binary.BigEndian.AppendUint64(nil, uint64(n.cfg.NodeID)), pebble.Sync)
}

// Stop stops the node: Raft processing first (waiting reads get
// ErrStopped; waiting proposals ErrOutcomeUnknown, since one that Raft had
// may still commit on the other replicas), then the transport, then
// storage.
func (n *Node) Stop() error {
	n.host.Stop()
	return errors.Join(n.tr.Close(), n.eng.Close())
}

// ID returns the node's ID.
func (n *Node) ID() NodeID { return n.cfg.NodeID }

// Err returns the fatal error that stopped the node, if any.
func (n *Node) Err() error { return n.host.Err() }

// Stats returns the node's Raft counters.
func (n *Node) Stats() *Stats { return n.host.Stats() }

// WALSyncs returns how many times the node's write-ahead log was fsynced.
func (n *Node) WALSyncs() uint64 { return n.eng.WALSyncs() }

// WALBytes returns how many bytes of batches the node has written to its
// write-ahead log (Raft log appends and applied state alike, before the
// log's own framing).
func (n *Node) WALBytes() uint64 { return n.eng.DB().Metrics().WAL.BytesIn }

// Groups lists the groups this node holds a replica of.
func (n *Node) Groups() []GroupID { return n.host.Groups() }

// BootstrapGroup creates this node's replica of a new group. See
// raftstore.Host.BootstrapGroup.
func (n *Node) BootstrapGroup(g GroupID, local ReplicaID, founders []Replica) error {
	return n.host.BootstrapGroup(g, local, founders)
}

// CreateReplica creates an empty replica of an existing group here, to be
// added by ChangeReplicas on the group's leader.
func (n *Node) CreateReplica(g GroupID, local ReplicaID) error { return n.host.CreateReplica(g, local) }

// DestroyReplica deletes this node's replica of g and tombstones its ID.
func (n *Node) DestroyReplica(g GroupID) error { return n.host.DestroyReplica(g) }

// Propose replicates a command through g's leader (this node must lead g).
func (n *Node) Propose(ctx context.Context, g GroupID, p Proposal) ([]byte, error) {
	return n.host.Propose(ctx, g, p)
}

// StartPropose starts a proposal without waiting for its outcome; call
// FinishPropose once its Done is closed. See raftstore.Host.StartPropose.
func (n *Node) StartPropose(g GroupID, p Proposal, notify func()) (*PendingProposal, error) {
	return n.host.StartPropose(g, p, notify)
}

// FinishPropose returns the outcome of a proposal started by StartPropose,
// once done.
func (n *Node) FinishPropose(p *PendingProposal) ([]byte, error) { return n.host.FinishPropose(p) }

// Read answers a query linearizably.
func (n *Node) Read(ctx context.Context, g GroupID, vshard uint32, query []byte) ([]byte, error) {
	return n.host.Read(ctx, g, vshard, query)
}

// StartRead starts a linearizable read of g without waiting for it; call
// FinishRead once its Done is closed. See raftstore.Host.StartRead.
func (n *Node) StartRead(g GroupID, notify func()) (*PendingRead, error) {
	return n.host.StartRead(g, notify)
}

// FinishRead answers a query for a read started by StartRead, once done.
func (n *Node) FinishRead(p *PendingRead, vshard uint32, query []byte) ([]byte, error) {
	return n.host.FinishRead(p, vshard, query)
}

// ReadIndex returns a commit index of g confirmed by a quorum after the
// call began, once this replica has applied it. See raftstore.Host.ReadIndex.
func (n *Node) ReadIndex(ctx context.Context, g GroupID) (uint64, error) {
	return n.host.ReadIndex(ctx, g)
}

// ReadLocal answers a query from this replica's state, which may be stale.
func (n *Node) ReadLocal(g GroupID, vshard uint32, query []byte) ([]byte, error) {
	return n.host.ReadLocal(g, vshard, query)
}

// Status reports this node's replica of g.
func (n *Node) Status(g GroupID) (GroupStatus, error) { return n.host.Status(g) }

// Leader returns the leader this node knows for g.
func (n *Node) Leader(g GroupID) (ReplicaID, NodeID, error) { return n.host.Leader(g) }

// IsLeader reports whether this node leads g.
func (n *Node) IsLeader(g GroupID) bool { return n.host.IsLeader(g) }

// Campaign starts an election for g on this node.
func (n *Node) Campaign(g GroupID) error { return n.host.Campaign(g) }

// TransferLeadership moves g's leadership from this node to replica to.
func (n *Node) TransferLeadership(ctx context.Context, g GroupID, to ReplicaID) error {
	return n.host.TransferLeadership(ctx, g, to)
}

// ChangeReplicas changes g's membership (this node must lead g).
func (n *Node) ChangeReplicas(ctx context.Context, g GroupID, changes []ReplicaChange) error {
	return n.host.ChangeReplicas(ctx, g, changes)
}

// StateHash returns a digest of this replica's replicated state of g (every
// key and value of every vShard, exactly-once records included) together with
// the applied index it corresponds to, read from one consistent view.
// Replicas at the same applied index must have the same hash.
func (n *Node) StateHash(g GroupID) (applied uint64, hash [32]byte, err error) {
	return n.rangeHash(g, storage.GroupStatePrefix(g))
}

// VShardHash is StateHash restricted to one vShard. Keys are hashed relative
// to the vShard, so the same vShard state in two groups hashes the same.
func (n *Node) VShardHash(g GroupID, vshard uint32) (applied uint64, hash [32]byte, err error) {
	return n.rangeHash(g, storage.VShardPrefix(g, vshard))
}

func (n *Node) rangeHash(g GroupID, prefix []byte) (applied uint64, hash [32]byte, err error) {
	err = n.host.UseEngine(func(db *pebble.DB) error {
		snap := db.NewSnapshot()
		defer snap.Close()
		v, ok, err := storage.Get(snap, storage.AppliedKey(g))
		if err != nil {
			return err
		}
		if !ok {
			return ErrGroupNotFound
		}
		st, err := storage.DecodeAppliedState(v)
		if err != nil {
			return err
		}
		h := sha256.New()
		var lb [binary.MaxVarintLen64]byte
		err = storage.ScanRange(snap, prefix, storage.PrefixEnd(prefix), func(k, v []byte) error {
			k = k[len(prefix):]
			h.Write(lb[:binary.PutUvarint(lb[:], uint64(len(k)))])
			h.Write(k)
			h.Write(lb[:binary.PutUvarint(lb[:], uint64(len(v)))])
			h.Write(v)
			return nil
		})
		if err != nil {
			return err
		}
		copy(hash[:], h.Sum(nil))
		applied = st.Index
		return nil
	})
	return applied, hash, err
}

// ExportVShard writes a consistent copy of one vShard's state (data and
// exactly-once records) as held by this node's replica of g, in a
// checksummed stream that ImportVShard reads. It returns the applied index
// of the copy.
func (n *Node) ExportVShard(g GroupID, vshard uint32, w io.Writer) (uint64, error) {
	return n.host.ExportVShard(g, vshard, w)
}

// ImportVShard replaces one vShard's state in g with an exported stream,
// through Raft, so that every replica of g holds it. Call it on g's leader.
// The stream is verified in full before anything is proposed; an import that
// fails half-way leaves a partial vShard, and importing again repairs it.
func (n *Node) ImportVShard(ctx context.Context, g GroupID, vshard uint32, r io.Reader) error {
	return n.host.ImportVShard(ctx, g, vshard, r)
}
