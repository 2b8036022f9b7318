// Package storage owns the node's single Pebble engine: the keyspace layout,
// the durable Raft log of every group (an implementation of etcd raft's
// Storage), the applied state of every group and the vShard state that state
// machines read and write.
//
// One engine per node is a deliberate choice: appends from many groups that
// are queued together go into one batch with one fsync,
// and a group's applied index is written in the same batch as the state it
// covers. Both would be impossible with one engine (or one WAL) per group.
package storage

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Options configures the engine. Zero values select defaults sized for a
// small machine; the defaults are documented on each field.
type Options struct {
	// Dir is the directory of the Pebble store. Created if missing.
	Dir string
	// CacheSize is the block cache's room for data, index and filter blocks
	// in bytes. Default 64 MiB. The memtables' memory (up to three times
	// MemTableSize) comes on top of it.
	CacheSize int64
	// MemTableSize is the size of one memtable in bytes. Default 32 MiB.
	MemTableSize uint64
	// Logger receives Pebble's log lines. Default slog.Default().
	Logger *slog.Logger
	// FS overrides the filesystem (tests). Default the OS filesystem.
	FS vfs.FS
}

// memTableStopWrites is Pebble's MemTableStopWritesThreshold: writes stall
// while this many memtables (the mutable one included) wait to be flushed.
const memTableStopWrites = 2

// Engine is one node's Pebble store.
type Engine struct {
	db    *pebble.DB
	opts  *pebble.Options
	cache interface{ Unref() }
	fs    *syncCountingFS
}

// Open opens or creates the engine in opts.Dir.
func Open(opts Options) (*Engine, error) {
	if opts.Dir == "" {
		return nil, errors.New("storage: no directory given")
	}
	if opts.CacheSize <= 0 {
		opts.CacheSize = 64 << 20
	}
	if opts.MemTableSize == 0 {
		opts.MemTableSize = 32 << 20
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.FS == nil {
		opts.FS = vfs.Default
	}
	if err := opts.FS.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create store dir %s: %w", opts.Dir, err)
	}
	fs := &syncCountingFS{FS: opts.FS, syncSeconds: NewLatencyHistogram("storage", "wal_sync_duration_seconds",
		"Time of each fsync of the write-ahead log: what every durable write waits for at least once.")}
	po := &pebble.Options{
		FS:                          fs,
		MemTableSize:                opts.MemTableSize,
		MemTableStopWritesThreshold: memTableStopWrites,
		Logger:                      pebbleLogger{opts.Logger.With("component", "pebble")},
		FormatMajorVersion:          pebble.FormatNewest,
	}
	// Pebble charges memtables against the block cache: the mutable one,
	// those waiting to be flushed (at most MemTableStopWritesThreshold in
	// all) and one flushed memtable it keeps to recycle. A cache of only
	// CacheSize would hold no data block at all once the memtables are full
	// (64 MiB of cache against two 32 MiB memtables did exactly that), and
	// every point read below the memtables would go to the file system. So the
	// cache is sized for those reservations plus CacheSize of blocks; the
	// memtables' memory is used whatever the cache's size.
	reserve := int64(memTableStopWrites+1) * int64(opts.MemTableSize)
	cache := pebble.NewCache(opts.CacheSize + reserve)
	po.Cache = cache
	// Most point reads on the write path look for keys that do not exist
	// (new keys, new exactly-once records): bloom filters answer those
	// without reading data blocks. Lower levels inherit the policy.
	po.Levels[0].FilterPolicy = bloom.FilterPolicy(10)
	// Defaults filled in here too, so that tables the engine writes itself
	// (snapshot ingestion) use the store's settings.
	po.EnsureDefaults()
	db, err := pebble.Open(opts.Dir, po)
	if err != nil {
		cache.Unref()
		return nil, fmt.Errorf("open pebble at %s: %w", opts.Dir, err)
	}
	return &Engine{db: db, opts: po, cache: cache, fs: fs}, nil
}

// DB returns the underlying Pebble database.
func (e *Engine) DB() *pebble.DB { return e.db }

// WALSyncs returns how many times the write-ahead log has been synced to disk
// since the engine was opened. Tests use it to prove group commit: at most one
// WAL sync per batch of log writes, whatever the number of groups.
func (e *Engine) WALSyncs() uint64 { return e.fs.walSyncs.Load() }

// WALSyncDurations is the histogram of the write-ahead log's fsyncs (one
// sample per sync counted by WALSyncs). The engine does not register it;
// the node's metrics do.
func (e *Engine) WALSyncDurations() prometheus.Histogram { return e.fs.syncSeconds }

// NewLatencyHistogram returns an unregistered histogram named
// nodedb_<subsystem>_<name> with buckets for durations from 50 µs (a sync
// of a fast local disk) to about 6.5 s (a stalled one), each twice the last.
func NewLatencyHistogram(subsystem, name, help string) prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "nodedb", Subsystem: subsystem, Name: name, Help: help,
		Buckets: prometheus.ExponentialBuckets(50e-6, 2, 18),
	})
}

// Close closes the engine. It is an error to use the engine afterwards.
func (e *Engine) Close() error {
	err := e.db.Close()
	e.cache.Unref()
	if err != nil {
		return fmt.Errorf("close pebble: %w", err)
	}
	return nil
}

// pebbleLogger adapts slog to Pebble's logger. Pebble calls Fatalf on
// unrecoverable corruption; we log and exit, as a crash would.
type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Debug(fmt.Sprintf(format, args...))
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...))
}

func (p pebbleLogger) Fatalf(format string, args ...any) {
	p.l.Error("fatal storage error", "err", fmt.Sprintf(format, args...))
	os.Exit(70)
}

// syncCountingFS counts and times syncs of write-ahead log files (Pebble
// names them *.log). It wraps the real filesystem and changes nothing else.
type syncCountingFS struct {
	vfs.FS
	walSyncs    atomic.Uint64
	syncSeconds prometheus.Histogram
}

func (fs *syncCountingFS) wrap(name string, f vfs.File, err error) (vfs.File, error) {
	if err != nil || !strings.HasSuffix(name, ".log") {
		return f, err
	}
	return &syncCountingFile{File: f, fs: fs}, nil
}

func (fs *syncCountingFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, c)
	return fs.wrap(name, f, err)
}

func (fs *syncCountingFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname, c)
	return fs.wrap(newname, f, err)
}

func (fs *syncCountingFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := fs.FS.OpenReadWrite(name, c, opts...)
	return fs.wrap(name, f, err)
}

type syncCountingFile struct {
	vfs.File
	fs *syncCountingFS
}

// counted records one sync that started at start.
func (f *syncCountingFile) counted(start time.Time) {
	f.fs.walSyncs.Add(1)
	f.fs.syncSeconds.Observe(time.Since(start).Seconds())
}

func (f *syncCountingFile) Sync() error {
	defer f.counted(time.Now())
	return f.File.Sync()
}

func (f *syncCountingFile) SyncData() error {
	defer f.counted(time.Now())
	return f.File.SyncData()
}

func (f *syncCountingFile) SyncTo(length int64) (bool, error) {
	start := time.Now()
	full, err := f.File.SyncTo(length)
	if full {
		f.counted(start)
	}
	return full, err
}

// HistogramCount returns how many samples h has taken (for tests and tools
// that read a histogram without a registry).
func HistogramCount(h prometheus.Histogram) uint64 {
	var m dto.Metric
	if err := h.Write(&m); err != nil {
		return 0
	}
	return m.GetHistogram().GetSampleCount()
}
