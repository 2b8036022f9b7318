package raftstore

import (
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nodedb/nodedb-cluster/internal/storage"
)

// Stats are the host's counters. Tests read them directly; the same values
// are exported as Prometheus metrics when a Registerer is configured.
type Stats struct {
	Cycles                 atomic.Uint64 // worker passes (each processes a handful of ready replicas)
	AppendBatches          atomic.Uint64 // batches of log writes the appender committed
	SyncedCommits          atomic.Uint64 // log write batches committed with fsync
	UnsyncedCommits        atomic.Uint64 // persist batches that needed no fsync
	ReadiesProcessed       atomic.Uint64 // Ready structs handled
	ProposalsOK            atomic.Uint64
	ProposalsFailed        atomic.Uint64
	MessagesSent           atomic.Uint64
	MessagesReceived       atomic.Uint64
	MessagesDropped        atomic.Uint64 // for unknown groups, stale replica IDs, unroutable peers
	CommitNoticesCoalesced atomic.Uint64 // empty appends covered by a later append in the same Ready
	AcksCoalesced          atomic.Uint64 // acknowledgements covered by a higher one in the same append batch
	HeartbeatsSkipped      atomic.Uint64 // heartbeats not sent: an append reached the follower within the interval
	Quiesces               atomic.Uint64 // replicas that stopped their clock (quiesce.go)
	Wakes                  atomic.Uint64 // quiesced replicas woken
	SnapshotsSent          atomic.Uint64
	SnapshotsFailed        atomic.Uint64
	SnapshotsReceived      atomic.Uint64
	SnapshotsRejected      atomic.Uint64
	SnapshotsApplied       atomic.Uint64
	LogTruncations         atomic.Uint64
	TruncationsProposed    atomic.Uint64
	ReadIndexBatches       atomic.Uint64
	LeaseReads             atomic.Uint64 // reads served from a leader's lease, no quorum round
	ReadCacheHits          atomic.Uint64 // client point reads answered by a replica's read cache
	ReadCacheMisses        atomic.Uint64 // client point reads that went to Pebble
	MalformedEntries       atomic.Uint64
	ClientExpiriesProposed atomic.Uint64 // client expiry entries proposed by leaders
	ClientRecordsExpired   atomic.Uint64 // exactly-once client records dropped as idle
	StallTransfers         atomic.Uint64 // leaderships handed over because this node's disk stalled
}

// latencies are the host's histograms: where a write's time goes, the
// figures an operator compares with etcd's disk and proposal histograms.
type latencies struct {
	// append: from a replica's log write being queued for the appender to
	// its being durable (waiting for the sync in progress, then its own).
	append prometheus.Histogram
	// proposal: from Propose to the command applied here and answered
	// (successes only; a refusal is immediate and says nothing of the path).
	proposal prometheus.Histogram
}

func newLatencies() latencies {
	return latencies{
		append: storage.NewLatencyHistogram("raft", "append_duration_seconds",
			"Time from a replica's Raft log write being queued to its being durable: the wait for the sync in progress plus its own batch's write and sync."),
		proposal: storage.NewLatencyHistogram("raft", "proposal_duration_seconds",
			"Time from a command's proposal on its group's leader to its being applied there and answered."),
	}
}

func (h *Host) registerMetrics(reg prometheus.Registerer) {
	if reg == nil {
		return
	}
	counter := func(name, help string, v *atomic.Uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "nodedb", Subsystem: "raft", Name: name, Help: help,
		}, func() float64 { return float64(v.Load()) })
	}
	s := &h.stats
	cs := []prometheus.Collector{
		counter("worker_passes_total", "Worker passes, each processing a handful of ready replicas.", &s.Cycles),
		counter("append_batches_total", "Batches of Raft log writes committed, each covering every group with writes queued.", &s.AppendBatches),
		counter("synced_commits_total", "Raft log write batches committed with one fsync (group commit).", &s.SyncedCommits),
		counter("unsynced_commits_total", "Persist batches that needed no fsync.", &s.UnsyncedCommits),
		counter("readies_total", "Raft Ready structs processed.", &s.ReadiesProcessed),
		counter("proposals_ok_total", "Proposals applied and answered.", &s.ProposalsOK),
		counter("proposals_failed_total", "Proposals answered with an error.", &s.ProposalsFailed),
		counter("messages_sent_total", "Raft messages handed to the transport.", &s.MessagesSent),
		counter("messages_received_total", "Raft messages received.", &s.MessagesReceived),
		counter("commit_notices_coalesced_total", "Empty appends (commit notices) not sent because a later append or heartbeat to the same peer carried the same commit index.", &s.CommitNoticesCoalesced),
		counter("quiesces_total", "Replicas that stopped their Raft clock because their group was idle (quiescence).", &s.Quiesces),
		counter("wakes_total", "Quiesced replicas whose Raft clock restarted.", &s.Wakes),
		counter("heartbeats_skipped_total", "Heartbeats not sent because the leader had sent the follower an append within the heartbeat interval.", &s.HeartbeatsSkipped),
		counter("acks_coalesced_total", "Append acknowledgements not sent because a higher one from the same replica to the same leader term left in the same batch.", &s.AcksCoalesced),
		counter("messages_dropped_total", "Raft messages dropped (unknown group, stale replica, unroutable).", &s.MessagesDropped),
		counter("snapshots_sent_total", "Snapshots streamed to followers.", &s.SnapshotsSent),
		counter("snapshots_failed_total", "Outgoing snapshot streams that failed.", &s.SnapshotsFailed),
		counter("snapshots_received_total", "Snapshots received and verified.", &s.SnapshotsReceived),
		counter("snapshots_rejected_total", "Incoming snapshot streams refused or corrupt.", &s.SnapshotsRejected),
		counter("snapshots_applied_total", "Snapshots installed.", &s.SnapshotsApplied),
		counter("log_truncations_total", "Raft log truncations.", &s.LogTruncations),
		counter("log_truncations_proposed_total", "Log truncation entries proposed by leaders whose followers were all caught up.", &s.TruncationsProposed),
		counter("read_index_batches_total", "ReadIndex requests issued (each covers a batch of reads).", &s.ReadIndexBatches),
		counter("stall_transfers_total", "Leaderships this node handed over because one of its Raft log writes took longer than the disk stall limit.", &s.StallTransfers),
		counter("lease_reads_total", "Linearizable reads served from the leader's lease without a quorum round (--read-lease).", &s.LeaseReads),
		counter("read_cache_hits_total", "Client point reads answered from a replica's read cache.", &s.ReadCacheHits),
		counter("read_cache_misses_total", "Client point reads that searched Pebble (and filled the read cache when no write raced them).", &s.ReadCacheMisses),
		counter("client_expiries_proposed_total", "Entries proposed by leaders to sweep their groups' exactly-once records of idle clients.", &s.ClientExpiriesProposed),
		counter("client_records_expired_total", "Exactly-once client records dropped because the client had not written for ClientIdleExpiry.", &s.ClientRecordsExpired),
		counter("malformed_entries_total", "Committed entries skipped because they failed to decode.", &s.MalformedEntries),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "nodedb", Subsystem: "storage", Name: "wal_syncs_total",
			Help: "fsyncs of the write-ahead log.",
		}, func() float64 { return float64(h.cfg.Engine.WALSyncs()) }),
		h.cfg.Engine.WALSyncDurations(),
		h.latencies.append,
		h.latencies.proposal,
		engineCollector{h},
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			h.log.Warn("metric not registered", "err", err)
		}
	}
}

// engineCollector exports the Pebble figures an operator needs to size the
// store: block cache effectiveness and memtable memory. It reads Pebble's
// metrics once per scrape.
type engineCollector struct{ h *Host }

var (
	descCacheHits = prometheus.NewDesc("nodedb_storage_block_cache_hits_total",
		"Block cache hits (data, index and filter blocks found in memory).", nil, nil)
	descCacheMisses = prometheus.NewDesc("nodedb_storage_block_cache_misses_total",
		"Block cache misses (blocks read from the file system).", nil, nil)
	descCacheBytes = prometheus.NewDesc("nodedb_storage_block_cache_bytes",
		"Bytes of blocks held in the block cache.", nil, nil)
	descMemTableBytes = prometheus.NewDesc("nodedb_storage_memtable_bytes",
		"Bytes reserved by memtables, those kept for recycling included.", nil, nil)
)

func (c engineCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descCacheHits
	ch <- descCacheMisses
	ch <- descCacheBytes
	ch <- descMemTableBytes
}

func (c engineCollector) Collect(ch chan<- prometheus.Metric) {
	var m *pebble.Metrics
	// Through UseEngine, so that a scrape never reads a closing engine.
	if c.h.UseEngine(func(db *pebble.DB) error { m = db.Metrics(); return nil }) != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(descCacheHits, prometheus.CounterValue, float64(m.BlockCache.Hits))
	ch <- prometheus.MustNewConstMetric(descCacheMisses, prometheus.CounterValue, float64(m.BlockCache.Misses))
	ch <- prometheus.MustNewConstMetric(descCacheBytes, prometheus.GaugeValue, float64(m.BlockCache.Size))
	ch <- prometheus.MustNewConstMetric(descMemTableBytes, prometheus.GaugeValue, float64(m.MemTable.Size+m.MemTable.ZombieSize))
}
