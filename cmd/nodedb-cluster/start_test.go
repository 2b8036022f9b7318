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
