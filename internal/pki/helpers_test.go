package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

const year = 365 * 24 * time.Hour

// testCA returns a CA created three years ago, so that certificates issued in
// the past (expired ones) still fall within its validity.
func testCA(t testing.TB) *CA {
	t.Helper()
	ca, err := NewCA("test", time.Now().Add(-3*year))
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// issue returns a node certificate issued at now, and its key.
func issue(t testing.TB, ca *CA, node ids.NodeID, now time.Time, validity time.Duration) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueNode(key.Public(), node, []string{"localhost", "127.0.0.1"}, now, validity)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func identity(t testing.TB, ca *CA, node ids.NodeID, now time.Time) *Identity {
	t.Helper()
	cert, key := issue(t, ca, node, now, 0)
	id, err := NewIdentity(cert, nil, key)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// signRaw signs an arbitrary leaf template with the CA's key, bypassing
// IssueNode's rules, to build certificates IssueNode would refuse to make.
func signRaw(t testing.TB, ca *CA, tmpl *x509.Certificate, pub crypto.PublicKey) *x509.Certificate {
	t.Helper()
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Hour)
		tmpl.NotAfter = time.Now().Add(time.Hour)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// leafWithURIs is a node-like leaf (right key usages) carrying uris.
func leafWithURIs(t testing.TB, ca *CA, uris ...string) *x509.Certificate {
	t.Helper()
	key, err := NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "odd"},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	return signRaw(t, ca, tmpl, key.Public())
}

func nodeID(n uint64) ids.NodeID { return ids.NodeID(n) }
