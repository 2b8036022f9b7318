//go:build !unix

package transportbench

import (
	"errors"
	"net"
	"time"
)

func socketBuffers(*net.UDPConn) (int, int, error) {
	return 0, 0, errors.New("socket buffer sizes not available on this platform")
}

func cpuTime() time.Duration { return 0 }
