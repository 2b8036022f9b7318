package main

import (
	"os"
	"testing"
)

// TestDiskSyncs: the probe measures, and leaves nothing behind.
func TestDiskSyncs(t *testing.T) {
	dir := t.TempDir()
	p50, mean, err := diskSyncs(dir, 20)
	if err != nil {
		t.Fatal(err)
	}
	if p50 <= 0 || mean <= 0 {
		t.Fatalf("p50 %v mean %v", p50, mean)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("left %d files", len(ents))
	}
	if _, _, err := diskSyncs(dir, 0); err == nil {
		t.Fatal("no syncs: no error")
	}
}
