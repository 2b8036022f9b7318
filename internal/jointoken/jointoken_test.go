package jointoken

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/pki"
)

func caHash(t testing.TB) string {
	ca, err := pki.NewCA("test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return ca.PublicKeyHash()
}

func TestNewAndParse(t *testing.T) {
	h := caHash(t)
	seen := map[string]bool{}
	for range 100 {
		tok, err := New(h)
		if err != nil {
			t.Fatal(err)
		}
		s := tok.String()
		if len(s) != Len || strings.Count(s, ".") != 2 || strings.ContainsAny(s, " \t\n'\"$;&|<>()*?[]{}\\`!#~") {
			t.Fatalf("text form %q", s)
		}
		if !ValidID(tok.ID()) || tok.CAHash() != h {
			t.Fatalf("ID %q CAHash %q", tok.ID(), tok.CAHash())
		}
		back, err := Parse(s)
		if err != nil {
			t.Fatalf("Parse(String()): %v", err)
		}
		if back != tok {
			t.Fatalf("round trip changed the token")
		}
		if seen[s] {
			t.Fatal("the same token twice")
		}
		seen[s] = true
		sum := sha256.Sum256([]byte(s[IDLen+1 : IDLen+1+SecretLen]))
		if !bytes.Equal(tok.SecretHash(), sum[:]) {
			t.Fatal("SecretHash is not the SHA-256 of the secret")
		}
		if !tok.CheckSecret(tok.SecretHash()) || tok.CheckSecret(make([]byte, 32)) || tok.CheckSecret(nil) {
			t.Fatal("CheckSecret")
		}
	}
	// Upper-case input hashes are normalized.
	tok, err := New("sha256:" + strings.ToUpper(h[7:]))
	if err != nil || tok.CAHash() != h {
		t.Fatalf("upper-case CA hash: %v %q", err, tok.CAHash())
	}
	for _, bad := range []string{"", "abc", h[7:], "sha256:" + h[8:], "md5:" + h[7:]} {
		if _, err := New(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("New(%q) = %v, want ErrMalformed", bad, err)
		}
	}
	var zero Token
	if !zero.IsZero() || zero.String() != "" || zero.CheckSecret(zero.SecretHash()) {
		t.Fatal("zero Token")
	}
}

func TestParse(t *testing.T) {
	hex := strings.Repeat("0123456789abcdef", 4)
	good := "abc123.0123456789abcdef." + hex
	tok, err := Parse(good)
	if err != nil {
		t.Fatal(err)
	}
	if tok.ID() != "abc123" || tok.CAHash() != "sha256:"+hex || tok.String() != good {
		t.Fatalf("parsed %#v", tok)
	}
	secret := "0123456789abcdef"
	cases := map[string]string{
		"empty":            "",
		"short":            good[:Len-1],
		"long":             good + "0",
		"trailing newline": good[:Len-1] + "\n",
		"upper-case ID":    "ABC123.0123456789abcdef." + hex,
		"ID with a dash":   "abc-23.0123456789abcdef." + hex,
		"upper secret":     "abc123.0123456789ABCDEF." + hex,
		"secret symbol":    "abc123.0123456789abcde_." + hex,
		"bad separator":    "abc123:0123456789abcdef." + hex,
		"bad separator 2":  "abc123.0123456789abcdef:" + hex,
		"shifted":          "abc1234.123456789abcdef." + hex,
		"upper-case hash":  "abc123.0123456789abcdef." + strings.ToUpper(hex),
		"non-hex hash":     "abc123.0123456789abcdef." + hex[:63] + "g",
		"prefixed hash":    "abc123.0123456789abcdef.sha256:" + hex[7:],
		"multibyte":        "abc12\u00e90123456789abcdef." + hex[1:],
	}
	for name, s := range cases {
		_, err := Parse(s)
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Parse = %v, want ErrMalformed", name, err)
			continue
		}
		if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "ABCDEF") || strings.Contains(err.Error(), s) && s != "" {
			t.Errorf("%s: the error shows the token: %v", name, err)
		}
	}
}

func TestSecretNotPrinted(t *testing.T) {
	tok, err := New(caHash(t))
	if err != nil {
		t.Fatal(err)
	}
	secret := tok.String()[IDLen+1 : IDLen+1+SecretLen]
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("token created", "token", tok)
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("token created", "token", tok)
	for name, s := range map[string]string{
		"%#v":      fmt.Sprintf("%#v", tok),
		"Redacted": tok.Redacted(),
		"slog":     buf.String(),
	} {
		if strings.Contains(s, secret) {
			t.Errorf("%s shows the secret: %s", name, s)
		}
		if !strings.Contains(s, tok.ID()) {
			t.Errorf("%s lacks the ID: %s", name, s)
		}
	}
}

func FuzzParse(f *testing.F) {
	hex := strings.Repeat("0123456789abcdef", 4)
	f.Add("abc123.0123456789abcdef." + hex)
	f.Add("")
	f.Add("abc123.0123456789abcdef.")
	f.Add(strings.Repeat(".", Len))
	f.Add("ABC123.0123456789abcdef." + hex)
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrMalformed) || !tok.IsZero() {
				t.Fatalf("Parse(%q) = %#v, %v", s, tok, err)
			}
			return
		}
		if tok.String() != s {
			t.Fatalf("Parse(%q).String() = %q", s, tok.String())
		}
		if _, err := pki.ParsePublicKeyHash(tok.CAHash()); err != nil {
			t.Fatalf("CAHash %q: %v", tok.CAHash(), err)
		}
		if !ValidID(tok.ID()) || len(tok.SecretHash()) != sha256.Size {
			t.Fatalf("token %#v", tok)
		}
	})
}
