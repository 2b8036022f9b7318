//go:build unix

package transportbench

import (
	"net"
	"syscall"
	"time"
)

func socketBuffers(c *net.UDPConn) (rbuf, wbuf int, err error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		rbuf, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF)
		if serr == nil {
			wbuf, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF)
		}
	})
	if err == nil {
		err = serr
	}
	return rbuf, wbuf, err
}

// cpuTime is the CPU time (user and system) this process has used so far:
// both endpoints of a benchmark run in it, so its growth over a benchmark is
// the work of both ends, which contention from other processes inflates far
// less than wall time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
