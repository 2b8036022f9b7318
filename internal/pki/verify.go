package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

const (
	// MaxChainCerts bounds the certificates a peer may present. The cluster
	// CA signs node certificates directly, so a valid peer sends one.
	MaxChainCerts = 4
	// MaxCertSize bounds one DER certificate; a node certificate is well
	// under 1 KiB.
	MaxCertSize = 16 << 10
)

// Verifier checks peer certificates against the cluster CA certificate(s).
// It holds no mutable state and is safe for concurrent use.
type Verifier struct {
	roots *x509.CertPool
}

// NewVerifier returns a Verifier trusting exactly caCerts (more than one
// only while a CA is being replaced). With no certificate it refuses every
// peer. The system roots are never used.
func NewVerifier(caCerts ...*x509.Certificate) *Verifier {
	pool := x509.NewCertPool()
	for _, c := range caCerts {
		if c != nil {
			pool.AddCert(c)
		}
	}
	return &Verifier{roots: pool}
}

// Verify parses and verifies a peer's certificates (leaf first, as TLS
// presents them) at time now, and returns the node ID of the leaf and the
// leaf. Sizes are bounded before parsing: at most MaxChainCerts certificates
// of at most MaxCertSize bytes each. The leaf must chain to a trusted CA, be
// valid at now and allow server or client authentication; only then is its
// node ID read. Every error is a *RefusalError.
func (v *Verifier) Verify(rawCerts [][]byte, now time.Time) (ids.NodeID, *x509.Certificate, error) {
	if len(rawCerts) == 0 {
		return 0, nil, refusal(ReasonNoCertificate, ErrNoCertificate)
	}
	if len(rawCerts) > MaxChainCerts {
		return 0, nil, refusal(ReasonMalformed, fmt.Errorf("%d certificates, at most %d", len(rawCerts), MaxChainCerts))
	}
	certs := make([]*x509.Certificate, len(rawCerts))
	for i, raw := range rawCerts {
		if len(raw) > MaxCertSize {
			return 0, nil, refusal(ReasonMalformed, fmt.Errorf("certificate %d is %d bytes, at most %d", i, len(raw), MaxCertSize))
		}
		c, err := x509.ParseCertificate(raw)
		if err != nil {
			return 0, nil, refusal(ReasonMalformed, err)
		}
		certs[i] = c
	}
	return v.verify(certs, now)
}

func (v *Verifier) verify(certs []*x509.Certificate, now time.Time) (ids.NodeID, *x509.Certificate, error) {
	if len(certs) == 0 {
		return 0, nil, refusal(ReasonNoCertificate, ErrNoCertificate)
	}
	if len(certs) > MaxChainCerts {
		return 0, nil, refusal(ReasonMalformed, fmt.Errorf("%d certificates, at most %d", len(certs), MaxChainCerts))
	}
	opts := x509.VerifyOptions{
		Roots:       v.roots,
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if len(certs) > 1 {
		opts.Intermediates = x509.NewCertPool()
		for _, c := range certs[1:] {
			opts.Intermediates.AddCert(c)
		}
	}
	leaf := certs[0]
	if _, err := leaf.Verify(opts); err != nil {
		return 0, nil, classify(err)
	}
	node, err := NodeID(leaf)
	if err != nil {
		return 0, nil, refusal(ReasonNoNodeID, err)
	}
	return node, leaf, nil
}

func classify(err error) *RefusalError {
	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	switch {
	case errors.As(err, &unknown):
		return refusal(ReasonUnknownAuthority, err)
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return refusal(ReasonExpired, err)
	default:
		return refusal(ReasonInvalidChain, err)
	}
}

// PeerNode returns the node ID of the peer of a completed handshake. It
// verifies the peer's certificates again with v rather than trusting that the
// connection was set up by ServerTLS or ClientTLS, so a connection whose
// configuration skipped verification cannot yield a node ID.
func PeerNode(cs tls.ConnectionState, v *Verifier) (ids.NodeID, error) {
	if !cs.HandshakeComplete {
		return 0, errors.New("pki: TLS handshake not complete")
	}
	node, _, err := v.verify(cs.PeerCertificates, time.Now())
	return node, err
}
