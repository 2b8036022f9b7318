package pki

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// MaxCSRSize bounds a DER certificate signing request. A node's CSR is a few
// hundred bytes; the bound is checked before parsing.
const MaxCSRSize = 16 << 10

var (
	// ErrCSRTooLarge is returned for a CSR over MaxCSRSize.
	ErrCSRTooLarge = errors.New("pki: certificate signing request too large")
	// ErrBadCSR is returned (wrapped with detail) for a CSR that does not
	// parse, whose signature does not verify, whose key is not ECDSA P-256
	// or whose host names are invalid.
	ErrBadCSR = errors.New("pki: invalid certificate signing request")
)

// NewCSR returns a DER certificate signing request for key, so a node can
// get a certificate without its private key leaving it. hosts become DNS and
// IP SANs. When node is not 0 the CSR also carries the node's URI, for the
// record only: the CA decides the node ID (see SignCSR), so a joining node
// that does not know its ID yet passes 0.
func NewCSR(key crypto.Signer, node ids.NodeID, hosts []string) ([]byte, error) {
	if err := checkNodeKey(key.Public()); err != nil {
		return nil, err
	}
	dns, ips, err := splitHosts(hosts)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.CertificateRequest{
		Subject:     pkix.Name{Organization: []string{"nodedb-cluster"}, CommonName: serverName(node)},
		DNSNames:    dns,
		IPAddresses: ips,
	}
	if node != 0 {
		tmpl.URIs = []*url.URL{NodeURI(node)}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("pki: create CSR: %w", err)
	}
	return der, nil
}

// SignCSR issues a node certificate for the key in a CSR, as IssueNode does.
//
// The node ID is the CA's decision, passed as node; whatever the CSR says
// about identity (URI SANs, subject, extensions) is ignored, so a joiner
// cannot obtain a certificate for a node ID it was not given. Only the
// public key, after its proof of possession (the CSR signature) verifies,
// and the DNS and IP SANs, after validation, are taken from the CSR.
func (ca *CA) SignCSR(csrDER []byte, node ids.NodeID, now time.Time, validity time.Duration) (*x509.Certificate, error) {
	if ca.Key == nil {
		return nil, ErrNoCAKey
	}
	if len(csrDER) > MaxCSRSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrCSRTooLarge, len(csrDER), MaxCSRSize)
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature: %w", ErrBadCSR, err)
	}
	if err := checkNodeKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadCSR, err)
	}
	hosts := append([]string(nil), csr.DNSNames...)
	for _, ip := range csr.IPAddresses {
		hosts = append(hosts, ip.String())
	}
	dns, ips, err := splitHosts(hosts)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadCSR, err)
	}
	return ca.issue(csr.PublicKey, node, dns, ips, now, validity)
}
