//go:build !linux

package tcpnet

import "github.com/prometheus/client_golang/prometheus"

// pathCollectors is Linux-only (TCP_INFO; see path_linux.go).
func pathCollectors(*Endpoint) []prometheus.Collector { return nil }
