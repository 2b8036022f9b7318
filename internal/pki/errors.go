package pki

import (
	"errors"
	"fmt"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// Reason says why a peer was refused. Its values are stable strings meant for
// metric labels (nodedb_transport_handshake_refusals_total{reason=...}) and
// logs; the set is closed and small, so label cardinality stays bounded.
type Reason string

const (
	// ReasonNoCertificate: the peer presented no certificate.
	ReasonNoCertificate Reason = "no_certificate"
	// ReasonUnknownAuthority: the certificate does not chain to the cluster
	// CA (another cluster's CA, a self-signed certificate, a forged one).
	ReasonUnknownAuthority Reason = "unknown_authority"
	// ReasonExpired: the certificate is expired or not yet valid.
	ReasonExpired Reason = "expired"
	// ReasonInvalidChain: the certificate chains to the cluster CA but the
	// chain is not acceptable for another reason (a certificate without
	// server or client authentication usage, a non-CA certificate used as an
	// issuer, a chain longer than the CA allows). The cluster CA never issues
	// such certificates, so this reason deserves a look.
	ReasonInvalidChain Reason = "invalid_chain"
	// ReasonNoNodeID: the certificate chains to the cluster CA but does not
	// carry exactly one valid nodedb://node/<id> URI.
	ReasonNoNodeID Reason = "no_node_id"
	// ReasonMalformed: the certificates could not be parsed or exceed the
	// size bounds.
	ReasonMalformed Reason = "malformed"
	// ReasonNodeIDMismatch: the certificate is valid but names another node
	// than the one the peer claims to be (CheckClaim) or the one the dialer
	// expected (ClientTLS).
	ReasonNodeIDMismatch Reason = "node_id_mismatch"
)

// Reasons returns every Reason, so a caller can create its metric series up
// front (a counter that has never been incremented is then exported as 0).
func Reasons() []Reason {
	return []Reason{
		ReasonNoCertificate, ReasonUnknownAuthority, ReasonExpired,
		ReasonInvalidChain, ReasonNoNodeID, ReasonMalformed, ReasonNodeIDMismatch,
	}
}

// Sentinel errors, one per Reason. A *RefusalError matches the sentinel of
// its Reason with errors.Is, so callers that do not care about metrics can
// test errors.Is(err, pki.ErrExpired). ErrNoNodeID is declared with NodeID.
var (
	ErrNoCertificate    = errors.New("pki: peer presented no certificate")
	ErrUnknownAuthority = errors.New("pki: certificate is not issued by the cluster CA")
	ErrExpired          = errors.New("pki: certificate is expired or not yet valid")
	ErrInvalidChain     = errors.New("pki: certificate chain is not acceptable")
	ErrMalformed        = errors.New("pki: malformed certificate")
	ErrNodeIDMismatch   = errors.New("pki: peer node ID does not match its certificate")
)

func (r Reason) sentinel() error {
	switch r {
	case ReasonNoCertificate:
		return ErrNoCertificate
	case ReasonUnknownAuthority:
		return ErrUnknownAuthority
	case ReasonExpired:
		return ErrExpired
	case ReasonInvalidChain:
		return ErrInvalidChain
	case ReasonNoNodeID:
		return ErrNoNodeID
	case ReasonMalformed:
		return ErrMalformed
	case ReasonNodeIDMismatch:
		return ErrNodeIDMismatch
	}
	return nil
}

// RefusalError is the error of every refused peer. Reason is for counting;
// Err is the cause with its detail (often an x509 error, which errors.As
// still reaches through Unwrap).
type RefusalError struct {
	Reason Reason
	Err    error
}

func (e *RefusalError) Error() string {
	if e.Err == nil {
		return "peer refused (" + string(e.Reason) + ")"
	}
	return "peer refused (" + string(e.Reason) + "): " + e.Err.Error()
}

// Unwrap returns the cause.
func (e *RefusalError) Unwrap() error { return e.Err }

// Is reports whether target is the sentinel error of e's Reason.
func (e *RefusalError) Is(target error) bool {
	s := e.Reason.sentinel()
	return s != nil && s == target
}

func refusal(r Reason, err error) *RefusalError { return &RefusalError{Reason: r, Err: err} }

// CheckClaim compares the node ID a peer's verified certificate carries with
// the node ID the peer claims (in the transport's hello) or that the caller
// expects. It returns nil only when they are equal and not 0, otherwise a
// *RefusalError with ReasonNodeIDMismatch. A certificate proves who the peer
// is; a claim that disagrees with it is either a bug or an impersonation
// attempt, and is never trusted.
func CheckClaim(certNode, claimed ids.NodeID) error {
	if certNode == claimed && certNode != 0 {
		return nil
	}
	return refusal(ReasonNodeIDMismatch, fmt.Errorf("certificate is for node %d, peer claims node %d", certNode, claimed))
}
