// Package raftstore hosts many Raft groups on one node on top of etcd raft's
// RawNode (with asynchronous storage writes) and the node's single Pebble
// engine.
//
// Workers take ready replicas and handle their Ready: messages leave batched
// per destination node (a leader's appends go out in parallel with its own
// log write), log writes become jobs for the appender, and committed entries
// — handed out by Raft only once durable here — are applied, one Pebble batch
// per worker pass. The appender commits every queued log write of every group
// in one batch with at most one fsync, then releases the responses that
// depended on it (acknowledgements, votes, and Raft's own notice that the
// entries are stable). Nothing is acknowledged to a client before its entry is
// durable on this node and committed by a quorum that made it durable.
package raftstore

import (
	"errors"
	"log/slog"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/storage"
	"github.com/nodedb/nodedb-cluster/internal/transport"
	"github.com/nodedb/nodedb-cluster/statemachine"
)

// Config configures a Host. Zero values select the documented defaults.
type Config struct {
	// NodeID is this node's identity. Required.
	NodeID ids.NodeID
	// Engine is the node's storage engine. Required; the caller closes it
	// after the host has stopped.
	Engine *storage.Engine
	// Transport carries traffic to other nodes. Required; the caller closes
	// it after the host has stopped.
	Transport transport.Transport
	// StateMachine is the replicated service. Required.
	StateMachine statemachine.StateMachine
	// GroupStateMachine, when set, chooses the state machine of each group
	// (nil for the default StateMachine): the metadata group runs its own.
	// It must answer the same for a group every time.
	GroupStateMachine func(ids.GroupID) statemachine.StateMachine
	// SnapshotDir holds snapshots being received. Required.
	SnapshotDir string

	// TickInterval is the Raft logical clock period. Default 100ms.
	TickInterval time.Duration
	// ElectionTicks is the election timeout in ticks. Default 10.
	ElectionTicks int
	// DiskStallStepDown is how long one Raft log write may take before the
	// node hands the groups it leads to other replicas (diskstall.go).
	// Default two election timeouts, at least 2 s (a sync that long is a
	// stall, not a busy disk); negative turns it off.
	DiskStallStepDown time.Duration
	// HeartbeatTicks is the heartbeat interval in ticks. Default 2: with
	// many groups per node, heartbeats are a large share of the CPU an idle
	// or lightly loaded node spends, and five heartbeats per election
	// timeout are plenty for CheckQuorum.
	HeartbeatTicks int
	// Workers is the size of the worker pool. Default GOMAXPROCS.
	Workers int
	// MaxSizePerMsg bounds the entries in one append message. Default 1 MiB.
	MaxSizePerMsg uint64
	// MaxInflightMsgs bounds append messages in flight per follower. Default 256.
	MaxInflightMsgs int
	// MaxUncommittedBytes bounds the uncommitted log of a leader; proposals
	// beyond it are refused. Default 64 MiB.
	MaxUncommittedBytes uint64
	// MaxProposalBytes bounds one proposal's payload. Default 8 MiB.
	MaxProposalBytes int
	// LogMaxEntries is the log length above which applied entries are
	// truncated. Default 10000.
	LogMaxEntries uint64
	// LogKeepEntries is how many applied entries truncation keeps, so a
	// slightly lagging follower catches up from the log instead of a
	// snapshot. Default LogMaxEntries/2.
	LogKeepEntries uint64
	// LogTruncateEntries is the log length above which a leader whose
	// followers are all caught up proposes a truncation to the index every
	// one of them has (see maybeProposeTruncation). Default 512; it only
	// matters below LogMaxEntries.
	LogTruncateEntries uint64
	// SnapshotChunkBytes is the target size of one snapshot stream chunk.
	// Default 1 MiB.
	SnapshotChunkBytes int
	// MaxSnapshotFrameBytes bounds one snapshot frame a receiver accepts.
	// Default 64 MiB.
	MaxSnapshotFrameBytes int
	// ConcurrentSnapshots bounds outgoing snapshot streams. Default 2.
	ConcurrentSnapshots int
	// CommitNoticeDelay is how long a leader holds an empty append (the
	// commit notice Raft broadcasts when the commit index advances) in case
	// a later append or heartbeat to the same follower makes it redundant
	// (deferNotice). Default 50ms; negative sends them at once.
	CommitNoticeDelay time.Duration
	// ReadLease lets a leader serve linearizable reads from a lease instead
	// of confirming its leadership with a quorum round for each batch of
	// reads (see leaseReads). The lease rests on one assumption the default
	// does not need: that clocks on different nodes run at rates within 10%
	// of each other (time is measured, never compared across nodes). Off by
	// default.
	ReadLease bool
	// NoQuiesce keeps every group's Raft clock running when the group is
	// idle (see quiesce.go). By default an idle group stops heartbeating.
	// Quiescence is off with ReadLease.
	NoQuiesce bool
	// ReadCacheBytes is the node's budget for its replicas' caches of values
	// read by clients (storage.ReadCache), which spare a read of a recently
	// read key its Pebble search. Each replica gets an even share of it
	// over the replicas the node holds (at least 64 KiB), recomputed
	// whenever a replica is created or destroyed. Default 32 MiB; negative
	// turns the caches off.
	ReadCacheBytes int
	// ClientIdleExpiry is how long a client's exactly-once record in a
	// vShard outlives the client's last write there: leaders sweep their
	// groups' records (expiry.go) so that those of clients that went away
	// do not accumulate forever. A write retried longer than this after it
	// was applied is no longer recognised and applies again, so clients must
	// stop retrying well before (the Go client gives up after
	// client.MaxRetryAge, 10 minutes). Default 1 hour; negative keeps the
	// records forever.
	ClientIdleExpiry time.Duration
	// Now is the clock of proposal timestamps and of the expiry sweeps.
	// Default time.Now.
	Now func() time.Time
	// Logger receives the host's logs. Default slog.Default().
	Logger *slog.Logger
	// Registerer receives the host's metrics. Default: not registered.
	Registerer prometheus.Registerer
}

func (c *Config) validate() error {
	switch {
	case c.NodeID == 0:
		return errors.New("raftstore: config: NodeID is required")
	case c.Engine == nil:
		return errors.New("raftstore: config: Engine is required")
	case c.Transport == nil:
		return errors.New("raftstore: config: Transport is required")
	case c.StateMachine == nil:
		return errors.New("raftstore: config: StateMachine is required")
	case c.SnapshotDir == "":
		return errors.New("raftstore: config: SnapshotDir is required")
	}
	return nil
}

// minDiskStallStepDown is the least default DiskStallStepDown: with short
// ticks (tests), two election timeouts are shorter than a loaded disk's
// slowest syncs.
const minDiskStallStepDown = 2 * time.Second

func (c *Config) setDefaults() {
	if c.TickInterval <= 0 {
		c.TickInterval = 100 * time.Millisecond
	}
	if c.ElectionTicks <= 0 {
		c.ElectionTicks = 10
	}
	if c.CommitNoticeDelay == 0 {
		c.CommitNoticeDelay = 50 * time.Millisecond
	}
	if c.HeartbeatTicks <= 0 {
		c.HeartbeatTicks = 2
	}
	if c.DiskStallStepDown == 0 {
		c.DiskStallStepDown = max(2*time.Duration(c.ElectionTicks)*c.TickInterval, minDiskStallStepDown)
	}
	if c.Workers <= 0 {
		c.Workers = runtime.GOMAXPROCS(0)
	}
	if c.MaxSizePerMsg == 0 {
		c.MaxSizePerMsg = 1 << 20
	}
	if c.MaxInflightMsgs <= 0 {
		c.MaxInflightMsgs = 256
	}
	if c.MaxUncommittedBytes == 0 {
		c.MaxUncommittedBytes = 64 << 20
	}
	if c.MaxProposalBytes <= 0 {
		c.MaxProposalBytes = 8 << 20
	}
	if c.LogMaxEntries == 0 {
		c.LogMaxEntries = 10000
	}
	if c.LogTruncateEntries == 0 {
		c.LogTruncateEntries = 512
	}
	if c.LogKeepEntries == 0 || c.LogKeepEntries >= c.LogMaxEntries {
		c.LogKeepEntries = c.LogMaxEntries / 2
	}
	if c.SnapshotChunkBytes <= 0 {
		c.SnapshotChunkBytes = 1 << 20
	}
	if c.MaxSnapshotFrameBytes <= 0 {
		c.MaxSnapshotFrameBytes = 64 << 20
	}
	if c.ConcurrentSnapshots <= 0 {
		c.ConcurrentSnapshots = 2
	}
	if c.ReadCacheBytes == 0 {
		c.ReadCacheBytes = 32 << 20
	}
	if c.ClientIdleExpiry == 0 {
		c.ClientIdleExpiry = time.Hour
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}
