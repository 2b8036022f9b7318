package pki

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// PublicKeyHashPrefix starts every public key hash ("sha256:<64 hex>").
const PublicKeyHashPrefix = "sha256:"

var (
	// ErrBadPublicKeyHash is returned for a string that is not
	// "sha256:<64 hex digits>".
	ErrBadPublicKeyHash = errors.New("pki: public key hash is not sha256:<64 hex digits>")
	// ErrCAMismatch is returned by VerifyPinned when the presented chain does
	// not hold a CA certificate with the expected public key hash, or its
	// leaf is not issued by that CA: the peer is not (provably) a node of the
	// expected cluster.
	ErrCAMismatch = errors.New("pki: peer is not vouched for by the expected cluster CA")
)

// PublicKeyHash returns "sha256:<hex>", the SHA-256 of cert's
// SubjectPublicKeyInfo, in the format of CA.PublicKeyHash.
func PublicKeyHash(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return PublicKeyHashPrefix + hex.EncodeToString(sum[:])
}

// ParsePublicKeyHash parses "sha256:<64 hex digits>" (either case) into the
// hash it names.
func ParsePublicKeyHash(s string) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	h, ok := strings.CutPrefix(s, PublicKeyHashPrefix)
	if !ok || len(h) != 2*sha256.Size {
		return sum, ErrBadPublicKeyHash
	}
	if _, err := hex.Decode(sum[:], []byte(h)); err != nil {
		return sum, ErrBadPublicKeyHash
	}
	return sum, nil
}

// VerifyPinned verifies the certificates a peer presents (leaf first, as TLS
// gives them) without knowing the cluster CA beforehand, only the hash of
// its public key (caHash, "sha256:<hex>", from a join token). It requires
// that:
//
//   - one of the presented certificates is a CA certificate whose public
//     key hash is caHash (the peer must send the CA certificate in its
//     chain);
//   - the leaf verifies against exactly that CA, as Verifier.Verify checks
//     it (valid at now, server or client authentication, exactly one node
//     identity).
//
// It returns that CA certificate, which the caller may then trust (store as
// ca.crt), and the leaf's node ID. Sizes are bounded before parsing as in
// Verifier.Verify. A chain without the CA, or whose leaf another key signed,
// is ErrCAMismatch (together with the *RefusalError in the second case);
// other failures are the *RefusalError of Verifier.Verify.
func VerifyPinned(rawCerts [][]byte, caHash string, now time.Time) (*x509.Certificate, ids.NodeID, error) {
	want, err := ParsePublicKeyHash(caHash)
	if err != nil {
		return nil, 0, err
	}
	if len(rawCerts) == 0 {
		return nil, 0, refusal(ReasonNoCertificate, ErrNoCertificate)
	}
	if len(rawCerts) > MaxChainCerts {
		return nil, 0, refusal(ReasonMalformed, fmt.Errorf("%d certificates, at most %d", len(rawCerts), MaxChainCerts))
	}
	certs := make([]*x509.Certificate, len(rawCerts))
	for i, raw := range rawCerts {
		if len(raw) > MaxCertSize {
			return nil, 0, refusal(ReasonMalformed, fmt.Errorf("certificate %d is %d bytes, at most %d", i, len(raw), MaxCertSize))
		}
		c, err := x509.ParseCertificate(raw)
		if err != nil {
			return nil, 0, refusal(ReasonMalformed, err)
		}
		certs[i] = c
	}
	var ca *x509.Certificate
	for _, c := range certs[1:] {
		sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
		if c.IsCA && c.BasicConstraintsValid && subtle.ConstantTimeCompare(sum[:], want[:]) == 1 {
			ca = c
			break
		}
	}
	if ca == nil {
		return nil, 0, fmt.Errorf("%w: none of the %d certificates presented is a CA with public key hash %s", ErrCAMismatch, len(certs), caHash)
	}
	// Only the pinned CA is trusted; the rest of the chain may serve as
	// intermediates (there are none in a cluster, whose CA has path length 0).
	node, _, err := NewVerifier(ca).verify(certs, now)
	if err != nil {
		if errors.Is(err, ErrUnknownAuthority) {
			return nil, 0, fmt.Errorf("%w: %w", ErrCAMismatch, err)
		}
		return nil, 0, err
	}
	return ca, node, nil
}
