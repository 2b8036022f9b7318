package pki

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
)

// File names inside a TLS directory (for a node, <data-dir>/tls). ca.key
// exists only where the CA private key lives.
const (
	CACertFile   = "ca.crt"
	CAKeyFile    = "ca.key"
	NodeCertFile = "node.crt"
	NodeKeyFile  = "node.key"
)

// MaxPEMFileSize bounds every certificate or key file read; the size is
// checked before the file is read into memory.
const MaxPEMFileSize = 64 << 10

const (
	dirMode  fs.FileMode = 0o700
	keyMode  fs.FileMode = 0o600
	certMode fs.FileMode = 0o644
)

// WriteCA writes ca.crt (0644) and ca.key (0600) into dir, creating dir with
// mode 0700 if needed. It refuses, with an error wrapping fs.ErrExist and
// before writing anything, if either file exists: a CA key is never replaced
// by accident. The key is written first, so a crash in between leaves a key
// without a certificate, which LoadCA refuses loudly, rather than a
// certificate that looks like a CA held elsewhere.
func WriteCA(dir string, ca *CA) error {
	if ca == nil || ca.Cert == nil {
		return errors.New("pki: no CA certificate")
	}
	if ca.Key == nil {
		return ErrNoCAKey
	}
	if err := matchKey(ca.Cert, ca.Key); err != nil {
		return err
	}
	keyPEM, err := encodeKey(ca.Key)
	if err != nil {
		return err
	}
	if err := ensureDir(dir); err != nil {
		return err
	}
	for _, name := range []string{CAKeyFile, CACertFile} {
		if err := notExists(filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	if err := writeFile(dir, CAKeyFile, keyPEM, keyMode, false); err != nil {
		return err
	}
	return writeFile(dir, CACertFile, encodeCert(ca.Cert), certMode, false)
}

// WriteCACert writes the CA certificate alone (ca.crt), for nodes that trust
// the CA without holding its key. Writing the same certificate again is a
// no-op; a different one is refused with an error wrapping fs.ErrExist.
func WriteCACert(dir string, cert *x509.Certificate) error {
	if cert == nil || !cert.IsCA {
		return errors.New("pki: not a CA certificate")
	}
	if err := ensureDir(dir); err != nil {
		return err
	}
	path := filepath.Join(dir, CACertFile)
	old, err := readCert(path)
	switch {
	case err == nil && bytes.Equal(old.Raw, cert.Raw):
		return nil
	case err == nil:
		return fmt.Errorf("pki: %s holds another CA certificate: %w", path, fs.ErrExist)
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	return writeFile(dir, CACertFile, encodeCert(cert), certMode, false)
}

// LoadCA reads ca.crt and, when present, ca.key from dir. Without ca.key the
// CA's Key is nil (the node can verify, not issue). A key readable by group
// or others is refused, as is a key that does not match the certificate.
func LoadCA(dir string) (*CA, error) {
	cert, err := readCert(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, err
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("pki: %s is not a CA certificate", filepath.Join(dir, CACertFile))
	}
	key, err := readKey(filepath.Join(dir, CAKeyFile))
	if errors.Is(err, fs.ErrNotExist) {
		return &CA{Cert: cert}, nil
	}
	if err != nil {
		return nil, err
	}
	if err := matchKey(cert, key); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, CAKeyFile), err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// WriteNode writes a node's certificate (node.crt, 0644) and key (node.key,
// 0600) into dir, creating dir with mode 0700 if needed. cert must carry a
// node ID and match key.
//
// An existing node.key is never replaced: if it holds a different key the
// call fails with an error wrapping fs.ErrExist. If it holds the same key,
// only node.crt is replaced (atomically): that is how a renewed certificate
// for the same key is stored.
func WriteNode(dir string, cert *x509.Certificate, key crypto.Signer) error {
	if cert == nil {
		return errors.New("pki: no certificate")
	}
	if _, err := NodeID(cert); err != nil {
		return err
	}
	if err := matchKey(cert, key); err != nil {
		return err
	}
	if err := ensureDir(dir); err != nil {
		return err
	}
	keyPath := filepath.Join(dir, NodeKeyFile)
	old, err := readKey(keyPath)
	switch {
	case err == nil:
		if matchKey(cert, old) != nil {
			return fmt.Errorf("pki: %s holds another key: %w", keyPath, fs.ErrExist)
		}
	case errors.Is(err, fs.ErrNotExist):
		keyPEM, err := encodeKey(key)
		if err != nil {
			return err
		}
		if err := writeFile(dir, NodeKeyFile, keyPEM, keyMode, false); err != nil {
			return err
		}
	default:
		return err
	}
	return writeFile(dir, NodeCertFile, encodeCert(cert), certMode, true)
}

// LoadNode reads node.crt and node.key from dir. The key must not be
// readable by group or others and must match the certificate.
func LoadNode(dir string) (*x509.Certificate, crypto.Signer, error) {
	cert, err := readCert(filepath.Join(dir, NodeCertFile))
	if err != nil {
		return nil, nil, err
	}
	key, err := readKey(filepath.Join(dir, NodeKeyFile))
	if err != nil {
		return nil, nil, err
	}
	if err := matchKey(cert, key); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", filepath.Join(dir, NodeKeyFile), err)
	}
	return cert, key, nil
}

func encodeCert(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

// encodeKey writes PKCS#8, the format every tool reads for every key type.
func encodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func readCert(path string) (*x509.Certificate, error) {
	block, err := readPEM(path, false)
	if err != nil {
		return nil, err
	}
	if block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("pki: %s: PEM type %q, want CERTIFICATE", path, block.Type)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", path, err)
	}
	return cert, nil
}

func readKey(path string) (crypto.Signer, error) {
	block, err := readPEM(path, true)
	if err != nil {
		return nil, err
	}
	var key any
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("pki: %s: PEM type %q, want PRIVATE KEY or EC PRIVATE KEY", path, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", path, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("pki: %s: %T cannot sign", path, key)
	}
	return signer, nil
}

// readPEM reads the single PEM block of a file, bounding its size first. For
// a private key it refuses a file that group or others can access, as ssh
// does: such a key may already be copied, and the operator must know.
func readPEM(path string, private bool) (*pem.Block, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err) // keeps fs.ErrNotExist visible
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("pki: %s is not a regular file", path)
	}
	if private && runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("pki: private key %s has mode %04o and is accessible by group or others; refusing it (chmod 600 %s)",
			path, fi.Mode().Perm(), path)
	}
	if fi.Size() > MaxPEMFileSize {
		return nil, fmt.Errorf("pki: %s is %d bytes, at most %d", path, fi.Size(), MaxPEMFileSize)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxPEMFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	if len(data) > MaxPEMFileSize {
		return nil, fmt.Errorf("pki: %s is over %d bytes", path, MaxPEMFileSize)
	}
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("pki: %s: no PEM block", path)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("pki: %s: data after the first PEM block", path)
	}
	if len(block.Headers) != 0 {
		return nil, fmt.Errorf("pki: %s: PEM headers (encrypted keys) are not supported", path)
	}
	return block, nil
}

// ensureDir creates dir with mode 0700 if it does not exist. An existing
// directory is left as it is.
func ensureDir(dir string) error {
	fi, err := os.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("pki: %s is not a directory", dir)
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("pki: %w", err)
	}
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if err := os.Chmod(dir, dirMode); err != nil { // whatever the umask
		return fmt.Errorf("pki: %w", err)
	}
	return syncDir(filepath.Dir(dir))
}

func notExists(path string) error {
	_, err := os.Lstat(path)
	if err == nil {
		return fmt.Errorf("pki: %s already exists, refusing to replace it: %w", path, fs.ErrExist)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("pki: %w", err)
	}
	return nil
}

// writeFile writes dir/name atomically: a temporary file in dir is written,
// given its mode, synced, then put in place and dir synced, so a crash leaves
// either the old state or the complete new file, never a partial one. With
// replace false an existing file is never replaced: the temporary file is
// hard-linked into place, which fails if the name exists (on a file system
// without hard links, an existence check then a rename stands in).
func writeFile(dir, name string, data []byte, mode fs.FileMode, replace bool) (err error) {
	f, err := os.CreateTemp(dir, "."+name+".tmp*")
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if tmp != "" {
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("pki: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("pki: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("pki: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	path := filepath.Join(dir, name)
	if replace {
		if err := os.Rename(tmp, path); err != nil {
			return fmt.Errorf("pki: %w", err)
		}
		tmp = ""
	} else if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("pki: %s already exists, refusing to replace it: %w", path, fs.ErrExist)
		}
		if err := notExists(path); err != nil {
			return err
		}
		if err := os.Rename(tmp, path); err != nil {
			return fmt.Errorf("pki: %w", err)
		}
		tmp = ""
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && runtime.GOOS != "windows" {
		return fmt.Errorf("pki: sync %s: %w", dir, err)
	}
	return nil
}
