package pki

import (
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParsePublicKeyHash(t *testing.T) {
	ca := testCA(t)
	h := PublicKeyHash(ca.Cert)
	if h != ca.PublicKeyHash() {
		t.Fatalf("PublicKeyHash %s, CA.PublicKeyHash %s", h, ca.PublicKeyHash())
	}
	sum, err := ParsePublicKeyHash(h)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParsePublicKeyHash("sha256:" + strings.ToUpper(h[7:])); err != nil {
		t.Fatalf("upper-case hex: %v", err)
	}
	if sum2, _ := ParsePublicKeyHash(h); sum2 != sum {
		t.Fatal("not deterministic")
	}
	for _, bad := range []string{"", "sha256:", h[7:], "sha1:" + h[7:], h + "0", h[:len(h)-1], "sha256:" + strings.Repeat("g", 64), " " + h, "SHA256:" + h[7:]} {
		if _, err := ParsePublicKeyHash(bad); !errors.Is(err, ErrBadPublicKeyHash) {
			t.Errorf("ParsePublicKeyHash(%q) = %v, want ErrBadPublicKeyHash", bad, err)
		}
	}
}

func TestVerifyPinned(t *testing.T) {
	now := time.Now()
	ca, other := testCA(t), testCA(t)
	leaf, _ := issue(t, ca, 7, now, 0)
	otherLeaf, _ := issue(t, other, 7, now, 0)
	expired, _ := issue(t, ca, 7, now.Add(-2*year), year)
	raw := func(cs ...*x509.Certificate) [][]byte {
		var out [][]byte
		for _, c := range cs {
			out = append(out, c.Raw)
		}
		return out
	}
	hash := ca.PublicKeyHash()

	got, node, err := VerifyPinned(raw(leaf, ca.Cert), hash, now)
	if err != nil || node != 7 || !got.Equal(ca.Cert) {
		t.Fatalf("good chain: %v node %d", err, node)
	}
	// The CA may come after other certificates.
	if _, _, err := VerifyPinned(raw(leaf, other.Cert, ca.Cert), hash, now); err != nil {
		t.Fatalf("CA after another: %v", err)
	}

	cases := []struct {
		name  string
		chain [][]byte
		hash  string
		want  []error
	}{
		{"no CA in the chain", raw(leaf), hash, []error{ErrCAMismatch}},
		{"another CA in the chain", raw(leaf, other.Cert), hash, []error{ErrCAMismatch}},
		{"the right CA, a leaf of another", raw(otherLeaf, ca.Cert), hash, []error{ErrCAMismatch, ErrUnknownAuthority}},
		{"the CA alone, as the leaf", raw(ca.Cert), hash, []error{ErrCAMismatch}},
		{"another hash", raw(leaf, ca.Cert), other.PublicKeyHash(), []error{ErrCAMismatch}},
		{"a node certificate's hash", raw(leaf, ca.Cert), PublicKeyHash(leaf), []error{ErrCAMismatch}},
		{"expired leaf", raw(expired, ca.Cert), hash, []error{ErrExpired}},
		{"leaf without node ID", raw(leafWithURIs(t, ca), ca.Cert), hash, []error{ErrNoNodeID}},
		{"empty", nil, hash, []error{ErrNoCertificate}},
		{"garbage", [][]byte{{1, 2, 3}, ca.Cert.Raw}, hash, []error{ErrMalformed}},
		{"too many", raw(leaf, ca.Cert, ca.Cert, ca.Cert, ca.Cert), hash, []error{ErrMalformed}},
		{"too big", [][]byte{make([]byte, MaxCertSize+1), ca.Cert.Raw}, hash, []error{ErrMalformed}},
		{"bad hash", raw(leaf, ca.Cert), "sha256:00", []error{ErrBadPublicKeyHash}},
	}
	for _, c := range cases {
		got, _, err := VerifyPinned(c.chain, c.hash, now)
		if got != nil {
			t.Errorf("%s: returned a CA", c.name)
		}
		for _, w := range c.want {
			if !errors.Is(err, w) {
				t.Errorf("%s: %v, want %v", c.name, err, w)
			}
		}
	}
	if _, _, err := VerifyPinned(raw(expired, ca.Cert), hash, now); errors.Is(err, ErrCAMismatch) {
		t.Errorf("an expired leaf of the right CA is not a CA mismatch: %v", err)
	}
}
