package transport

import (
	"fmt"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// The hello decisions shared by the stream transports. The TLS handshake has
// verified both certificates against the cluster CA before either runs.

// CheckHello decides on a dialer's hello, as the acceptor self of cluster
// clusterID, given the node ID in the dialer's verified certificate. It
// returns the protocol version to answer with, or the refusal to send.
func CheckHello(h Hello, certNode, self ids.NodeID, clusterID string) (uint32, *Refusal) {
	if certNode == 0 || h.Node != certNode {
		return 0, &Refusal{Reason: "node_id_mismatch", Message: fmt.Sprintf("claims node %s, certificate is for node %s", h.Node, certNode)}
	}
	if h.Node == self {
		return 0, &Refusal{Reason: "node_id_mismatch", Message: "a peer claims this node's own ID"}
	}
	if h.ClusterID != clusterID && h.ClusterID != "" && clusterID != "" {
		return 0, &Refusal{Reason: "cluster_mismatch", Message: fmt.Sprintf("cluster %q, this node is in %q", h.ClusterID, clusterID)}
	}
	version, ok := NegotiateVersion(h.MinVersion, h.MaxVersion)
	if !ok {
		return 0, &Refusal{Reason: "version", Message: fmt.Sprintf("speaks %d..%d, this node %d..%d",
			h.MinVersion, h.MaxVersion, MinProtocolVersion, ProtocolVersion)}
	}
	return version, nil
}

// ReadHelloAnswer reads the acceptor's answer to a hello from fr and checks
// that it comes from node want in a version this build speaks. A refusal is
// returned as a *Refusal error.
func ReadHelloAnswer(fr *FrameReader, want ids.NodeID) (HelloOK, error) {
	t, payload, err := fr.Next()
	if err != nil {
		return HelloOK{}, err
	}
	switch t {
	case FrameRefuse:
		r, err := DecodeRefusal(payload)
		if err != nil {
			return HelloOK{}, err
		}
		return HelloOK{}, &r
	case FrameHelloOK:
	default:
		return HelloOK{}, fmt.Errorf("unexpected %s frame", t)
	}
	ok, err := DecodeHelloOK(payload)
	if err != nil {
		return HelloOK{}, err
	}
	if ok.Node != want || ok.Version > ProtocolVersion || ok.Version < MinProtocolVersion {
		return HelloOK{}, fmt.Errorf("answered as node %s with version %d", ok.Node, ok.Version)
	}
	return ok, nil
}
