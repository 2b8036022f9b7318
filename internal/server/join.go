package server

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/nodedb/nodedb-cluster/internal/failpoint"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/jointoken"
	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"github.com/nodedb/nodedb-cluster/internal/pki"
	"github.com/nodedb/nodedb-cluster/internal/transport"
	"github.com/nodedb/nodedb-cluster/internal/transport/quicnet"
	"github.com/nodedb/nodedb-cluster/internal/transport/tcpnet"
)

// JoinError is a join the cluster refused; Code is the metadata applier's
// error code (for instance token_consumed, token_expired).
type JoinError struct {
	Code    string
	Message string
}

func (e *JoinError) Error() string { return fmt.Sprintf("join refused (%s): %s", e.Code, e.Message) }

// joinKeyFile holds the joiner's private key from before its first request
// until the node exists: a retried join presents the same key, so the
// cluster recognizes it and hands out the same node ID.
const joinKeyFile = "join.key"

// join enters an existing cluster with a token:
//
//  1. the token names the cluster's CA by the hash of its public key; the
//     connection is verified against it before anything secret is sent;
//  2. the request carries the token's secret and a CSR: the private key
//     never leaves this node;
//  3. a node that is not the metadata leader redirects to it;
//  4. the leader commits BeginJoin (token in flight, bound to this key,
//     node ID allocated) and signs the CSR; a retry with the same key gets
//     the same node ID;
//  5. this node writes its certificate and identity, starts, and asks to be
//     activated (token consumed); placement then gives it replicas.
func (s *Server) join(ctx context.Context) error {
	cfg := s.cfg
	if cfg.Listen == "" {
		return errors.New("--listen is required to create a node")
	}
	tok, err := jointoken.Parse(cfg.Token)
	if err != nil {
		return fmt.Errorf("--token: %w", err)
	}
	key, err := loadOrCreateJoinKey(cfg.Dir)
	if err != nil {
		return err
	}
	csr, err := pki.NewCSR(key, 0, hostsOf(s.advertise()))
	if err != nil {
		return err
	}
	req, err := proto.Marshal(&metapb.JoinRequest{
		TokenId:  tok.ID(),
		Secret:   tok.Secret(),
		CsrDer:   csr,
		PeerAddr: s.advertise(),
		ApiAddr:  cfg.API,
		Zone:     cfg.Zone,
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.JoinTimeout)
	defer cancel()
	dial := quicnet.Join
	if s.cfg.Transport == TransportTCP {
		dial = tcpnet.Join
	}
	resp, caCert, err := requestJoin(ctx, dial, s.cfg.Transport, cfg.Join, tok.CAHash(), req, s.cfg.Logger)
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w (this node joins over %s: does the cluster use the same --transport?)", err, s.cfg.Transport)
	}
	if err != nil {
		return err
	}
	cert, err := checkJoinAnswer(resp, caCert, key)
	if err != nil {
		return err
	}
	dir := TLSDir(cfg.Dir)
	if err := pki.WriteCACert(dir, caCert); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if err := writeNodeOnce(dir, cert, key); err != nil {
		return err
	}
	s.id, s.clusterID, s.vshards = ids.NodeID(resp.NodeId), resp.ClusterId, int(resp.VshardCount)
	s.log = cfg.Logger.With("node", resp.NodeId)
	id, verifier, err := loadIdentity(dir, s.id, s.log)
	if err != nil {
		return err
	}
	peers := map[ids.NodeID]string{}
	for n, a := range resp.Peers {
		if ids.NodeID(n) != s.id {
			peers[ids.NodeID(n)] = a
		}
	}
	s.joinPeers = peers
	if err := s.open(id, verifier, peers); err != nil {
		return err
	}
	if err := writeStored(cfg.Dir, s.stored()); err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(cfg.Dir, joinKeyFile))
	s.log.Info("joined the cluster", "cluster", s.clusterID, "via", cfg.Join)
	return nil
}

// joinDialer sends one join request over a transport (quicnet.Join,
// tcpnet.Join).
type joinDialer func(ctx context.Context, addr, caHash string, req []byte) ([]byte, *x509.Certificate, error)

// requestJoin sends the join request, following redirects to the metadata
// leader and retrying while the cluster cannot answer or the node is busy
// with other joins, until ctx ends. A request the node refused as such
// (malformed, too large) fails at once.
func requestJoin(ctx context.Context, dial joinDialer, transportName, addr, caHash string, req []byte, log *slog.Logger) (*metapb.JoinResponse, *x509.Certificate, error) {
	backoff := 100 * time.Millisecond
	var last error
	warned, warnedBusy := false, false
	for hops := 0; ; {
		b, caCert, err := dial(ctx, addr, caHash, req)
		if errors.Is(err, transport.ErrCAMismatch) {
			return nil, nil, fmt.Errorf("%s is not the cluster the token names: %w", addr, err)
		}
		var refused *transport.Refusal
		if errors.As(err, &refused) && refused.Reason != transport.RefusalBusy {
			// The node read our request and refused it (malformed, too
			// large): sending it again changes nothing.
			return nil, nil, fmt.Errorf("join via %s: %w", addr, err)
		}
		if refused != nil && !warnedBusy {
			warnedBusy = true
			log.Info("the node to join is serving as many joins as it allows; retrying", "addr", addr)
		}
		if err != nil && !warned && refused == nil { // the dial failed; no answer
			// Said once, early: a node on the other transport never
			// answers, and the join would otherwise be silent until its
			// timeout.
			warned = true
			log.Warn("no answer yet from the node to join; retrying until --join-timeout (is the cluster on the same --transport?)", "addr", addr, "transport", transportName, "err", err)
		}
		if err == nil {
			resp := &metapb.JoinResponse{}
			if err := proto.Unmarshal(b, resp); err != nil {
				return nil, nil, fmt.Errorf("join answer from %s: %w", addr, err)
			}
			switch resp.Code {
			case joinOK:
				return resp, caCert, nil
			case joinRedirect:
				if hops++; hops > 8 || resp.RedirectAddr == "" {
					err = fmt.Errorf("redirected too often (last to %q)", resp.RedirectAddr)
					break
				}
				log.Info("join redirected to the metadata leader", "from", addr, "to", resp.RedirectAddr)
				addr = resp.RedirectAddr
				continue
			case joinUnavailable:
				err = fmt.Errorf("%s: %s", resp.Code, resp.Message)
			default:
				return nil, nil, &JoinError{Code: resp.Code, Message: resp.Message}
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("join via %s: %w (last error: %v)", addr, ctx.Err(), last)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// checkJoinAnswer verifies the certificate the cluster issued: for our key,
// for the node ID it announced, signed by the CA we verified.
func checkJoinAnswer(resp *metapb.JoinResponse, caCert *x509.Certificate, key crypto.Signer) (*x509.Certificate, error) {
	cert, err := x509.ParseCertificate(resp.CertDer)
	if err != nil {
		return nil, fmt.Errorf("join answer: certificate: %w", err)
	}
	if err := cert.CheckSignatureFrom(caCert); err != nil {
		return nil, fmt.Errorf("join answer: certificate not signed by the cluster CA: %w", err)
	}
	if got, err := pki.NodeID(cert); err != nil || uint64(got) != resp.NodeId || resp.NodeId == 0 {
		return nil, fmt.Errorf("join answer: certificate for node %v (%v), answer says %d", got, err, resp.NodeId)
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(pub, cert.RawSubjectPublicKeyInfo) {
		return nil, errors.New("join answer: certificate is not for this node's key")
	}
	if resp.ClusterId == "" || resp.VshardCount == 0 {
		return nil, errors.New("join answer: no cluster ID or vShard count")
	}
	return cert, nil
}

// writeNodeOnce writes the node's certificate and key, accepting those a
// previous, interrupted attempt wrote for the same key.
func writeNodeOnce(dir string, cert *x509.Certificate, key crypto.Signer) error {
	err := pki.WriteNode(dir, cert, key)
	if !errors.Is(err, fs.ErrExist) {
		return err
	}
	old, _, lerr := pki.LoadNode(dir)
	if lerr != nil {
		return fmt.Errorf("%w (and loading it: %v)", err, lerr)
	}
	if !bytes.Equal(old.RawSubjectPublicKeyInfo, cert.RawSubjectPublicKeyInfo) {
		return fmt.Errorf("%s holds a certificate for another key: %w", dir, err)
	}
	oldID, _ := pki.NodeID(old)
	newID, _ := pki.NodeID(cert)
	if oldID != newID {
		return fmt.Errorf("%s holds a certificate for node %d, the cluster gave %d", dir, oldID, newID)
	}
	return nil
}

// loadOrCreateJoinKey returns the joiner's key, created and synced to disk
// before it is first used.
func loadOrCreateJoinKey(dir string) (crypto.Signer, error) {
	path := filepath.Join(dir, joinKeyFile)
	if b, err := os.ReadFile(path); err == nil {
		blk, _ := pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("%s: not PEM", path)
		}
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		signer, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("%s: not an ECDSA key", path)
		}
		return signer, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	key, err := pki.NewNodeKey()
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	return key, syncDir(dir)
}

// Join answer codes besides the applier's error codes.
const (
	joinOK          = "ok"
	joinRedirect    = "redirect"
	joinUnavailable = "unavailable"
	joinInvalid     = "invalid_argument"
)

// handleJoin serves a join request (quicnet calls it for connections that
// negotiated the join protocol: the peer is not authenticated; the token is
// its only credential). Only the metadata leader admits nodes; the others
// redirect.
func (s *Server) handleJoin(ctx context.Context, b []byte) []byte {
	resp := s.admit(ctx, b)
	out, err := proto.Marshal(resp)
	if err != nil {
		out, _ = proto.Marshal(&metapb.JoinResponse{Code: joinUnavailable, Message: err.Error()})
	}
	return out
}

func (s *Server) admit(ctx context.Context, b []byte) *metapb.JoinResponse {
	fail := func(code, format string, args ...any) *metapb.JoinResponse {
		return &metapb.JoinResponse{Code: code, Message: fmt.Sprintf(format, args...)}
	}
	req := &metapb.JoinRequest{}
	if err := proto.Unmarshal(b, req); err != nil {
		return fail(joinInvalid, "malformed join request: %v", err)
	}
	if len(req.TokenId) == 0 || len(req.TokenId) > 64 || len(req.Secret) == 0 || len(req.Secret) > 64 {
		return fail(joinInvalid, "malformed token")
	}
	if err := checkAddr("advertise", req.PeerAddr); err != nil || req.PeerAddr == "" {
		return fail(joinInvalid, "the joiner's peer address %q is not HOST:PORT", req.PeerAddr)
	}
	if len(req.Zone) > 64 || len(req.ApiAddr) > 256 {
		return fail(joinInvalid, "zone or API address too long")
	}
	csr, err := x509.ParseCertificateRequest(req.CsrDer)
	if err != nil {
		return fail(joinInvalid, "certificate signing request: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return fail(joinInvalid, "certificate signing request: %v", err)
	}
	st := s.view.get()
	if !s.node.IsLeader(MetaGroup) || st == nil {
		_, leader, _ := s.node.Leader(MetaGroup)
		if n := st.GetNodes()[uint64(leader)]; leader != 0 && leader != s.id && n != nil && n.PeerAddr != "" {
			return &metapb.JoinResponse{Code: joinRedirect, RedirectAddr: n.PeerAddr}
		}
		return fail(joinUnavailable, "no metadata leader known here; retry")
	}
	secretHash := meta.HashSecret(req.Secret)
	keyHash := meta.HashKey(csr.RawSubjectPublicKeyInfo)
	if err := failpoint.Inject("join.before-propose"); err != nil {
		return fail(joinUnavailable, "%v", err)
	}
	res, err := s.proposeMeta(ctx, meta.NewBeginJoin(req.TokenId, secretHash, keyHash, req.PeerAddr, req.ApiAddr, req.Zone))
	if err != nil {
		var me *meta.Error
		if errors.As(err, &me) {
			return fail(codeName(me.Code), "%s", me.Msg)
		}
		return fail(joinUnavailable, "%v", err)
	}
	if err := failpoint.Inject("join.after-propose"); err != nil {
		return fail(joinUnavailable, "%v", err)
	}
	st = s.view.get()
	ca, err := caOf(st.GetSettings())
	if err != nil {
		return fail(joinUnavailable, "%v", err)
	}
	cert, err := ca.SignCSR(req.CsrDer, ids.NodeID(res.NodeId), time.Now(), 0)
	if err != nil {
		return fail(joinInvalid, "sign: %v", err)
	}
	if err := failpoint.Inject("join.after-sign"); err != nil {
		return fail(joinUnavailable, "%v", err)
	}
	out := &metapb.JoinResponse{
		Code:        joinOK,
		NodeId:      res.NodeId,
		CertDer:     cert.Raw,
		CaCertDer:   ca.Cert.Raw,
		ClusterId:   st.GetSettings().GetClusterId(),
		VshardCount: st.GetSettings().GetVshardCount(),
		Peers:       map[uint64]string{},
	}
	for id, n := range st.GetNodes() {
		if n.PeerAddr != "" && id != res.NodeId {
			out.Peers[id] = n.PeerAddr
		}
	}
	s.log.Info("node admitted", "new_node", res.NodeId, "token", req.TokenId, "peer_addr", req.PeerAddr)
	return out
}

// codeName is the wire name of an applier code: CODE_TOKEN_EXPIRED is
// token_expired.
func codeName(c metapb.Code) string {
	return strings.ToLower(strings.TrimPrefix(c.String(), "CODE_"))
}

// caOf rebuilds the cluster CA from the metadata settings.
func caOf(set *metapb.ClusterSettings) (*pki.CA, error) {
	cert, err := x509.ParseCertificate(set.GetCaCertDer())
	if err != nil {
		return nil, fmt.Errorf("cluster CA certificate: %w", err)
	}
	k, err := x509.ParsePKCS8PrivateKey(set.GetCaKeyDer())
	if err != nil {
		return nil, fmt.Errorf("cluster CA key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("cluster CA key cannot sign")
	}
	return &pki.CA{Cert: cert, Key: signer}, nil
}
