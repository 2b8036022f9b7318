package pki

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestNewCA(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	ca, err := NewCA("prod-eu", now)
	if err != nil {
		t.Fatal(err)
	}
	c := ca.Cert
	if !c.IsCA || !c.BasicConstraintsValid || c.MaxPathLen != 0 || !c.MaxPathLenZero {
		t.Errorf("CA constraints: IsCA=%v valid=%v MaxPathLen=%d zero=%v", c.IsCA, c.BasicConstraintsValid, c.MaxPathLen, c.MaxPathLenZero)
	}
	if c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("KeyUsage = %v", c.KeyUsage)
	}
	if !c.NotBefore.Equal(now.Add(-ClockSkew)) || !c.NotAfter.Equal(now.Add(CAValidity)) {
		t.Errorf("validity %v .. %v, want %v .. %v", c.NotBefore, c.NotAfter, now.Add(-ClockSkew), now.Add(CAValidity))
	}
	if pub, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("CA key is %T, want ECDSA P-256", c.PublicKey)
	}
	if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 128 {
		t.Errorf("serial %v", c.SerialNumber)
	}
	if c.Subject.CommonName != "prod-eu CA" {
		t.Errorf("CN %q", c.Subject.CommonName)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
	ca2, err := NewCA("prod-eu", now)
	if err != nil {
		t.Fatal(err)
	}
	if ca2.Cert.SerialNumber.Cmp(c.SerialNumber) == 0 || ca2.PublicKeyHash() == ca.PublicKeyHash() {
		t.Error("two CAs share a serial or a key")
	}

	for _, name := range []string{"", strings.Repeat("x", MaxClusterNameLen+1), "a\x00b", "a\nb", "\xff"} {
		if _, err := NewCA(name, now); err == nil {
			t.Errorf("NewCA(%q) accepted", name)
		}
	}
}

func TestPublicKeyHash(t *testing.T) {
	ca := testCA(t)
	sum := sha256.Sum256(ca.Cert.RawSubjectPublicKeyInfo)
	if got, want := ca.PublicKeyHash(), "sha256:"+hex.EncodeToString(sum[:]); got != want || len(got) != 7+64 {
		t.Errorf("PublicKeyHash = %q, want %q", got, want)
	}
}

func TestIssueNode(t *testing.T) {
	ca := testCA(t)
	now := time.Now().Truncate(time.Second)
	key, _ := NewNodeKey()
	cert, err := ca.IssueNode(key.Public(), 42, []string{"db1.example.com", "10.1.2.3", "::1"}, now, 0)
	if err != nil {
		t.Fatal(err)
	}
	if cert.IsCA || cert.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("IsCA=%v KeyUsage=%v", cert.IsCA, cert.KeyUsage)
	}
	if len(cert.ExtKeyUsage) != 2 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || cert.ExtKeyUsage[1] != x509.ExtKeyUsageClientAuth {
		t.Errorf("ExtKeyUsage = %v", cert.ExtKeyUsage)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != "nodedb://node/42" {
		t.Errorf("URIs = %v", cert.URIs)
	}
	if len(cert.DNSNames) != 1 || cert.DNSNames[0] != "db1.example.com" || len(cert.IPAddresses) != 2 {
		t.Errorf("DNS %v IP %v", cert.DNSNames, cert.IPAddresses)
	}
	if !cert.NotBefore.Equal(now.Add(-ClockSkew)) || !cert.NotAfter.Equal(now.Add(NodeCertValidity)) {
		t.Errorf("validity %v .. %v", cert.NotBefore, cert.NotAfter)
	}
	if err := cert.CheckSignatureFrom(ca.Cert); err != nil {
		t.Error(err)
	}
	if n, err := NodeID(cert); err != nil || n != 42 {
		t.Errorf("NodeID = %d, %v", n, err)
	}

	// A certificate never outlives its CA.
	long, err := ca.IssueNode(key.Public(), 1, nil, now, 20*year)
	if err != nil {
		t.Fatal(err)
	}
	if !long.NotAfter.Equal(ca.Cert.NotAfter) {
		t.Errorf("NotAfter %v not cut to the CA's %v", long.NotAfter, ca.Cert.NotAfter)
	}

	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	for _, tc := range []struct {
		name     string
		ca       *CA
		pub      any
		node     uint64
		hosts    []string
		now      time.Time
		validity time.Duration
		want     error
	}{
		{name: "node 0", ca: ca, pub: key.Public(), node: 0, now: now},
		{name: "P-384 key", ca: ca, pub: p384.Public(), node: 1, now: now, want: ErrUnsupportedKey},
		{name: "ed25519 key", ca: ca, pub: edPub, node: 1, now: now, want: ErrUnsupportedKey},
		{name: "no CA key", ca: &CA{Cert: ca.Cert}, pub: key.Public(), node: 1, now: now, want: ErrNoCAKey},
		{name: "negative validity", ca: ca, pub: key.Public(), node: 1, now: now, validity: -time.Hour},
		{name: "before CA", ca: ca, pub: key.Public(), node: 1, now: ca.Cert.NotBefore.Add(-time.Second)},
		{name: "after CA", ca: ca, pub: key.Public(), node: 1, now: ca.Cert.NotAfter},
		{name: "host:port", ca: ca, pub: key.Public(), node: 1, now: now, hosts: []string{"db1:7000"}},
		{name: "wildcard", ca: ca, pub: key.Public(), node: 1, now: now, hosts: []string{"*.example.com"}},
		{name: "empty label", ca: ca, pub: key.Public(), node: 1, now: now, hosts: []string{"a..b"}},
		{name: "leading hyphen", ca: ca, pub: key.Public(), node: 1, now: now, hosts: []string{"-a.b"}},
		{name: "url", ca: ca, pub: key.Public(), node: 1, now: now, hosts: []string{"https://a.b"}},
		{name: "empty host", ca: ca, pub: key.Public(), node: 1, now: now, hosts: []string{""}},
		{name: "too many hosts", ca: ca, pub: key.Public(), node: 1, now: now, hosts: make([]string, MaxHosts+1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.ca.IssueNode(tc.pub, nodeID(tc.node), tc.hosts, tc.now, tc.validity)
			if err == nil {
				t.Fatal("accepted")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestValidDNSName(t *testing.T) {
	for s, want := range map[string]bool{
		"localhost": true, "a.b-c.d": true, "node_1.svc": true, "A1": true,
		strings.Repeat("a", 63): true, strings.Repeat("a", 64): false,
		"": false, ".": false, "a.": false, ".a": false, "a-.b": false, "a.-b": false,
		"a b": false, "a:1": false, "[::1]": false, "é.com": false,
	} {
		if got := validDNSName(s); got != want {
			t.Errorf("validDNSName(%q) = %v, want %v", s, got, want)
		}
	}
}
