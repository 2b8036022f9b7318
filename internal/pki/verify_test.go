package pki

import (
	"bytes"
	"crypto/x509"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

func TestVerify(t *testing.T) {
	ca := testCA(t)
	now := time.Now()
	v := NewVerifier(ca.Cert)

	// Another CA with the same name: only the key tells them apart.
	other, err := NewCA("test", now)
	if err != nil {
		t.Fatal(err)
	}
	good, _ := issue(t, ca, 7, now, 0)
	foreign, _ := issue(t, other, 7, now, 0)
	expired, _ := issue(t, ca, 7, now.Add(-2*year), 0)
	notYet, _ := issue(t, ca, 7, now.Add(2*time.Hour), 0)
	key, _ := NewNodeKey()
	codeSigning := signRaw(t, ca, &x509.Certificate{
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		URIs:        []*url.URL{NodeURI(7)},
	}, key.Public())

	raw := func(certs ...*x509.Certificate) [][]byte {
		var out [][]byte
		for _, c := range certs {
			out = append(out, c.Raw)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		raw  [][]byte
		want Reason // "" for accepted
		node ids.NodeID
	}{
		{name: "good", raw: raw(good), node: 7},
		{name: "good with a useless extra certificate", raw: raw(good, ca.Cert), node: 7},
		{name: "max uint64 node", raw: raw(leafWithURIs(t, ca, "nodedb://node/18446744073709551615")), node: ids.NodeID(1<<64 - 1)},
		{name: "other schemes ignored", raw: raw(leafWithURIs(t, ca, "spiffe://x/y", "nodedb://node/3")), node: 3},
		{name: "no certificate", raw: nil, want: ReasonNoCertificate},
		{name: "other CA", raw: raw(foreign), want: ReasonUnknownAuthority},
		{name: "other CA's certificate as leaf", raw: raw(other.Cert), want: ReasonUnknownAuthority},
		{name: "expired", raw: raw(expired), want: ReasonExpired},
		{name: "not yet valid", raw: raw(notYet), want: ReasonExpired},
		{name: "code signing only", raw: raw(codeSigning), want: ReasonInvalidChain},
		{name: "CA certificate as leaf", raw: raw(ca.Cert), want: ReasonNoNodeID},
		{name: "no node URI", raw: raw(leafWithURIs(t, ca)), want: ReasonNoNodeID},
		{name: "only other schemes", raw: raw(leafWithURIs(t, ca, "spiffe://node/7")), want: ReasonNoNodeID},
		{name: "two node URIs", raw: raw(leafWithURIs(t, ca, "nodedb://node/7", "nodedb://node/8")), want: ReasonNoNodeID},
		{name: "same node URI twice", raw: raw(leafWithURIs(t, ca, "nodedb://node/7", "nodedb://node/7")), want: ReasonNoNodeID},
		{name: "node 0", raw: raw(leafWithURIs(t, ca, "nodedb://node/0")), want: ReasonNoNodeID},
		{name: "leading zeros", raw: raw(leafWithURIs(t, ca, "nodedb://node/007")), want: ReasonNoNodeID},
		{name: "negative", raw: raw(leafWithURIs(t, ca, "nodedb://node/-1")), want: ReasonNoNodeID},
		{name: "plus sign", raw: raw(leafWithURIs(t, ca, "nodedb://node/+7")), want: ReasonNoNodeID},
		{name: "overflow", raw: raw(leafWithURIs(t, ca, "nodedb://node/18446744073709551616")), want: ReasonNoNodeID},
		{name: "query", raw: raw(leafWithURIs(t, ca, "nodedb://node/7?x=1")), want: ReasonNoNodeID},
		{name: "fragment", raw: raw(leafWithURIs(t, ca, "nodedb://node/7#x")), want: ReasonNoNodeID},
		{name: "trailing slash", raw: raw(leafWithURIs(t, ca, "nodedb://node/7/")), want: ReasonNoNodeID},
		{name: "other host", raw: raw(leafWithURIs(t, ca, "nodedb://NODE/7")), want: ReasonNoNodeID},
		{name: "user info", raw: raw(leafWithURIs(t, ca, "nodedb://u@node/7")), want: ReasonNoNodeID},
		{name: "escaped digit", raw: raw(leafWithURIs(t, ca, "nodedb://node/%37")), want: ReasonNoNodeID},
		{name: "opaque", raw: raw(leafWithURIs(t, ca, "nodedb:node/7")), want: ReasonNoNodeID},
		{name: "garbage", raw: [][]byte{[]byte("not a certificate")}, want: ReasonMalformed},
		{name: "trailing bytes", raw: [][]byte{append(append([]byte(nil), good.Raw...), 0)}, want: ReasonMalformed},
		{name: "too many certificates", raw: raw(good, ca.Cert, ca.Cert, ca.Cert, ca.Cert), want: ReasonMalformed},
		{name: "oversized certificate", raw: [][]byte{bytes.Repeat([]byte{0x30}, MaxCertSize+1)}, want: ReasonMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node, leaf, err := v.Verify(tc.raw, now)
			if tc.want == "" {
				if err != nil || node != tc.node || leaf == nil {
					t.Fatalf("Verify = %d, %v; want %d, nil", node, err, tc.node)
				}
				return
			}
			var re *RefusalError
			if !errors.As(err, &re) {
				t.Fatalf("err = %v (%T), want a *RefusalError", err, err)
			}
			if re.Reason != tc.want || node != 0 || leaf != nil {
				t.Fatalf("Verify = %d, %v, reason %q; want reason %q", node, err, re.Reason, tc.want)
			}
			if !errors.Is(err, tc.want.sentinel()) {
				t.Errorf("errors.Is(err, %v) is false", tc.want.sentinel())
			}
			for _, r := range Reasons() {
				if r != tc.want && errors.Is(err, r.sentinel()) {
					t.Errorf("errors.Is(err, %v) is true", r.sentinel())
				}
			}
		})
	}
}

func TestVerifierTrust(t *testing.T) {
	ca, now := testCA(t), time.Now()
	next, _ := NewCA("test", now)
	cert, _ := issue(t, ca, 1, now, 0)
	if _, _, err := NewVerifier().Verify([][]byte{cert.Raw}, now); !errors.Is(err, ErrUnknownAuthority) {
		t.Errorf("empty verifier: %v", err)
	}
	if n, _, err := NewVerifier(next.Cert, ca.Cert).Verify([][]byte{cert.Raw}, now); err != nil || n != 1 {
		t.Errorf("two CAs: %d, %v", n, err)
	}
}

func TestRefusalErrorCause(t *testing.T) {
	ca, now := testCA(t), time.Now()
	expired, _ := issue(t, ca, 1, now.Add(-2*year), 0)
	_, _, err := NewVerifier(ca.Cert).Verify([][]byte{expired.Raw}, now)
	if !errors.Is(err, ErrExpired) {
		t.Fatalf("%v is not ErrExpired", err)
	}
	var inv x509.CertificateInvalidError
	if !errors.As(err, &inv) || inv.Reason != x509.Expired {
		t.Errorf("x509 cause lost: %v", err)
	}
	if !strings.Contains(err.Error(), "(expired)") {
		t.Errorf("message %q lacks the reason", err)
	}
	seen := map[Reason]bool{}
	for _, r := range Reasons() {
		if seen[r] || r.sentinel() == nil {
			t.Errorf("reason %q duplicated or without sentinel", r)
		}
		seen[r] = true
	}
}

func TestCheckClaim(t *testing.T) {
	for _, tc := range []struct {
		cert, claimed ids.NodeID
		ok            bool
	}{
		{1, 1, true}, {5, 5, true}, {1, 2, false}, {2, 1, false}, {1, 0, false}, {0, 0, false},
	} {
		err := CheckClaim(tc.cert, tc.claimed)
		if (err == nil) != tc.ok {
			t.Errorf("CheckClaim(%d, %d) = %v", tc.cert, tc.claimed, err)
		}
		var re *RefusalError
		if err != nil && (!errors.As(err, &re) || re.Reason != ReasonNodeIDMismatch || !errors.Is(err, ErrNodeIDMismatch)) {
			t.Errorf("CheckClaim(%d, %d) = %v, want a node_id_mismatch refusal", tc.cert, tc.claimed, err)
		}
	}
}

func TestNodeURI(t *testing.T) {
	for _, n := range []ids.NodeID{1, 9, 10, 1234567890, 1<<64 - 1} {
		u := NodeURI(n)
		got, ok := parseNodeURI(u.String())
		if !ok || got != n {
			t.Errorf("round trip of %v: %d, %v", u, got, ok)
		}
		back, err := url.Parse(u.String())
		if err != nil || back.String() != u.String() {
			t.Errorf("%v does not survive url.Parse: %v", u, back)
		}
	}
	if NodeURI(12).String() != "nodedb://node/12" {
		t.Errorf("NodeURI(12) = %v", NodeURI(12))
	}
	if _, err := NodeID(nil); !errors.Is(err, ErrNoNodeID) {
		t.Errorf("NodeID(nil) = %v", err)
	}
}

// FuzzNodeID checks that the node URI parser accepts exactly the canonical
// spellings NodeURI produces, whatever url.Parse makes of the input.
func FuzzNodeID(f *testing.F) {
	for _, s := range []string{
		"nodedb://node/1", "nodedb://node/0", "nodedb://node/007", "nodedb://node/-1",
		"nodedb://node/18446744073709551615", "nodedb://node/18446744073709551616",
		"NODEDB://node/5", "nodedb://node/5?", "nodedb://node/5#", "nodedb://node/%35",
		"nodedb://node//5", "nodedb://node:1/5", "nodedb:/node/5", "nodedb://node/5 ",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := url.Parse(s)
		if err != nil {
			return
		}
		n, ok := parseNodeURI(u.String())
		if !ok {
			return
		}
		if n == 0 || NodeURI(n).String() != u.String() {
			t.Fatalf("%q (url %q) parsed as node %d, canonical form %q", s, u, n, NodeURI(n))
		}
	})
}
