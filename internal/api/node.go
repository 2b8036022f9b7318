package api

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"

	"github.com/nodedb/nodedb-cluster/internal/server"
)

// ServeNode serves node's client API on addr. TLS: with certFile and
// keyFile when given; otherwise plain HTTP on a loopback address, and the
// node's own certificate (signed by the cluster CA) on any other.
func ServeNode(node *server.Server, addr, certFile, keyFile string, log *slog.Logger) (*Endpoint, error) {
	cfg := Config{Addr: addr, Metrics: node.Registry(), Logger: log}
	switch {
	case certFile != "" || keyFile != "":
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("api certificate: %w", err)
		}
		cfg.TLS = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	case !IsLoopback(addr):
		cfg.TLS = node.APITLS()
	}
	return Listen(cfg, node)
}

// IsLoopback reports whether addr's host is a loopback address or
// "localhost".
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
