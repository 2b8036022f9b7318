package pki

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// ErrWrongNode is returned by Identity.Replace for a certificate issued to
// another node: a process is one node for its whole life.
var ErrWrongNode = errors.New("pki: certificate is for another node")

// Identity is a node's own certificate and private key as TLS presents them.
// The certificate can be replaced at run time (a renewed certificate, a new
// key) and every handshake that starts afterwards uses the new one; existing
// connections are unaffected. The node ID never changes. Safe for concurrent
// use.
type Identity struct {
	node  ids.NodeID
	chain [][]byte // DER intermediates sent after the leaf, usually none
	cur   atomic.Pointer[tls.Certificate]
}

// NewIdentity returns the identity of the node cert is issued to. chain holds
// the intermediates to send after cert; it is normally empty since the
// cluster CA signs node certificates directly. key must be cert's private
// key.
func NewIdentity(cert *x509.Certificate, chain []*x509.Certificate, key crypto.Signer) (*Identity, error) {
	if cert == nil {
		return nil, errors.New("pki: no certificate")
	}
	node, err := NodeID(cert)
	if err != nil {
		return nil, err
	}
	id := &Identity{node: node}
	for _, c := range chain {
		id.chain = append(id.chain, c.Raw)
	}
	tc, err := id.tlsCert(cert, key)
	if err != nil {
		return nil, err
	}
	id.cur.Store(tc)
	return id, nil
}

// Node returns the node ID of the identity.
func (id *Identity) Node() ids.NodeID { return id.node }

// Certificate returns the current certificate and key. The result is shared:
// callers must not modify it.
func (id *Identity) Certificate() *tls.Certificate { return id.cur.Load() }

// Replace makes cert and key the identity's certificate for the handshakes
// that start from now on. cert must be issued to the same node (ErrWrongNode
// otherwise) and key must match it; on error the identity is unchanged.
func (id *Identity) Replace(cert *x509.Certificate, key crypto.Signer) error {
	if cert == nil {
		return errors.New("pki: no certificate")
	}
	node, err := NodeID(cert)
	if err != nil {
		return err
	}
	if node != id.node {
		return fmt.Errorf("%w: identity is node %d, certificate is for node %d", ErrWrongNode, id.node, node)
	}
	tc, err := id.tlsCert(cert, key)
	if err != nil {
		return err
	}
	id.cur.Store(tc)
	return nil
}

func (id *Identity) tlsCert(cert *x509.Certificate, key crypto.Signer) (*tls.Certificate, error) {
	if err := matchKey(cert, key); err != nil {
		return nil, err
	}
	return &tls.Certificate{
		Certificate: append([][]byte{cert.Raw}, id.chain...),
		PrivateKey:  key,
		Leaf:        cert,
	}, nil
}

// matchKey checks that key is the private key of cert's public key.
func matchKey(cert *x509.Certificate, key crypto.Signer) error {
	if key == nil {
		return fmt.Errorf("%w: no private key", ErrKeyMismatch)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return ErrKeyMismatch
	}
	return nil
}

// NeedsRenewal reports whether cert should be renewed at now: true once less
// than a third of its validity period remains (and for a certificate that
// has expired or whose period is empty). A third of the default year is four
// months, time enough to renew through an outage of the CA holder.
func NeedsRenewal(cert *x509.Certificate, now time.Time) bool {
	total := cert.NotAfter.Sub(cert.NotBefore)
	if total <= 0 {
		return true
	}
	return cert.NotAfter.Sub(now) < total/3
}
