package freeport

import (
	"net"
	"strconv"
	"testing"
)

// TestPortsAreBindableAndOutsideTheEphemeralRange: every address can be
// bound, none repeats, and none is one the kernel would hand to a socket
// bound to port 0.
func TestPortsAreBindableAndOutsideTheEphemeralRange(t *testing.T) {
	low := ephemeralLow()
	seen := map[string]bool{}
	for _, network := range []string{"udp", "tcp"} {
		for range 50 {
			addr, err := pick(network)
			if err != nil {
				t.Fatal(err)
			}
			if seen[network+addr] {
				t.Fatalf("%s %s handed out twice", network, addr)
			}
			seen[network+addr] = true
			_, p, err := net.SplitHostPort(addr)
			if err != nil {
				t.Fatal(err)
			}
			port, _ := strconv.Atoi(p)
			if low-lowest >= minSpan && (port < lowest || port >= low) {
				t.Fatalf("%s port %d is outside [%d, %d)", network, port, lowest, low)
			}
			if _, err := bind(network, addr); err != nil {
				t.Fatalf("%s %s cannot be bound: %v", network, addr, err)
			}
		}
	}
}

// TestBusyPortIsSkipped: a port someone holds is never handed out, and a
// range with no free port falls back to the kernel's choice.
func TestBusyPortIsSkipped(t *testing.T) {
	addr, err := TCP()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, p, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(p)
	// A range of one port, the held one: never handed out (it was issued
	// already, and it is bound); the answer is a kernel port instead.
	mu.Lock()
	delete(issued, "tcp:"+p)
	mu.Unlock()
	for range 5 {
		got, err := pickIn("tcp", port, port+1, 1)
		if err != nil {
			t.Fatal(err)
		}
		if got == addr {
			t.Fatalf("%s was handed out while bound", addr)
		}
	}
}
