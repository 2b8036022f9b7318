//go:build !linux

package tcpnet

import "net"

// tuneLossRecovery is Linux-only (see tune_linux.go).
func tuneLossRecovery(net.Conn) bool { return false }
