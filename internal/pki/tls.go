package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// ServerTLS returns the configuration for accepting node connections: TLS 1.3
// only, the certificate from id (so Identity.Replace applies to the next
// handshake), and every client verified by v. alpn lists the accepted
// application protocols. onRefuse, when not nil, is called once for each
// refused client before the handshake fails (to count refusals by reason).
//
// The client certificate is requested rather than required so that a client
// without one reaches v and is refused, and counted, as ReasonNoCertificate
// instead of failing inside crypto/tls unseen; VerifyPeerCertificate refuses
// an empty chain, and session tickets are disabled so no handshake (no
// resumption, no 0-RTT) can skip that callback. Certificates that crypto/tls
// itself cannot parse fail before the callback and are not reported.
//
// The caller still has to compare the node ID the client claims in the
// transport's hello with PeerNode (CheckClaim). id and v must not be nil.
func ServerTLS(id *Identity, v *Verifier, alpn []string, onRefuse func(*RefusalError)) *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		ClientAuth:             tls.RequestClientCert,
		SessionTicketsDisabled: true,
		NextProtos:             append([]string(nil), alpn...),
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return id.Certificate(), nil
		},
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			_, _, err := v.Verify(rawCerts, time.Now())
			return report(err, onRefuse)
		},
	}
}

// ClientTLS returns the configuration for dialing node expect (0 when any
// node of the cluster will do, as when the dialer only knows an address):
// TLS 1.3 only, the client certificate from id, and the server verified by v
// and, unless expect is 0, required to be node expect. onRefuse, when not nil,
// is called once for each refused server before the handshake fails.
//
// InsecureSkipVerify only turns off crypto/tls's host name based verification,
// which does not apply to node identities; VerifyPeerCertificate does the full
// chain verification in its place, so no server is accepted unverified.
// Session tickets are disabled: every connection is fully verified. id and v
// must not be nil.
func ClientTLS(id *Identity, v *Verifier, alpn []string, expect ids.NodeID, onRefuse func(*RefusalError)) *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		ServerName:             serverName(expect),
		SessionTicketsDisabled: true,
		NextProtos:             append([]string(nil), alpn...),
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return id.Certificate(), nil
		},
		InsecureSkipVerify: true, // replaced, not skipped: see VerifyPeerCertificate
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			node, _, err := v.Verify(rawCerts, time.Now())
			if err == nil && expect != 0 && node != expect {
				err = refusal(ReasonNodeIDMismatch, fmt.Errorf("server certificate is for node %d, dialed node %d", node, expect))
			}
			return report(err, onRefuse)
		},
	}
}

func report(err error, onRefuse func(*RefusalError)) error {
	if err == nil || onRefuse == nil {
		return err
	}
	var re *RefusalError
	if errors.As(err, &re) {
		onRefuse(re)
	}
	return err
}
