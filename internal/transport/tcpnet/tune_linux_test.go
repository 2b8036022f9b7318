package tcpnet

import (
	"net"
	"syscall"
	"testing"
	"time"
)

// TestConnectionsRecoverLossQuickly checks that both ends of a peer
// connection carry the lowered retransmission-timeout and
// delayed-acknowledgement bounds, on kernels that have the options.
func TestConnectionsRecoverLossQuickly(t *testing.T) {
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.Dial("tcp", probe.Addr().String())
	probe.Close()
	if err != nil {
		t.Fatal(err)
	}
	supported := tuneLossRecovery(pc)
	pc.Close()
	if !supported {
		t.Skip("this kernel has no TCP_RTO_MIN_US / TCP_DELACK_MAX_US (Linux 6.15 and later)")
	}

	p := newPKI(t)
	r2 := &recorder{}
	e1 := p.endpoint(t, 1, &recorder{}, nil)
	e2 := p.endpoint(t, 2, r2, nil)
	connect(e1, e2)
	sendUntil(t, e1, 2, r2, 1, heartbeat(1, 1, 2, 0))
	for _, e := range []*Endpoint{e1, e2} {
		e.mu.Lock()
		var conns []net.Conn
		for c := range e.conns {
			conns = append(conns, c)
		}
		e.mu.Unlock()
		if len(conns) == 0 {
			t.Fatalf("node %s has no connection", e.Node())
		}
		for _, c := range conns {
			for _, o := range []struct {
				name string
				opt  int
			}{{"TCP_RTO_MIN_US", tcpRTOMinUS}, {"TCP_DELACK_MAX_US", tcpDelackMaxUS}} {
				got := sockoptInt(t, c, o.opt)
				// The kernel keeps the bound in clock ticks: at least
				// the requested value, and far below the default 200 ms.
				if got < int(lossRecovery/time.Microsecond) || got > 20_000 {
					t.Errorf("node %s, connection %s: %s = %d µs, want about %v", e.Node(), c.LocalAddr(), o.name, got, lossRecovery)
				}
			}
		}
	}
}

func sockoptInt(t *testing.T, c net.Conn, opt int) int {
	t.Helper()
	var v int
	var err error
	if !controlFD(c, func(fd int) { v, err = syscall.GetsockoptInt(fd, syscall.IPPROTO_TCP, opt) }) || err != nil {
		t.Fatalf("getsockopt %d on %s: %v", opt, c.LocalAddr(), err)
	}
	return v
}
