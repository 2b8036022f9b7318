// Package pki is the cluster's public key infrastructure: the cluster CA, node
// certificates, the checks every node-to-node connection makes, the TLS
// configurations that apply them, and the files that hold keys on disk.
//
// # Identity
//
// A node is identified by its node ID, never by a host name or address:
// addresses change, node IDs are assigned once and never reused. A node
// certificate therefore binds a node ID, as exactly one URI SAN of the form
//
//	nodedb://node/<id>
//
// where <id> is the canonical decimal form of an ids.NodeID >= 1 (no sign, no
// leading zeros). DNS and IP SANs may be present but are informational: no
// check in this package or in the transport uses them.
//
// # Trust
//
// One CA per cluster (ECDSA P-256, created at bootstrap) signs every node
// certificate directly; its path length is zero, so no intermediate CA can
// exist under it. A peer is accepted when
//
//  1. its certificate chains to the cluster CA, is within its validity period
//     and allows server or client authentication (Verifier.Verify);
//  2. the certificate carries exactly one valid node URI (NodeID);
//  3. the node ID the peer claims in the transport's hello equals the node ID
//     in its certificate (CheckClaim), and, when dialing, equals the node the
//     dialer meant to reach (ClientTLS's expect).
//
// Every refusal is a *RefusalError with a Reason suited to a metric label.
//
// # TLS
//
// ServerTLS and ClientTLS build configurations for mutual TLS 1.3 only, with
// session tickets (and so resumption and 0-RTT) disabled: every connection
// runs the full verification. Host name verification is not used; the
// standard verification is replaced by Verifier.Verify, never skipped.
//
// # Keys on disk
//
// WriteCA, WriteNode and WriteCACert write files atomically, private keys with
// mode 0600 in a directory with mode 0700, and never replace an existing key;
// LoadCA and LoadNode refuse a private key that group or others may read.
package pki
