package tcpnet

import (
	"net"
	"syscall"
	"time"
)

// Linux socket options from 6.15 on (include/uapi/linux/tcp.h); older
// kernels refuse them and the connection keeps the system's defaults.
const (
	tcpRTOMinUS    = 45 // TCP_RTO_MIN_US: lower bound of the retransmission timeout
	tcpDelackMaxUS = 46 // TCP_DELACK_MAX_US: upper bound of a delayed acknowledgement
)

// lossRecovery is the bound tuneLossRecovery sets on both timers.
const lossRecovery = 10 * time.Millisecond

// tuneLossRecovery lowers c's bounds on the retransmission timeout and on
// delayed acknowledgements from Linux's 200 ms to lossRecovery. Between
// cluster nodes round trips are well under a millisecond, and with a few
// small Raft messages in flight most losses cannot be repaired by fast
// retransmit, so every lost segment cost at least 200 ms (QUIC, which
// works from its own RTT estimate, lost a few ms: docs/comparison.md,
// "Under packet loss"). The timeout still grows with the measured round
// trip; the delayed-acknowledgement bound goes down with it so that a
// delayed acknowledgement of a one-way Raft stream does not look like a
// loss. It reports whether the kernel took both.
func tuneLossRecovery(c net.Conn) bool {
	us := int(lossRecovery / time.Microsecond)
	took := false
	ok := controlFD(c, func(fd int) {
		took = syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, tcpRTOMinUS, us) == nil &&
			syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, tcpDelackMaxUS, us) == nil
	})
	return ok && took
}

// controlFD runs f with c's socket descriptor; false if c has none (not a
// socket, or closed).
func controlFD(c net.Conn, f func(fd int)) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	return rc.Control(func(fd uintptr) { f(int(fd)) }) == nil
}
