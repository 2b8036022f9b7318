package raftstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/nodedb/nodedb-cluster/internal/kv"
	"github.com/nodedb/nodedb-cluster/internal/storage"
)

// failingSyncFS makes WAL syncs fail once armed, like a disk that stops
// accepting writes.
type failingSyncFS struct {
	vfs.FS
	armed atomic.Bool
}

func (fs *failingSyncFS) wrap(name string, f vfs.File, err error) (vfs.File, error) {
	if err != nil || !strings.HasSuffix(name, ".log") {
		return f, err
	}
	return &failingSyncFile{File: f, fs: fs}, nil
}

func (fs *failingSyncFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, c)
	return fs.wrap(name, f, err)
}

func (fs *failingSyncFS) ReuseForWrite(o, n string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(o, n, c)
	return fs.wrap(n, f, err)
}

type failingSyncFile struct {
	vfs.File
	fs *failingSyncFS
}

var errDiskGone = errors.New("injected: disk gone")

func (f *failingSyncFile) Sync() error {
	if f.fs.armed.Load() {
		return errDiskGone
	}
	return f.File.Sync()
}

func (f *failingSyncFile) SyncData() error {
	if f.fs.armed.Load() {
		return errDiskGone
	}
	return f.File.SyncData()
}

// TestFsyncFailureAcknowledgesNothing: once the disk refuses to sync the
// log, no write is acknowledged. Pebble treats a failed WAL sync as fatal
// (after fsync fails, the page cache cannot be trusted), and so does the
// node: the process exits with status 70. The scenario runs in a child
// process, which reports how far it got.
func TestFsyncFailureAcknowledgesNothing(t *testing.T) {
	if os.Getenv("NODEDB_FSYNC_CHILD") == "1" {
		fsyncFailureChild(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestFsyncFailureAcknowledgesNothing$", "-test.v")
	cmd.Env = append(os.Environ(), "NODEDB_FSYNC_CHILD=1", "NODEDB_FSYNC_DIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 70 {
		t.Fatalf("child: %v, want exit status 70\n%s", err, out)
	}
	if !strings.Contains(string(out), "ARMED") {
		t.Fatalf("child died before the disk failed:\n%s", out)
	}
	if strings.Contains(string(out), "ACKED") {
		t.Fatalf("a write was acknowledged although its fsync failed:\n%s", out)
	}
}

func fsyncFailureChild(t *testing.T) {
	dir := os.Getenv("NODEDB_FSYNC_DIR")
	fs := &failingSyncFS{FS: vfs.Default}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	eng, err := storage.Open(storage.Options{Dir: filepath.Join(dir, "store"), FS: fs, Logger: quiet, CacheSize: 1 << 20, MemTableSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	h, err := New(Config{NodeID: 1, Engine: eng, StateMachine: &kv.StateMachine{}, SnapshotDir: filepath.Join(dir, "snap"),
		Logger: quiet, TickInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	h.Start(nopTransport{})
	if err := h.BootstrapGroup(1, 1, []storage.ReplicaDesc{{Replica: 1, Node: 1}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for !h.IsLeader(1) {
		if ctx.Err() != nil {
			t.Fatal("single-replica group never elected itself")
		}
		time.Sleep(10 * time.Millisecond)
	}
	put := func(v string) error {
		cmd, _ := kv.EncodePut([]byte("k"), []byte(v), nil, kv.DefaultLimits())
		_, err := h.Propose(ctx, 1, Proposal{Payload: cmd})
		return err
	}
	if err := put("durable"); err != nil {
		t.Fatal(err)
	}
	fmt.Println("ARMED")
	fs.armed.Store(true)
	if err := put("never acknowledged"); err == nil {
		fmt.Println("ACKED")
	}
	// Reaching this point without the process exiting is itself a failure:
	// the host must not go on after its log could not be synced.
	t.Fatal("the process survived a failed log sync")
}
