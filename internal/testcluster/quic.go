package testcluster

import (
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/freeport"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/pki"
	"github.com/nodedb/nodedb-cluster/internal/transport"
	"github.com/nodedb/nodedb-cluster/internal/transport/quicnet"
	"github.com/nodedb/nodedb-cluster/internal/transport/tcpnet"
)

// quicNet is the real-socket network of a QUIC test cluster: a test CA, one
// certificate and one fixed 127.0.0.1 port per node (kept across restarts, as
// a real node keeps its address), and the set of cut links that every
// endpoint's filter consults.
type quicNet struct {
	tcp      bool // tcpnet instead of quicnet
	verifier *pki.Verifier
	ids      map[ids.NodeID]*pki.Identity
	addrs    map[ids.NodeID]string

	mu   sync.RWMutex
	cutf func(a, b ids.NodeID) bool
}

func newQUICNet(t testing.TB, nodes int, tcp bool) *quicNet {
	ca, err := pki.NewCA("testcluster", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	q := &quicNet{tcp: tcp, verifier: pki.NewVerifier(ca.Cert), ids: map[ids.NodeID]*pki.Identity{}, addrs: map[ids.NodeID]string{}}
	for i := 1; i <= nodes; i++ {
		id := ids.NodeID(i)
		var err error
		if q.ids[id], err = ca.NewNodeIdentity(id, []string{"127.0.0.1"}, false); err != nil {
			t.Fatal(err)
		}
		free := freeport.UDP
		if tcp {
			free = freeport.TCP
		}
		if q.addrs[id], err = free(); err != nil {
			t.Fatal(err)
		}
	}
	return q
}

func (q *quicNet) listen(id ids.NodeID, h transport.Handler, log *slog.Logger) (transport.Transport, error) {
	peers := map[ids.NodeID]string{}
	for n, a := range q.addrs {
		if n != id {
			peers[n] = a
		}
	}
	// The same settings on both transports: fast dials and backoffs, a
	// short idle timeout.
	const idle, dial, minBackoff, maxBackoff = 3 * time.Second, time.Second, 10 * time.Millisecond, 200 * time.Millisecond
	if q.tcp {
		return tcpnet.Listen(tcpnet.Config{Identity: q.ids[id], Verifier: q.verifier, Listen: q.addrs[id], Peers: peers,
			IdleTimeout: idle, DialTimeout: dial, MinBackoff: minBackoff, MaxBackoff: maxBackoff,
			Logger: log.With("node", uint64(id), "component", "tcpnet"), Filter: q.allowed}, h)
	}
	return quicnet.Listen(quicnet.Config{Identity: q.ids[id], Verifier: q.verifier, Listen: q.addrs[id], Peers: peers,
		IdleTimeout: idle, DialTimeout: dial, MinBackoff: minBackoff, MaxBackoff: maxBackoff,
		Logger: log.With("node", uint64(id), "component", "quicnet"), Filter: q.allowed}, h)
}

func (q *quicNet) allowed(from, to ids.NodeID) bool {
	q.mu.RLock()
	defer q.mu.RUnlock()
	return q.cutf == nil || !q.cutf(from, to)
}

// cut replaces the set of cut links (nil heals every link).
func (q *quicNet) cut(f func(a, b ids.NodeID) bool) {
	q.mu.Lock()
	q.cutf = f
	q.mu.Unlock()
}
