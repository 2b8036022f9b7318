package pki

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

const (
	uriScheme = "nodedb"
	uriPrefix = "nodedb://node/"
)

// ErrNoNodeID is returned (wrapped with detail) by NodeID when a certificate
// does not carry exactly one valid node URI.
var ErrNoNodeID = errors.New("pki: certificate carries no valid node ID")

// NodeURI returns the URI SAN that names node in its certificate:
// nodedb://node/<id>, with id in decimal. It is the only form NodeID accepts.
// (ids.NodeID's String method gives "n<id>", a log format, not this one.)
func NodeURI(node ids.NodeID) *url.URL {
	return &url.URL{Scheme: uriScheme, Host: "node", Path: "/" + strconv.FormatUint(uint64(node), 10)}
}

// NodeID returns the node ID a certificate is issued to. It does not verify
// the certificate: only call it on a certificate that Verifier.Verify (or a
// trusted local source) has vouched for.
//
// The certificate must carry exactly one URI SAN with the nodedb scheme, and
// that URI must be exactly nodedb://node/<id> with <id> in canonical decimal
// (digits only, no leading zeros) and >= 1. Anything else — no such URI, two
// of them (which one would be the identity?), node 0, "007", "-1", a query or
// a fragment — is ErrNoNodeID: an identity must have one spelling, or two
// certificates could name the same node differently. URIs of other schemes
// are ignored.
func NodeID(cert *x509.Certificate) (ids.NodeID, error) {
	if cert == nil {
		return 0, fmt.Errorf("%w: no certificate", ErrNoNodeID)
	}
	var found []string
	for _, u := range cert.URIs {
		if u.Scheme == uriScheme { // url.Parse lower-cases the scheme
			found = append(found, u.String())
		}
	}
	if len(found) != 1 {
		return 0, fmt.Errorf("%w: want exactly one %s<id> URI, found %d", ErrNoNodeID, uriPrefix, len(found))
	}
	node, ok := parseNodeURI(found[0])
	if !ok {
		return 0, fmt.Errorf("%w: %q is not %s<id> with <id> a canonical decimal >= 1", ErrNoNodeID, found[0], uriPrefix)
	}
	return node, nil
}

// parseNodeURI parses the canonical form written by NodeURI and nothing else.
func parseNodeURI(s string) (ids.NodeID, bool) {
	digits, ok := strings.CutPrefix(s, uriPrefix)
	if !ok || digits == "" || digits[0] == '0' || len(digits) > 20 {
		return 0, false
	}
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(digits, 10, 64)
	if err != nil { // out of range
		return 0, false
	}
	return ids.NodeID(n), true
}

// serverName is the TLS server name (SNI) and the certificate common name
// used for node. It is informational: identity is checked through the URI
// SAN, never through host name verification.
func serverName(node ids.NodeID) string {
	if node == 0 {
		return "nodedb-node"
	}
	return "nodedb-node-" + strconv.FormatUint(uint64(node), 10)
}
