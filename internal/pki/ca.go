package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

const (
	// CAValidity is the lifetime of a cluster CA. Replacing a CA means
	// re-issuing every node certificate, so it is long.
	CAValidity = 10 * 365 * 24 * time.Hour
	// NodeCertValidity is the default lifetime of a node certificate.
	NodeCertValidity = 365 * 24 * time.Hour
	// ClockSkew is how far NotBefore is set before the issuing time, so a
	// certificate issued on one machine is valid at once on a peer whose
	// clock is a little behind.
	ClockSkew = time.Hour
	// MaxHosts bounds the DNS and IP SANs of a node certificate.
	MaxHosts = 32
	// MaxClusterNameLen bounds the cluster name in the CA's common name
	// (RFC 5280 bounds a common name at 64 characters).
	MaxClusterNameLen = 61
)

var (
	// ErrNoCAKey is returned when a CA whose private key is not loaded is
	// asked to sign. Only the node(s) that hold ca.key can issue.
	ErrNoCAKey = errors.New("pki: the CA private key is not loaded")
	// ErrUnsupportedKey is returned for a node public key that is not ECDSA
	// P-256, the one key type the cluster issues certificates for.
	ErrUnsupportedKey = errors.New("pki: node keys must be ECDSA P-256")
	// ErrKeyMismatch is returned when a private key is not the one whose
	// public key a certificate carries.
	ErrKeyMismatch = errors.New("pki: private key does not match the certificate")
)

// CA is a cluster certificate authority: a self-signed ECDSA P-256
// certificate that can sign node certificates and nothing else (path length
// zero: no intermediate CA can be made under it).
//
// Key is nil on nodes that hold only the public part (loaded from ca.crt
// alone); such a CA can serve a Verifier but cannot issue.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewCA creates a cluster CA named after the cluster, valid from
// now-ClockSkew for CAValidity.
func NewCA(clusterName string, now time.Time) (*CA, error) {
	if err := checkClusterName(clusterName); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"nodedb-cluster"}, CommonName: clusterName + " CA"},
		NotBefore:             now.Add(-ClockSkew),
		NotAfter:              now.Add(CAValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("pki: create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parse CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// PublicKeyHash returns "sha256:<hex>", the SHA-256 of the CA certificate's
// SubjectPublicKeyInfo, as kubeadm does. A joining node that knows this hash
// (from its join token) can check it is talking to the right cluster before
// it trusts anything the cluster sends.
func (ca *CA) PublicKeyHash() string {
	sum := sha256.Sum256(ca.Cert.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// NewNodeKey generates a node private key (ECDSA P-256). It is generated
// where it is used and never leaves that node, except when a single process
// (the dev command, the certs CLI) plays both node and CA.
func NewNodeKey() (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generate node key: %w", err)
	}
	return key, nil
}

// NewNodeIdentity makes a node identity in one step, for a process that
// plays both node and CA (tests, benchmarks): a fresh key and a certificate
// for node valid from now, with hosts as SANs. withCA puts the CA
// certificate in the identity's chain, as a node serving joins must present
// it (joiners verify the CA from it).
func (ca *CA) NewNodeIdentity(node ids.NodeID, hosts []string, withCA bool) (*Identity, error) {
	key, err := NewNodeKey()
	if err != nil {
		return nil, err
	}
	cert, err := ca.IssueNode(key.Public(), node, hosts, time.Now(), 0)
	if err != nil {
		return nil, err
	}
	var chain []*x509.Certificate
	if withCA {
		chain = []*x509.Certificate{ca.Cert}
	}
	return NewIdentity(cert, chain, key)
}

// IssueNode signs a certificate for node (>= 1) over pub, an ECDSA P-256
// public key, usable for both server and client authentication. hosts (IP
// addresses or DNS names) become IP and DNS SANs; they are informational.
//
// The certificate is valid from now-ClockSkew for validity (0 means
// NodeCertValidity), cut to the CA's own validity period: a certificate never
// outlives the CA that vouches for it. now must be within the CA's validity.
func (ca *CA) IssueNode(pub crypto.PublicKey, node ids.NodeID, hosts []string, now time.Time, validity time.Duration) (*x509.Certificate, error) {
	if err := checkNodeKey(pub); err != nil {
		return nil, err
	}
	dns, ips, err := splitHosts(hosts)
	if err != nil {
		return nil, err
	}
	return ca.issue(pub, node, dns, ips, now, validity)
}

func (ca *CA) issue(pub crypto.PublicKey, node ids.NodeID, dns []string, ips []net.IP, now time.Time, validity time.Duration) (*x509.Certificate, error) {
	if ca.Key == nil {
		return nil, ErrNoCAKey
	}
	if node == 0 {
		return nil, errors.New("pki: node ID 0 is not a node")
	}
	if validity < 0 {
		return nil, fmt.Errorf("pki: negative certificate validity %v", validity)
	}
	if validity == 0 {
		validity = NodeCertValidity
	}
	if now.Before(ca.Cert.NotBefore) || !now.Before(ca.Cert.NotAfter) {
		return nil, fmt.Errorf("pki: the CA is not valid at %s (valid from %s to %s)",
			now.UTC().Format(time.RFC3339), ca.Cert.NotBefore.UTC().Format(time.RFC3339), ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	notBefore, notAfter := now.Add(-ClockSkew), now.Add(validity)
	if notBefore.Before(ca.Cert.NotBefore) {
		notBefore = ca.Cert.NotBefore
	}
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"nodedb-cluster"}, CommonName: serverName(node)},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		IsCA:                  false,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:                  []*url.URL{NodeURI(node)},
		DNSNames:              dns,
		IPAddresses:           ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("pki: create node certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parse node certificate: %w", err)
	}
	return cert, nil
}

// newSerial returns a random positive 128-bit serial number. Random serials
// make issued certificates unpredictable and distinct without any state.
func newSerial() (*big.Int, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("pki: serial number: %w", err)
	}
	s := new(big.Int).SetBytes(b[:])
	if s.Sign() == 0 {
		s.SetInt64(1) // a zero serial is not allowed; 2^-128 odds
	}
	return s, nil
}

func checkClusterName(name string) error {
	if name == "" || len(name) > MaxClusterNameLen || !utf8.ValidString(name) {
		return fmt.Errorf("pki: cluster name must be 1 to %d bytes of UTF-8, got %q", MaxClusterNameLen, name)
	}
	for _, r := range name {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("pki: cluster name %q has a non-printable character", name)
		}
	}
	return nil
}

func checkNodeKey(pub crypto.PublicKey) error {
	k, ok := pub.(*ecdsa.PublicKey)
	if !ok || k.Curve != elliptic.P256() {
		return fmt.Errorf("%w, got %T", ErrUnsupportedKey, pub)
	}
	return nil
}

// splitHosts sorts hosts into IP addresses and DNS names, refusing anything
// that is neither (a "host:port", a URL, a wildcard).
func splitHosts(hosts []string) ([]string, []net.IP, error) {
	if len(hosts) > MaxHosts {
		return nil, nil, fmt.Errorf("pki: %d hosts, at most %d allowed", len(hosts), MaxHosts)
	}
	var dns []string
	var ips []net.IP
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
			continue
		}
		if !validDNSName(h) {
			return nil, nil, fmt.Errorf("pki: host %q is neither an IP address nor a DNS name", h)
		}
		dns = append(dns, h)
	}
	return dns, ips, nil
}

func validDNSName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	label := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			if label == 0 || s[i-1] == '-' {
				return false
			}
			label = 0
			continue
		case c == '-':
			if label == 0 {
				return false
			}
		case c == '_', '0' <= c && c <= '9', 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		default:
			return false
		}
		label++
		if label > 63 {
			return false
		}
	}
	return label > 0 && s[len(s)-1] != '-'
}
