package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net/url"
	"testing"
	"time"
)

func TestSignCSR(t *testing.T) {
	ca, now := testCA(t), time.Now()
	key, _ := NewNodeKey()
	csr, err := NewCSR(key, 0, []string{"db1.example.com", "10.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.SignCSR(csr, 7, now, 0)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := NodeID(cert); err != nil || n != 7 {
		t.Errorf("NodeID = %d, %v", n, err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		t.Error("certificate is not for the CSR's key")
	}
	if len(cert.DNSNames) != 1 || cert.DNSNames[0] != "db1.example.com" || len(cert.IPAddresses) != 1 || cert.IPAddresses[0].String() != "10.0.0.1" {
		t.Errorf("SANs: %v %v", cert.DNSNames, cert.IPAddresses)
	}
	if n, _, err := NewVerifier(ca.Cert).Verify([][]byte{cert.Raw}, now); err != nil || n != 7 {
		t.Errorf("Verify = %d, %v", n, err)
	}
	if _, err := NewIdentity(cert, nil, key); err != nil {
		t.Errorf("NewIdentity: %v", err)
	}
}

func TestSignCSRNodeIDFromCA(t *testing.T) {
	ca, now := testCA(t), time.Now()
	key, _ := NewNodeKey()
	claimsNine, err := NewCSR(key, 9, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A CSR crafted with several identities, including a spoofed one.
	tmpl := &x509.CertificateRequest{URIs: []*url.URL{NodeURI(1), NodeURI(2), {Scheme: "spiffe", Host: "x"}}}
	crafted, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	for name, csr := range map[string][]byte{"claims 9": claimsNine, "claims 1 and 2": crafted} {
		cert, err := ca.SignCSR(csr, 5, now, 0)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(cert.URIs) != 1 || cert.URIs[0].String() != "nodedb://node/5" {
			t.Errorf("%s: URIs %v, want only nodedb://node/5", name, cert.URIs)
		}
	}
}

func TestSignCSRRefusals(t *testing.T) {
	ca, now := testCA(t), time.Now()
	key, _ := NewNodeKey()
	csr, err := NewCSR(key, 0, []string{"db1.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	// Change a signed byte (db1 -> db2): the CSR still parses, its
	// signature no longer verifies.
	i := bytes.Index(csr, []byte("db1.example.com"))
	if i < 0 {
		t.Fatal("host not found in CSR")
	}
	tampered := append([]byte(nil), csr...)
	tampered[i+2] = '2'
	if _, err := x509.ParseCertificateRequest(tampered); err != nil {
		t.Fatalf("tampered CSR should still parse: %v", err)
	}

	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384CSR, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, p384)
	if err != nil {
		t.Fatal(err)
	}
	badHost, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{"db1:7000"}}, key)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		ca   *CA
		csr  []byte
		node uint64
		want error
	}{
		{"tampered", ca, tampered, 1, ErrBadCSR},
		{"garbage", ca, []byte("not a CSR"), 1, ErrBadCSR},
		{"truncated", ca, csr[:len(csr)-10], 1, ErrBadCSR},
		{"oversized", ca, make([]byte, MaxCSRSize+1), 1, ErrCSRTooLarge},
		{"P-384 key", ca, p384CSR, 1, ErrBadCSR},
		{"bad host", ca, badHost, 1, ErrBadCSR},
		{"no CA key", &CA{Cert: ca.Cert}, csr, 1, ErrNoCAKey},
		{"node 0", ca, csr, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cert, err := tc.ca.SignCSR(tc.csr, nodeID(tc.node), now, 0)
			if err == nil || cert != nil {
				t.Fatal("signed")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestNewCSRRefusals(t *testing.T) {
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if _, err := NewCSR(p384, 1, nil); !errors.Is(err, ErrUnsupportedKey) {
		t.Errorf("P-384: %v", err)
	}
	key, _ := NewNodeKey()
	if _, err := NewCSR(key, 1, []string{"a b"}); err == nil {
		t.Error("bad host accepted")
	}
}
