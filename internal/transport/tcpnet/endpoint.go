package tcpnet

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/pki"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// Endpoint is one node's TCP transport. It implements transport.Transport
// and transport.Caller.
type Endpoint struct {
	// RPCHandlers gives the endpoint its Handle method: the handlers of
	// the RPCs it serves.
	transport.RPCHandlers

	cfg         Config
	node        ids.NodeID
	incarnation uint64
	h           transport.Handler
	keepAlive   net.KeepAliveConfig

	ln        net.Listener
	serverTLS *tls.Config

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// untuned logs, once, that the kernel refused tuneLossRecovery.
	untuned sync.Once

	mu     sync.Mutex
	peers  map[ids.NodeID]*peer
	conns  map[net.Conn]struct{} // every open connection, closed by Close
	inRaft map[ids.NodeID]net.Conn
	closed bool

	stats Stats

	joinSlots chan struct{} // bounds the join connections in service; nil without Config.Join
	joinStats transport.JoinStats
}

var _ transport.Transport = (*Endpoint)(nil)
var _ transport.Caller = (*Endpoint)(nil)

// conn is an established connection after the hello.
type conn struct {
	raw net.Conn
	tls *tls.Conn
	r   *bufio.Reader // reads tls; may hold bytes read past the hello
}

// Listen starts an endpoint: it binds the TCP socket and accepts peers'
// connections, handing their traffic to h.
func Listen(cfg Config, h transport.Handler) (*Endpoint, error) {
	cfg.setDefaults()
	if cfg.Identity == nil || cfg.Verifier == nil {
		return nil, errors.New("tcpnet: identity and verifier are required")
	}
	var inc [8]byte
	if _, err := rand.Read(inc[:]); err != nil {
		return nil, err
	}
	e := &Endpoint{
		cfg:         cfg,
		node:        cfg.Identity.Node(),
		incarnation: binary.BigEndian.Uint64(inc[:]),
		h:           h,
		// A silent peer is declared dead after about IdleTimeout.
		keepAlive: net.KeepAliveConfig{Enable: true, Idle: cfg.IdleTimeout / 2, Interval: cfg.IdleTimeout / 10, Count: 5},
		peers:     map[ids.NodeID]*peer{},
		conns:     map[net.Conn]struct{}{},
		inRaft:    map[ids.NodeID]net.Conn{},
	}
	lc := net.ListenConfig{KeepAliveConfig: e.keepAlive}
	ln, err := lc.Listen(context.Background(), "tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("tcpnet: listen on %s: %w", cfg.Listen, err)
	}
	e.ln = ln
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.serverTLS = pki.ServerTLS(cfg.Identity, cfg.Verifier, []string{transport.ALPN}, e.onRefuse)
	if cfg.Join != nil {
		if !transport.ChainHasCA(cfg.Identity.Certificate()) {
			cfg.Logger.Warn("tcpnet: Config.Join is set but the identity's certificate chain does not include the CA certificate that issued it; joiners will refuse this node")
		}
		joinTLS := transport.JoinServerTLS(cfg.Identity)
		e.serverTLS.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			if transport.IsJoinHello(hello) {
				return joinTLS, nil
			}
			return nil, nil
		}
		e.joinSlots = make(chan struct{}, transport.MaxJoinConns)
		transport.RegisterJoinMetrics(cfg.Registerer, &e.joinStats, cfg.Logger)
	}
	e.stats.Register(cfg.Registerer, cfg.Logger, append(pathCollectors(e), transport.PeersConnected(e.connectedPeers))...)
	for id, a := range cfg.Peers {
		e.SetPeer(id, a)
	}
	e.wg.Add(1)
	go e.acceptLoop()
	return e, nil
}

// Addr is the address the endpoint listens on.
func (e *Endpoint) Addr() net.Addr { return e.ln.Addr() }

// Node is this endpoint's node ID.
func (e *Endpoint) Node() ids.NodeID { return e.node }

// Stats returns the endpoint's counters.
func (e *Endpoint) Stats() *Stats { return &e.stats }

// SetPeer records (or changes) the address of node id.
func (e *Endpoint) SetPeer(id ids.NodeID, addr string) {
	if id == e.node {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	p := e.peerLocked(id)
	p.mu.Lock()
	p.addr = addr
	p.nextDial = time.Time{}
	p.mu.Unlock()
}

func (e *Endpoint) peer(id ids.NodeID) *peer {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.peers[id]
}

// peerLocked returns the peer state of id, creating it. Caller holds e.mu.
func (e *Endpoint) peerLocked(id ids.NodeID) *peer {
	p := e.peers[id]
	if p == nil {
		p = &peer{e: e, id: id, queue: transport.NewSendQueue(e.cfg.MaxQueuedBytes),
			backoff: transport.Backoff{Min: e.cfg.MinBackoff, Max: e.cfg.MaxBackoff}}
		e.peers[id] = p
		if !e.closed {
			e.wg.Add(1)
			go p.sendLoop()
		}
	}
	return p
}

// track records an open connection so that Close closes it; it reports false
// (and closes c) once the endpoint is closed.
func (e *Endpoint) track(c net.Conn) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		c.Close()
		return false
	}
	e.conns[c] = struct{}{}
	return true
}

// untrack closes c and forgets it.
func (e *Endpoint) untrack(c net.Conn) {
	e.mu.Lock()
	delete(e.conns, c)
	e.mu.Unlock()
	c.Close()
}

// spawn runs f in a goroutine that Close waits for; it reports false, running
// nothing, once the endpoint is closed.
func (e *Endpoint) spawn(f func()) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return false
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		f()
	}()
	return true
}

// allowed reports whether Config.Filter lets traffic from one node to
// another through.
func (e *Endpoint) allowed(from, to ids.NodeID) bool {
	return e.cfg.Filter == nil || e.cfg.Filter(from, to)
}

func (e *Endpoint) onRefuse(r *pki.RefusalError) {
	e.stats.Refuse(string(r.Reason))
	e.cfg.Logger.Warn("refused peer certificate", "reason", r.Reason, "err", r.Err)
}

// Close stops the endpoint: it closes every connection and waits for its
// goroutines to exit.
func (e *Endpoint) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	conns := make([]net.Conn, 0, len(e.conns))
	for c := range e.conns {
		conns = append(conns, c)
	}
	e.mu.Unlock()
	// Connections first: a request in service then fails on the caller's
	// side as unreachable, rather than being answered with a cancellation.
	for _, c := range conns {
		c.Close()
	}
	err := e.ln.Close()
	e.cancel()
	e.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// tune applies tuneLossRecovery to c and says once, at info level, when
// the kernel does not take it: every segment lost between nodes then waits
// for the system's retransmission bounds (200 ms on Linux).
func (e *Endpoint) tune(c net.Conn) {
	if !tuneLossRecovery(c) {
		e.untuned.Do(func() {
			e.cfg.Logger.Info("peer connections keep the system's TCP retransmission and delayed-ack bounds (TCP_RTO_MIN_US needs Linux 6.15+): " +
				"a lost segment between nodes waits at least 200 ms; lower the route's rto_min, or use the QUIC transport")
		})
	}
}

// acceptLoop accepts peers' connections until the endpoint closes.
func (e *Endpoint) acceptLoop() {
	defer e.wg.Done()
	for {
		c, err := e.ln.Accept()
		if err != nil {
			if e.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors, say: wait rather than spin.
			e.cfg.Logger.Warn("accept failed", "err", err)
			select {
			case <-e.ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		if !e.track(c) {
			return
		}
		e.tune(c)
		if !e.spawn(func() { e.serveConn(c) }) {
			e.untrack(c)
			return
		}
	}
}

// serveConn runs the acceptor's side of the handshake and the hello, then
// serves the connection for its lifetime.
func (e *Endpoint) serveConn(raw net.Conn) {
	defer e.untrack(raw)
	raw.SetDeadline(time.Now().Add(e.cfg.DialTimeout))
	tc := tls.Server(raw, e.serverTLS)
	if err := tc.HandshakeContext(e.ctx); err != nil {
		// Refused certificates were counted by onRefuse.
		return
	}
	if tc.ConnectionState().NegotiatedProtocol == transport.JoinALPN && e.joinSlots != nil {
		e.serveJoin(tc)
		return
	}
	certNode, err := pki.PeerNode(tc.ConnectionState(), e.cfg.Verifier)
	if err != nil {
		// The handshake verified the chain and the identity already; this
		// second verification fails only in corner cases (the certificate
		// expired in between, say).
		reason := "malformed"
		var re *pki.RefusalError
		if errors.As(err, &re) {
			reason = string(re.Reason)
		}
		e.stats.Refuse(reason)
		return
	}
	fr := transport.NewFrameReader(tc, 4096)
	t, payload, err := fr.Next()
	if err != nil || t != transport.FrameHello {
		e.stats.FrameErrors.Add(1)
		e.stats.Refuse("malformed")
		return
	}
	hello, err := transport.DecodeHello(payload)
	var version uint32
	var refusal *transport.Refusal
	if err != nil {
		refusal = &transport.Refusal{Reason: "malformed", Message: err.Error()}
	} else {
		version, refusal = transport.CheckHello(hello, certNode, e.node, e.cfg.ClusterID)
	}
	if refusal != nil {
		e.stats.Refuse(refusal.Reason)
		e.cfg.Logger.Warn("refused peer connection", "peer", hello.Node, "cert_node", certNode, "reason", refusal.Reason, "msg", refusal.Message)
		transport.WriteFrame(tc, transport.FrameRefuse, refusal.Encode(nil))
		return
	}
	ok := transport.HelloOK{Version: version, Node: e.node, Incarnation: e.incarnation}
	if err := transport.WriteFrame(tc, transport.FrameHelloOK, ok.Encode(nil)); err != nil {
		return
	}
	// The dialer sends the connection's kind right after its hello; the
	// same buffered reader carries on, so nothing read ahead is lost.
	br := fr.Reader()
	kind, err := br.ReadByte()
	if err != nil {
		return
	}
	raw.SetDeadline(time.Time{})
	e.stats.ConnsAccepted.Add(1)
	c := &conn{raw: raw, tls: tc, r: br}
	switch kind {
	case transport.StreamRaft:
		e.serveRaft(c, hello.Node)
	case transport.StreamRPC:
		e.serveRPC(c, hello.Node)
	case transport.StreamSnapshot:
		e.receiveSnapshot(c, hello.Node)
	default:
		e.protocolError(hello.Node, fmt.Errorf("connection of kind %q", kind))
	}
}

// protocolError records that a peer broke the protocol; the caller closes
// the connection.
func (e *Endpoint) protocolError(peer ids.NodeID, err error) {
	e.stats.FrameErrors.Add(1)
	e.cfg.Logger.Warn("peer broke the protocol; closing the connection", "peer", peer, "err", err)
}

// serveRaft reads a peer's Raft batches until the connection ends. A newer
// Raft connection from the same peer replaces it: the peer only ever writes
// on its latest one.
func (e *Endpoint) serveRaft(c *conn, from ids.NodeID) {
	e.mu.Lock()
	old := e.inRaft[from]
	e.inRaft[from] = c.raw
	e.mu.Unlock()
	if old != nil {
		old.Close()
	}
	defer func() {
		e.mu.Lock()
		if e.inRaft[from] == c.raw {
			delete(e.inRaft, from)
		}
		e.mu.Unlock()
	}()
	fr := transport.NewFrameReader(c.r, e.cfg.MaxFrameBytes)
	for {
		t, payload, err := fr.Next()
		if err != nil {
			if errors.Is(err, transport.ErrFrame) {
				e.protocolError(from, err)
			}
			return
		}
		if t != transport.FrameRaftBatch {
			e.protocolError(from, fmt.Errorf("%s frame on a raft connection", t))
			return
		}
		msgs, err := transport.DecodeBatch(payload)
		if err != nil {
			e.protocolError(from, err)
			return
		}
		if !e.allowed(from, e.node) {
			continue
		}
		e.stats.BatchesReceived.Add(1)
		e.h.HandleRaft(from, msgs)
	}
}

// serveRPC serves a peer's requests until the connection ends.
func (e *Endpoint) serveRPC(c *conn, from ids.NodeID) {
	srv := transport.RPCServer{
		From:          from,
		MaxFrameBytes: e.cfg.MaxFrameBytes,
		Inflight:      make(chan struct{}, e.cfg.MaxConcurrentRPCs),
		Lookup:        e.Lookup,
		Accept:        func() bool { return e.allowed(from, e.node) },
		Served:        func() { e.stats.RPCsServed.Add(1) },
		Abort:         func() { c.tls.Close() },
	}
	if err := srv.Serve(e.ctx, c.r, c.tls); errors.Is(err, transport.ErrProtocol) {
		e.protocolError(from, err)
	}
}

// dial connects to node id at addr, runs the dialer's side of the handshake
// and the hello, and announces the connection's kind.
func (e *Endpoint) dial(id ids.NodeID, addr string, kind byte) (*conn, error) {
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.DialTimeout)
	defer cancel()
	d := net.Dialer{KeepAliveConfig: e.keepAlive}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect to node %s at %s: %w", id, addr, err)
	}
	if !e.track(raw) {
		return nil, transport.ErrClosed
	}
	e.tune(raw)
	fail := func(err error) (*conn, error) {
		e.untrack(raw)
		return nil, err
	}
	dl, _ := ctx.Deadline()
	raw.SetDeadline(dl)
	tc := tls.Client(raw, pki.ClientTLS(e.cfg.Identity, e.cfg.Verifier, []string{transport.ALPN}, id, e.onRefuse))
	if err := tc.HandshakeContext(ctx); err != nil {
		return fail(fmt.Errorf("TLS handshake with node %s at %s: %w", id, addr, err))
	}
	hello := transport.Hello{MinVersion: transport.MinProtocolVersion, MaxVersion: transport.ProtocolVersion,
		Node: e.node, Incarnation: e.incarnation, ClusterID: e.cfg.ClusterID}
	b := transport.AppendFrame(nil, transport.FrameHello, hello.Encode(nil))
	if _, err := tc.Write(append(b, kind)); err != nil {
		return fail(fmt.Errorf("send hello to node %s: %w", id, err))
	}
	fr := transport.NewFrameReader(tc, 8192)
	if _, err := transport.ReadHelloAnswer(fr, id); err != nil {
		var r *transport.Refusal
		if errors.As(err, &r) {
			e.stats.Refuse(r.Reason)
			return fail(fmt.Errorf("node %s: %w", id, err))
		}
		return fail(fmt.Errorf("hello with node %s: %w", id, err))
	}
	raw.SetDeadline(time.Time{})
	e.stats.ConnsDialed.Add(1)
	return &conn{raw: raw, tls: tc, r: fr.Reader()}, nil
}

// Call sends an RPC to node to. Errors: ErrUnreachable when no connection
// could be made or the request could not be sent, ErrRequestLost when the
// connection failed with the request in flight, an *RPCError from the
// remote side, ctx's error, or ErrClosed once the endpoint is closed.
func (e *Endpoint) Call(ctx context.Context, to ids.NodeID, method string, req []byte) ([]byte, error) {
	if len(method) == 0 || len(method) > transport.MaxMethodLen {
		return nil, fmt.Errorf("tcpnet: bad method name %q", method)
	}
	if e.ctx.Err() != nil {
		return nil, transport.ErrClosed
	}
	if !e.allowed(e.node, to) {
		return nil, transport.ErrUnreachable
	}
	p := e.peer(to)
	if p == nil {
		return nil, transport.ErrUnreachable
	}
	c, err := p.rpcClient(ctx)
	if err != nil {
		return nil, err
	}
	e.stats.RPCsCalled.Add(1)
	return c.Call(ctx, method, req)
}
