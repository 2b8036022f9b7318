package main

import (
	"testing"
	"time"
)

// --client-idle-expiry 0 keeps records forever; the flag's default is an
// hour; any other value is passed on.
func TestClientIdleExpiryFlag(t *testing.T) {
	cmd := newStartCommand()
	f := cmd.Flags().Lookup("client-idle-expiry")
	if f == nil || f.DefValue != time.Hour.String() {
		t.Fatalf("flag %+v, want a default of 1h", f)
	}
	for flag, want := range map[time.Duration]time.Duration{0: -1, -time.Second: -1, time.Minute: time.Minute, time.Hour: time.Hour} {
		if got := clientIdleExpiry(flag); got != want {
			t.Errorf("--client-idle-expiry %v: %v, want %v", flag, got, want)
		}
	}
}

// --cache-mib and --memtable-mib are MiB, bounded before anything opens.
func TestStorageSizeFlags(t *testing.T) {
	cache, mem, err := storageSizes(64, 32)
	if err != nil || cache != 64<<20 || mem != 32<<20 {
		t.Fatalf("defaults: %d, %d, %v", cache, mem, err)
	}
	for _, bad := range [][2]int{{0, 32}, {-1, 32}, {64, 0}, {64, 1025}, {1<<20 + 1, 32}} {
		if _, _, err := storageSizes(bad[0], bad[1]); err == nil {
			t.Errorf("--cache-mib %d --memtable-mib %d accepted", bad[0], bad[1])
		}
	}
	cmd := newStartCommand()
	for name, def := range map[string]string{"cache-mib": "64", "memtable-mib": "32"} {
		if f := cmd.Flags().Lookup(name); f == nil || f.DefValue != def {
			t.Errorf("--%s: %+v, want default %s", name, f, def)
		}
	}
}
