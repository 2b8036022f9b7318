package pki

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

var testALPN = []string{"nodedb-cluster/1"}

type refusals struct {
	mu  sync.Mutex
	got []Reason
}

func (r *refusals) add(e *RefusalError) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, e.Reason)
}

func (r *refusals) list() []Reason {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

type side struct {
	err   error
	state tls.ConnectionState
}

// handshake runs a TLS handshake over net.Pipe. A side counts as connected
// only once the application data of the other side arrives: in TLS 1.3 the
// client finishes its handshake before the server has checked the client's
// certificate, and learns of a refusal on its first read.
func handshake(t *testing.T, scfg, ccfg *tls.Config) (srv, cli side) {
	t.Helper()
	sc, cc := net.Pipe()
	deadline := time.Now().Add(5 * time.Second)
	sc.SetDeadline(deadline)
	cc.SetDeadline(deadline)
	server, client := tls.Server(sc, scfg), tls.Client(cc, ccfg)
	done := make(chan side, 1)
	go func() {
		defer sc.Close() // not server.Close: its close_notify would block on the pipe
		err := server.Handshake()
		if err == nil {
			_, err = server.Write([]byte{1})
		}
		done <- side{err, server.ConnectionState()}
	}()
	err := client.Handshake()
	if err == nil {
		var b [1]byte
		_, err = io.ReadFull(client, b[:])
	}
	cli = side{err, client.ConnectionState()}
	cc.Close()
	return <-done, cli
}

func TestMutualTLS(t *testing.T) {
	ca, now := testCA(t), time.Now()
	other, err := NewCA("test", now)
	if err != nil {
		t.Fatal(err)
	}
	v := NewVerifier(ca.Cert)
	server := identity(t, ca, 1, now)
	client := identity(t, ca, 2, now)
	foreignServer := identity(t, other, 1, now)
	foreignClient := identity(t, other, 2, now)
	expiredCert, expiredKey := issue(t, ca, 2, now.Add(-2*year), 0)
	expiredClient, err := NewIdentity(expiredCert, nil, expiredKey)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name          string
		server        *Identity
		client        *Identity // nil: the client sends no certificate
		expect        ids.NodeID
		tls12         bool
		serverRefuses Reason // "" when the server accepts or fails for a non-refusal reason
		clientRefuses Reason
		fails         bool
	}{
		{name: "good", server: server, client: client, expect: 1},
		{name: "good, any node", server: server, client: client, expect: 0},
		{name: "client without certificate", server: server, expect: 1, serverRefuses: ReasonNoCertificate},
		{name: "client from another CA", server: server, client: foreignClient, expect: 1, serverRefuses: ReasonUnknownAuthority},
		{name: "expired client", server: server, client: expiredClient, expect: 1, serverRefuses: ReasonExpired},
		{name: "server is not the expected node", server: server, client: client, expect: 5, clientRefuses: ReasonNodeIDMismatch},
		{name: "server from another CA", server: foreignServer, client: client, expect: 1, clientRefuses: ReasonUnknownAuthority},
		{name: "TLS 1.2 client", server: server, client: client, expect: 1, tls12: true, fails: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var srvRef, cliRef refusals
			scfg := ServerTLS(tc.server, v, testALPN, srvRef.add)
			cid := tc.client
			if cid == nil {
				cid = client
			}
			ccfg := ClientTLS(cid, v, testALPN, tc.expect, cliRef.add)
			if tc.client == nil {
				ccfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
					return &tls.Certificate{}, nil
				}
			}
			if tc.tls12 {
				ccfg.MinVersion, ccfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
			}
			srv, cli := handshake(t, scfg, ccfg)

			want := func(r Reason) []Reason {
				if r == "" {
					return nil
				}
				return []Reason{r}
			}
			if got := srvRef.list(); !slices.Equal(got, want(tc.serverRefuses)) {
				t.Errorf("server refusals %v, want %v", got, want(tc.serverRefuses))
			}
			if got := cliRef.list(); !slices.Equal(got, want(tc.clientRefuses)) {
				t.Errorf("client refusals %v, want %v", got, want(tc.clientRefuses))
			}

			if tc.serverRefuses == "" && tc.clientRefuses == "" && !tc.fails {
				if srv.err != nil || cli.err != nil {
					t.Fatalf("server: %v; client: %v", srv.err, cli.err)
				}
				if n, err := PeerNode(srv.state, v); err != nil || n != 2 {
					t.Errorf("server sees node %d, %v; want 2", n, err)
				}
				if n, err := PeerNode(cli.state, v); err != nil || n != 1 {
					t.Errorf("client sees node %d, %v; want 1", n, err)
				}
				for _, s := range []tls.ConnectionState{srv.state, cli.state} {
					if s.Version != tls.VersionTLS13 || s.NegotiatedProtocol != testALPN[0] || s.DidResume {
						t.Errorf("version %x, ALPN %q, resumed %v", s.Version, s.NegotiatedProtocol, s.DidResume)
					}
				}
				return
			}
			if srv.err == nil || cli.err == nil {
				t.Fatalf("connected: server err %v, client err %v", srv.err, cli.err)
			}
			if tc.serverRefuses != "" && !errors.Is(srv.err, tc.serverRefuses.sentinel()) {
				t.Errorf("server error %v, want %v", srv.err, tc.serverRefuses.sentinel())
			}
			if tc.clientRefuses != "" && !errors.Is(cli.err, tc.clientRefuses.sentinel()) {
				t.Errorf("client error %v, want %v", cli.err, tc.clientRefuses.sentinel())
			}
		})
	}
}

// A replaced identity is presented by the next handshake, without a new
// configuration.
func TestIdentityReplaceTakesEffect(t *testing.T) {
	ca, now := testCA(t), time.Now()
	v := NewVerifier(ca.Cert)
	server, client := identity(t, ca, 1, now), identity(t, ca, 2, now)
	scfg := ServerTLS(server, v, testALPN, nil)
	ccfg := ClientTLS(client, v, testALPN, 1, nil)

	_, cli := handshake(t, scfg, ccfg)
	if cli.err != nil {
		t.Fatal(cli.err)
	}
	renewed, key := issue(t, ca, 1, now, 0)
	if err := server.Replace(renewed, key); err != nil {
		t.Fatal(err)
	}
	_, cli = handshake(t, scfg, ccfg)
	if cli.err != nil {
		t.Fatal(cli.err)
	}
	if got := cli.state.PeerCertificates[0]; !got.Equal(renewed) {
		t.Errorf("server presented serial %v, want the renewed %v", got.SerialNumber, renewed.SerialNumber)
	}
}

func TestTLSConfigs(t *testing.T) {
	ca, now := testCA(t), time.Now()
	v := NewVerifier(ca.Cert)
	id := identity(t, ca, 1, now)
	alpn := []string{"nodedb-cluster/1"}
	s, c := ServerTLS(id, v, alpn, nil), ClientTLS(id, v, alpn, 9, nil)
	alpn[0] = "changed"
	for _, cfg := range []*tls.Config{s, c} {
		if cfg.MinVersion != tls.VersionTLS13 || !cfg.SessionTicketsDisabled || cfg.VerifyPeerCertificate == nil {
			t.Errorf("MinVersion %x, tickets disabled %v, verifier set %v", cfg.MinVersion, cfg.SessionTicketsDisabled, cfg.VerifyPeerCertificate != nil)
		}
		if len(cfg.NextProtos) != 1 || cfg.NextProtos[0] != "nodedb-cluster/1" {
			t.Errorf("NextProtos %v shares the caller's slice", cfg.NextProtos)
		}
	}
	if c.ServerName != "nodedb-node-9" {
		t.Errorf("ServerName %q", c.ServerName)
	}
	if _, err := PeerNode(tls.ConnectionState{}, v); err == nil {
		t.Error("PeerNode of an incomplete handshake")
	}
	if _, err := PeerNode(tls.ConnectionState{HandshakeComplete: true}, v); !errors.Is(err, ErrNoCertificate) {
		t.Errorf("PeerNode without certificates: %v", err)
	}
}
