package quicnet

import (
	"errors"
	"net"
	"sync/atomic"
	"syscall"
)

// refusalsAsLoss is the endpoint's UDP socket as quic-go sees it. A packet
// the local kernel refuses to send is reported as sent, that is, lost:
// EPERM (a firewall rule dropped it on its way out, or a full connection
// tracking table did) and ENOBUFS (a full device queue). quic-go otherwise
// ends the connection on any failed send, where the same packet lost one
// hop later is only retransmitted, and TCP treats both alike: under a
// local firewall that drops 1% of a node's outgoing packets, every peer
// connection died within seconds and the groups lost their leaders (the
// peer-loss runs of bench/compare, docs/comparison.md). A refusal that
// persists ends the connection by its idle timeout instead, as any
// blackhole does. Refused sends are counted (SendsRefused).
//
// It keeps *net.UDPConn's methods, so quic-go still finds the socket
// options, batched reads and GSO it needs (OOBCapablePacketConn).
type refusalsAsLoss struct {
	*net.UDPConn
	refused *atomic.Uint64
}

func (c refusalsAsLoss) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (int, int, error) {
	n, oobn, err := c.UDPConn.WriteMsgUDP(b, oob, addr)
	if err != nil && localRefusal(err) {
		c.refused.Add(1)
		return len(b), len(oob), nil
	}
	return n, oobn, err
}

func (c refusalsAsLoss) WriteTo(b []byte, addr net.Addr) (int, error) {
	n, err := c.UDPConn.WriteTo(b, addr)
	if err != nil && localRefusal(err) {
		c.refused.Add(1)
		return len(b), nil
	}
	return n, err
}

// localRefusal reports whether a send failed because the local kernel
// dropped the packet rather than because the socket or address is unusable.
func localRefusal(err error) bool {
	return errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.ENOBUFS)
}
