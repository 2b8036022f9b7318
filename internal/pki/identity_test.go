package pki

import (
	"crypto/x509"
	"errors"
	"testing"
	"time"
)

func TestIdentity(t *testing.T) {
	ca, now := testCA(t), time.Now()
	cert, key := issue(t, ca, 3, now, 0)
	_, otherKey := issue(t, ca, 3, now, 0)

	if _, err := NewIdentity(cert, nil, otherKey); !errors.Is(err, ErrKeyMismatch) {
		t.Errorf("mismatched key: %v", err)
	}
	if _, err := NewIdentity(cert, nil, nil); !errors.Is(err, ErrKeyMismatch) {
		t.Errorf("no key: %v", err)
	}
	if _, err := NewIdentity(ca.Cert, nil, ca.Key); !errors.Is(err, ErrNoNodeID) {
		t.Errorf("CA certificate as identity: %v", err)
	}

	id, err := NewIdentity(cert, nil, key)
	if err != nil {
		t.Fatal(err)
	}
	if id.Node() != 3 {
		t.Errorf("Node = %v", id.Node())
	}
	tc := id.Certificate()
	if tc.Leaf != cert || len(tc.Certificate) != 1 || tc.PrivateKey != key {
		t.Errorf("Certificate = %+v", tc)
	}

	// Renewal with a new key for the same node.
	renewed, renewedKey := issue(t, ca, 3, now, 0)
	if err := id.Replace(renewed, renewedKey); err != nil {
		t.Fatal(err)
	}
	if id.Certificate().Leaf != renewed {
		t.Error("Replace did not take effect")
	}

	// Refusals leave the identity unchanged.
	stranger, strangerKey := issue(t, ca, 4, now, 0)
	for name, err := range map[string]error{
		"other node":   id.Replace(stranger, strangerKey),
		"key mismatch": id.Replace(cert, renewedKey),
		"no node ID":   id.Replace(leafWithURIs(t, ca), renewedKey),
		"nil":          id.Replace(nil, renewedKey),
	} {
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := id.Replace(stranger, strangerKey); !errors.Is(err, ErrWrongNode) {
		t.Errorf("other node: %v", err)
	}
	if id.Certificate().Leaf != renewed || id.Node() != 3 {
		t.Error("a refused Replace changed the identity")
	}
}

func TestNeedsRenewal(t *testing.T) {
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	cert := &x509.Certificate{NotBefore: start, NotAfter: start.Add(300 * time.Hour)}
	for _, tc := range []struct {
		at   time.Duration // after NotBefore
		want bool
	}{
		{-time.Hour, false},
		{0, false},
		{199 * time.Hour, false},
		{200*time.Hour - time.Nanosecond, false},
		{200 * time.Hour, false}, // exactly a third left
		{200*time.Hour + time.Nanosecond, true},
		{299 * time.Hour, true},
		{300 * time.Hour, true},
		{400 * time.Hour, true}, // expired
	} {
		if got := NeedsRenewal(cert, start.Add(tc.at)); got != tc.want {
			t.Errorf("NeedsRenewal at +%v = %v, want %v", tc.at, got, tc.want)
		}
	}
	if !NeedsRenewal(&x509.Certificate{NotBefore: start, NotAfter: start}, start.Add(-time.Hour)) {
		t.Error("empty validity period does not need renewal")
	}

	// A default node certificate needs renewal after about eight months.
	ca, now := testCA(t), time.Now()
	node, _ := issue(t, ca, 1, now, 0)
	if NeedsRenewal(node, now.Add(8*30*24*time.Hour)) || !NeedsRenewal(node, now.Add(9*30*24*time.Hour)) {
		t.Error("default certificate renewal point is not between 8 and 9 months")
	}
}
