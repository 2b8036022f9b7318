package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"
)

// diskSyncs measures the disk the servers are about to use: n appends of
// 4 KiB to a new file in dir, each followed by fdatasync, on a machine
// where nothing else runs yet. A WAL sync is most of a single put's latency
// in both systems, and on shared virtual disks it moves by a factor of
// several between machines and even minutes, so every report states it.
func diskSyncs(dir string, n int) (p50, mean time.Duration, err error) {
	if n < 1 {
		return 0, 0, fmt.Errorf("disk probe: %d syncs", n)
	}
	f, err := os.CreateTemp(dir, "disk-probe-")
	if err != nil {
		return 0, 0, fmt.Errorf("disk probe: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 4096)
	lat := make([]time.Duration, 0, n)
	var sum time.Duration
	for range n {
		start := time.Now()
		if _, err := f.Write(buf); err != nil {
			return 0, 0, fmt.Errorf("disk probe: write %s: %w", filepath.Base(f.Name()), err)
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			return 0, 0, fmt.Errorf("disk probe: fdatasync %s: %w", filepath.Base(f.Name()), err)
		}
		d := time.Since(start)
		lat = append(lat, d)
		sum += d
	}
	slices.Sort(lat)
	return lat[len(lat)/2], sum / time.Duration(n), nil
}

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
