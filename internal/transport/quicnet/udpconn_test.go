package quicnet

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/netloss"
)

// TestRefusedSendsAreLosses drops a fifth of the packets of two endpoints
// as they leave (nftables' output hook, in a network namespace of the
// test's own), so that the kernel fails those sends with EPERM, as a local
// firewall or a full conntrack table does. Every RPC still gets its answer
// over the one connection the endpoints made: a refused send is a lost
// packet, retransmitted, not the end of the connection (which is what
// quic-go does with a failed send on a bare socket).
func TestRefusedSendsAreLosses(t *testing.T) {
	if !netloss.InPrivate() {
		netloss.RerunInPrivate(t)
		return
	}
	p := newPKI(t)
	e1 := p.endpoint(t, 1, newRecorder(), nil)
	e2 := p.endpoint(t, 2, newRecorder(), nil)
	connect(e1, e2)
	e2.Handle("echo", func(ctx context.Context, from ids.NodeID, req []byte) ([]byte, error) {
		return req, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := e1.Call(ctx, 2, "echo", []byte("up")); err != nil {
		t.Fatal(err)
	}
	loss, err := netloss.Install(ctx, "quicnet_refused", 20, netloss.OnDeparture)
	if err != nil {
		t.Fatal(err)
	}
	defer loss.Close()
	for _, e := range []*Endpoint{e1, e2} {
		if err := loss.Add(ctx, e.Addr().String()); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 300 {
		want := fmt.Sprintf("req-%d", i)
		cctx, c := context.WithTimeout(ctx, 5*time.Second)
		got, err := e1.Call(cctx, 2, "echo", []byte(want))
		c()
		if err != nil || string(got) != want {
			t.Fatalf("call %d under refused sends: %q, %v", i, got, err)
		}
	}
	refused := e1.Stats().SendsRefused.Load() + e2.Stats().SendsRefused.Load()
	dropped, _, err := loss.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d packets dropped on departure, %d sends refused", dropped, refused)
	if refused == 0 {
		t.Fatal("no send was refused: the loss never applied")
	}
	// One connection all along: none redialed, none replaced.
	if d, a := e1.Stats().ConnsDialed.Load()+e2.Stats().ConnsDialed.Load(), e1.Stats().ConnsAccepted.Load()+e2.Stats().ConnsAccepted.Load(); d != 1 || a != 1 {
		t.Fatalf("%d connections dialed and %d accepted, want the one of each", d, a)
	}
}

// TestWrappedSocketKeepsGSO checks that quic-go still finds what it needs
// on the wrapped socket: a connection of an endpoint uses GSO exactly when
// one over a bare socket on this machine does.
func TestWrappedSocketKeepsGSO(t *testing.T) {
	p := newPKI(t)
	e1 := p.endpoint(t, 1, newRecorder(), nil)
	e2 := p.endpoint(t, 2, newRecorder(), nil)
	connect(e1, e2)
	e2.Handle("echo", func(ctx context.Context, from ids.NodeID, req []byte) ([]byte, error) { return req, nil })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e1.Call(ctx, 2, "echo", []byte("up")); err != nil {
		t.Fatal(err)
	}
	ss := e1.sessions()
	if len(ss) != 1 {
		t.Fatalf("%d sessions, want 1", len(ss))
	}
	bare, err := rawDial(t, e2, clientCert(p.issue(3)))
	if err != nil {
		t.Fatal(err)
	}
	defer bare.CloseWithError(0, "")
	got, want := ss[0].conn.ConnectionState().GSO, bare.ConnectionState().GSO
	t.Logf("GSO on this machine: %v", want)
	if got != want {
		t.Fatalf("GSO %v on the endpoint's wrapped socket, %v on a bare one", got, want)
	}
}
