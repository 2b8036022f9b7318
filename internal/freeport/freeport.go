// Package freeport picks free ports on 127.0.0.1 for servers that are told
// their address before they bind it: test clusters, whose nodes keep their
// port across restarts as real nodes do, and a dev cluster on free ports.
//
// The usual trick, binding port 0 and releasing what the kernel gave, yields
// an ephemeral port, and the kernel hands ephemeral ports to every socket
// bound to port 0 in the meantime. Every QUIC dial binds one, so with test
// packages running side by side a reserved port was sometimes taken before
// its node bound it ("bind: address already in use"). Ports here are drawn
// at random from below the kernel's ephemeral range instead, where only an
// explicit bind takes them; each is checked by binding it once, and a
// process never hands out the same port twice.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// lowest is the lowest port handed out: below it live well-known and
// commonly configured service ports.
const lowest = 10000

// minSpan is the smallest range worth drawing from; with less room below the
// ephemeral range, ports come from the kernel (port 0) as before.
const minSpan = 1000

// attempts bounds the draws for one port before falling back to port 0.
const attempts = 64

var (
	mu     sync.Mutex
	issued = map[string]bool{} // "udp:port" or "tcp:port" handed out by this process
)

// UDP returns a free UDP address on 127.0.0.1.
func UDP() (string, error) { return pick("udp") }

// TCP returns a free TCP address on 127.0.0.1.
func TCP() (string, error) { return pick("tcp") }

func pick(network string) (string, error) { return pickIn(network, lowest, ephemeralLow(), minSpan) }

// pickIn draws from [low, high) if the range holds at least span ports.
func pickIn(network string, low, high, span int) (string, error) {
	mu.Lock()
	defer mu.Unlock()
	if high-low >= span {
		for range attempts {
			port := low + rand.IntN(high-low)
			key := network + ":" + strconv.Itoa(port)
			if issued[key] {
				continue
			}
			addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
			if _, err := bind(network, addr); err != nil {
				continue // in use
			}
			issued[key] = true
			return addr, nil
		}
	}
	// No room below the ephemeral range, or all draws were taken: an
	// ephemeral port, as before.
	for range attempts {
		addr, err := bind(network, "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		_, port, _ := net.SplitHostPort(addr)
		if key := network + ":" + port; !issued[key] {
			issued[key] = true
			return addr, nil
		}
	}
	return "", fmt.Errorf("freeport: no free %s port on 127.0.0.1", network)
}

// bind binds addr on network, releases it, and returns the address bound
// (the kernel's choice for port 0).
func bind(network, addr string) (string, error) {
	if network == "udp" {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return "", err
		}
		defer pc.Close()
		return pc.LocalAddr().String(), nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// ephemeralLow returns the first port of the kernel's ephemeral range
// (Linux's default when it cannot be read: 32768).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 32768
	}
	low, err := strconv.Atoi(f[0])
	if err != nil || low < 1 || low > 65535 {
		return 32768
	}
	return low
}
