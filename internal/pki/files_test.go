package pki

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func mode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// noTempFiles checks that no temporary file was left behind in dir.
func noTempFiles(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

func TestCAFiles(t *testing.T) {
	ca := testCA(t)
	dir := filepath.Join(t.TempDir(), "data", "tls")
	if err := WriteCA(dir, ca); err != nil {
		t.Fatal(err)
	}
	if m := mode(t, dir); m != 0o700 {
		t.Errorf("dir mode %04o, want 0700", m)
	}
	if m := mode(t, filepath.Join(dir, CAKeyFile)); m != 0o600 {
		t.Errorf("ca.key mode %04o, want 0600", m)
	}
	if m := mode(t, filepath.Join(dir, CACertFile)); m != 0o644 {
		t.Errorf("ca.crt mode %04o, want 0644", m)
	}
	keyPEM, _ := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if b, _ := pem.Decode(keyPEM); b == nil || b.Type != "PRIVATE KEY" {
		t.Errorf("ca.key is not PKCS#8 PEM")
	}
	noTempFiles(t, dir)

	got, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Cert.Equal(ca.Cert) || got.Key == nil || got.PublicKeyHash() != ca.PublicKeyHash() {
		t.Error("LoadCA does not return the written CA")
	}
	if _, err := got.IssueNode(newPub(t), 1, nil, time.Now(), 0); err != nil {
		t.Errorf("loaded CA cannot issue: %v", err)
	}

	// Never replaced, whether by another CA or the same one.
	other, _ := NewCA("test", time.Now())
	for _, c := range []*CA{other, ca} {
		if err := WriteCA(dir, c); !errors.Is(err, fs.ErrExist) {
			t.Errorf("WriteCA over an existing CA: %v", err)
		}
	}
	if again, _ := LoadCA(dir); again == nil || !again.Cert.Equal(ca.Cert) {
		t.Error("a refused WriteCA changed the files")
	}

	if err := WriteCA(t.TempDir(), &CA{Cert: ca.Cert}); !errors.Is(err, ErrNoCAKey) {
		t.Errorf("WriteCA without key: %v", err)
	}
	if err := WriteCA(t.TempDir(), &CA{Cert: ca.Cert, Key: other.Key}); !errors.Is(err, ErrKeyMismatch) {
		t.Errorf("WriteCA with another key: %v", err)
	}

	// A key readable by others is refused.
	if err := os.Chmod(filepath.Join(dir, CAKeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(dir); err == nil || !strings.Contains(err.Error(), "group or others") {
		t.Errorf("LoadCA with a 0644 key: %v", err)
	}
	// Without the key, the CA is public only.
	if err := os.Remove(filepath.Join(dir, CAKeyFile)); err != nil {
		t.Fatal(err)
	}
	pub, err := LoadCA(dir)
	if err != nil || pub.Key != nil || !pub.Cert.Equal(ca.Cert) {
		t.Fatalf("LoadCA without key: %v", err)
	}
	if _, err := pub.IssueNode(newPub(t), 1, nil, time.Now(), 0); !errors.Is(err, ErrNoCAKey) {
		t.Errorf("public-only CA issued: %v", err)
	}
}

func TestCACertFile(t *testing.T) {
	ca := testCA(t)
	other, _ := NewCA("test", time.Now())
	dir := filepath.Join(t.TempDir(), "tls")
	if err := WriteCACert(dir, ca.Cert); err != nil {
		t.Fatal(err)
	}
	if err := WriteCACert(dir, ca.Cert); err != nil {
		t.Errorf("writing the same CA certificate again: %v", err)
	}
	if err := WriteCACert(dir, other.Cert); !errors.Is(err, fs.ErrExist) {
		t.Errorf("replacing the CA certificate: %v", err)
	}
	node, _ := issue(t, ca, 1, time.Now(), 0)
	if err := WriteCACert(t.TempDir(), node); err == nil {
		t.Error("a node certificate written as CA certificate")
	}
	got, err := LoadCA(dir)
	if err != nil || got.Key != nil || !got.Cert.Equal(ca.Cert) {
		t.Errorf("LoadCA: %v", err)
	}
	if err := WriteCA(dir, ca); !errors.Is(err, fs.ErrExist) {
		t.Errorf("WriteCA over a lone ca.crt: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, CAKeyFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Error("a refused WriteCA wrote ca.key")
	}
	noTempFiles(t, dir)
}

func TestNodeFiles(t *testing.T) {
	ca, now := testCA(t), time.Now()
	cert, key := issue(t, ca, 4, now, 0)
	dir := filepath.Join(t.TempDir(), "tls")
	if err := WriteNode(dir, cert, key); err != nil {
		t.Fatal(err)
	}
	if m := mode(t, dir); m != 0o700 {
		t.Errorf("dir mode %04o", m)
	}
	if m := mode(t, filepath.Join(dir, NodeKeyFile)); m != 0o600 {
		t.Errorf("node.key mode %04o", m)
	}
	if m := mode(t, filepath.Join(dir, NodeCertFile)); m != 0o644 {
		t.Errorf("node.crt mode %04o", m)
	}
	gotCert, gotKey, err := LoadNode(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !gotCert.Equal(cert) || matchKey(cert, gotKey) != nil {
		t.Error("LoadNode does not return what was written")
	}

	// Another key is never written over node.key.
	other, otherKey := issue(t, ca, 4, now, 0)
	if err := WriteNode(dir, other, otherKey); !errors.Is(err, fs.ErrExist) {
		t.Errorf("WriteNode with another key: %v", err)
	}
	if c, _, _ := LoadNode(dir); c == nil || !c.Equal(cert) {
		t.Error("a refused WriteNode changed the files")
	}

	// A renewed certificate for the same key replaces node.crt.
	renewed, err := ca.IssueNode(key.Public(), 4, nil, now, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteNode(dir, renewed, key); err != nil {
		t.Fatalf("renewal: %v", err)
	}
	if c, _, err := LoadNode(dir); err != nil || !c.Equal(renewed) {
		t.Errorf("after renewal: %v", err)
	}
	noTempFiles(t, dir)

	if err := WriteNode(t.TempDir(), cert, otherKey); !errors.Is(err, ErrKeyMismatch) {
		t.Errorf("mismatched key written: %v", err)
	}
	if err := WriteNode(t.TempDir(), ca.Cert, ca.Key); !errors.Is(err, ErrNoNodeID) {
		t.Errorf("certificate without node ID written: %v", err)
	}

	for _, m := range []fs.FileMode{0o640, 0o604, 0o666} {
		if err := os.Chmod(filepath.Join(dir, NodeKeyFile), m); err != nil {
			t.Fatal(err)
		}
		if _, _, err := LoadNode(dir); err == nil {
			t.Errorf("node.key with mode %04o loaded", m)
		}
		if err := WriteNode(dir, renewed, key); err == nil {
			t.Errorf("WriteNode over a key with mode %04o", m)
		}
	}
	if err := os.Chmod(filepath.Join(dir, NodeKeyFile), 0o400); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadNode(dir); err != nil {
		t.Errorf("node.key with mode 0400: %v", err)
	}
}

func TestLoadMalformedFiles(t *testing.T) {
	ca, now := testCA(t), time.Now()
	cert, key := issue(t, ca, 4, now, 0)
	certPEM := encodeCert(cert)
	sec1, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	sec1PEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})
	_, otherKey := issue(t, ca, 4, now, 0)
	otherPEM, _ := encodeKey(otherKey)

	for _, tc := range []struct {
		name      string
		crt, key  []byte
		wantError bool
	}{
		{name: "SEC 1 key", crt: certPEM, key: sec1PEM},
		{name: "trailing newlines", crt: append(append([]byte(nil), certPEM...), "\n\n"...), key: sec1PEM},
		{name: "key of another certificate", crt: certPEM, key: otherPEM, wantError: true},
		{name: "oversized certificate file", crt: append(bytes.Repeat([]byte("\n"), MaxPEMFileSize), certPEM...), key: sec1PEM, wantError: true},
		{name: "not PEM", crt: []byte("hello"), key: sec1PEM, wantError: true},
		{name: "two certificates", crt: append(append([]byte(nil), certPEM...), certPEM...), key: sec1PEM, wantError: true},
		{name: "key in the certificate file", crt: sec1PEM, key: sec1PEM, wantError: true},
		{name: "certificate in the key file", crt: certPEM, key: certPEM, wantError: true},
		{name: "encrypted key", crt: certPEM, key: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: sec1}), wantError: true},
		{name: "corrupt key", crt: certPEM, key: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}), wantError: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, NodeCertFile), tc.crt, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, NodeKeyFile), tc.key, 0o600); err != nil {
				t.Fatal(err)
			}
			_, _, err := LoadNode(dir)
			if (err != nil) != tc.wantError {
				t.Errorf("LoadNode: %v", err)
			}
		})
	}

	if _, _, err := LoadNode(t.TempDir()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadNode of an empty dir: %v", err)
	}
	if _, err := LoadCA(t.TempDir()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadCA of an empty dir: %v", err)
	}
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	if err := WriteNode(file, cert, key); err == nil {
		t.Error("WriteNode into a file")
	}
}

func newPub(t *testing.T) crypto.PublicKey {
	t.Helper()
	k, err := NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.Public()
}
