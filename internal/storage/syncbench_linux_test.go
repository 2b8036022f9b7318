package storage

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkFdatasync measures what one WAL-style sync (a small append, then
// fdatasync) costs the file system this package's engines run on, by the
// state of the blocks being written:
//
//   - grow: appending past the end of the file, as a new Pebble WAL does
//     until Pebble starts recycling obsolete WAL files; every sync must also
//     make the new file size durable (on ext4, a journal commit);
//   - fallocated: into space reserved with fallocate(2) that moved the file
//     size, as etcd prepares its WAL segments; the blocks are "unwritten",
//     so the first write to each still changes metadata;
//   - written: over blocks already written and synced, as a recycled Pebble
//     WAL does; only the data and a cache flush need to reach the disk.
//
// writers=3 runs three such files at once, as the three nodes of a local
// cluster do on one disk. Besides ns/op (wall time per sync) it reports
// p50-µs and p99-µs, and cpu-µs/op: the process's user+system CPU per sync,
// which is CPU the nodes do not have for anything else on a small machine.
// The files go to a test temp dir, or under NODEDB_BENCH_DIR.
//
//	go test ./internal/storage -run XXX -bench Fdatasync -benchtime 2000x
func BenchmarkFdatasync(b *testing.B) {
	for _, state := range []string{"grow", "fallocated", "written"} {
		for _, writers := range []int{1, 3} {
			for _, size := range []int{4 << 10, 64 << 10} {
				name := fmt.Sprintf("file=%s/writers=%d/bytes=%d", state, writers, size)
				b.Run(name, func(b *testing.B) { benchFdatasync(b, state, writers, size) })
			}
		}
	}
}

func benchFdatasync(b *testing.B, state string, writers, size int) {
	dir := b.TempDir()
	if d := os.Getenv("NODEDB_BENCH_DIR"); d != "" {
		var err error
		if dir, err = os.MkdirTemp(d, "fdatasync"); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(dir) })
	}
	perWriter := (b.N + writers - 1) / writers
	span := int64(perWriter)*int64(size) + 1<<20
	files := make([]*os.File, writers)
	for i := range files {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("wal-%d", i)))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := prepareSyncFile(f, state, span); err != nil {
			b.Fatalf("prepare %s file: %v", state, err)
		}
		files[i] = f
	}
	buf := make([]byte, size)
	for i := range buf {
		buf[i] = byte(i)
	}
	lat := make([][]time.Duration, writers)
	errs := make([]error, writers)
	cpu0 := processCPU(b)
	b.ResetTimer()
	var wg sync.WaitGroup
	for w, f := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := make([]time.Duration, 0, perWriter)
			for range perWriter {
				start := time.Now()
				if _, err := f.Write(buf); err != nil {
					errs[w] = err
					return
				}
				if err := unix.Fdatasync(int(f.Fd())); err != nil {
					errs[w] = err
					return
				}
				l = append(l, time.Since(start))
			}
			lat[w] = l
		}()
	}
	wg.Wait()
	b.StopTimer()
	cpu := processCPU(b) - cpu0
	var all []time.Duration
	for w := range files {
		if errs[w] != nil {
			b.Fatal(errs[w])
		}
		all = append(all, lat[w]...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	var sum time.Duration
	for _, d := range all {
		sum += d
	}
	n := float64(len(all))
	// ns/op is wall time per sync as a writer sees it, not the run's wall
	// time over b.N, so that writers=1 and writers=3 compare directly.
	b.ReportMetric(float64(sum.Nanoseconds())/n, "ns/op")
	b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(cpu.Microseconds())/n, "cpu-µs/op")
}

// prepareSyncFile leaves f empty and positioned at 0 (grow), with span
// bytes reserved and the size moved (fallocated), or with span bytes of
// zeros written and synced (written).
func prepareSyncFile(f *os.File, state string, span int64) error {
	switch state {
	case "grow":
		return nil
	case "fallocated":
		if err := unix.Fallocate(int(f.Fd()), 0, 0, span); err != nil {
			return err
		}
	case "written":
		zeros := make([]byte, 1<<20)
		for off := int64(0); off < span; off += int64(len(zeros)) {
			if _, err := f.Write(zeros); err != nil {
				return err
			}
		}
		if _, err := f.Seek(0, 0); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown file state %q", state)
	}
	return unix.Fdatasync(int(f.Fd()))
}

func processCPU(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
