package quicnet

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/qlog"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/pki"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// Application error codes used to close connections and streams.
const (
	codeNormal    quic.ApplicationErrorCode = 0
	codeRefused   quic.ApplicationErrorCode = 1 // the hello was refused
	codeDuplicate quic.ApplicationErrorCode = 2 // another connection to the same peer won
	codeProtocol  quic.ApplicationErrorCode = 3 // the peer broke the framing or the stream protocol

	streamProtocol quic.StreamErrorCode = 3
)

// Stream priorities (lower urgency is served first).
const (
	urgencyRaft     = 0
	urgencyRPC      = 2
	urgencySnapshot = 6
)

// Endpoint is one node's QUIC transport. It implements transport.Transport
// and transport.Caller.
type Endpoint struct {
	// RPCHandlers gives the endpoint its Handle method: the handlers of
	// the RPCs it serves.
	transport.RPCHandlers

	cfg         Config
	node        ids.NodeID
	incarnation uint64
	h           transport.Handler

	udp       *net.UDPConn
	qt        *quic.Transport
	ln        *quic.Listener
	qconf     *quic.Config
	serverTLS *tls.Config

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	peers   map[ids.NodeID]*peer
	closed  bool
	sessSeq uint64

	stats Stats

	join *joinServer // nil unless cfg.Join is set
}

var _ transport.Transport = (*Endpoint)(nil)
var _ transport.Caller = (*Endpoint)(nil)

// Listen starts an endpoint: it binds the UDP socket and accepts peers'
// connections, handing their traffic to h.
func Listen(cfg Config, h transport.Handler) (*Endpoint, error) {
	cfg.setDefaults()
	if cfg.Identity == nil || cfg.Verifier == nil {
		return nil, errors.New("quicnet: identity and verifier are required")
	}
	addr, err := net.ResolveUDPAddr("udp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("quicnet: listen address %q: %w", cfg.Listen, err)
	}
	udp, err := net.ListenUDP("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("quicnet: listen on %s: %w", cfg.Listen, err)
	}
	var inc [8]byte
	if _, err := rand.Read(inc[:]); err != nil {
		udp.Close()
		return nil, err
	}
	e := &Endpoint{
		cfg:         cfg,
		node:        cfg.Identity.Node(),
		incarnation: binary.BigEndian.Uint64(inc[:]),
		h:           h,
		udp:         udp,
		peers:       map[ids.NodeID]*peer{},
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.qconf = &quic.Config{
		HandshakeIdleTimeout:           cfg.DialTimeout,
		MaxIdleTimeout:                 cfg.IdleTimeout,
		KeepAlivePeriod:                cfg.IdleTimeout / 3,
		Allow0RTT:                      false,
		MaxIncomingStreams:             int64(cfg.RPCStreams + 256),
		MaxIncomingUniStreams:          16,
		InitialStreamReceiveWindow:     1 << 20,
		MaxStreamReceiveWindow:         16 << 20,
		InitialConnectionReceiveWindow: 2 << 20,
		MaxConnectionReceiveWindow:     32 << 20,
		// With QLOGDIR set, every connection writes a qlog trace there
		// (quic-go's own switch; nil, no cost, without it): the tool for
		// a peer link that stalls or loses packets.
		Tracer: qlog.DefaultConnectionTracer,
	}
	e.registerMetrics(cfg.Registerer)
	e.serverTLS = pki.ServerTLS(cfg.Identity, cfg.Verifier, []string{transport.ALPN}, e.onRefuse)
	if cfg.Join != nil {
		e.join = newJoinServer(e)
		e.serverTLS.GetConfigForClient = e.join.configForClient
	}
	e.qt = &quic.Transport{Conn: refusalsAsLoss{UDPConn: udp, refused: &e.stats.SendsRefused}}
	e.ln, err = e.qt.Listen(e.serverTLS, e.qconf)
	if err != nil {
		e.qt.Close()
		udp.Close()
		return nil, fmt.Errorf("quicnet: listen: %w", err)
	}
	for id, a := range cfg.Peers {
		e.SetPeer(id, a)
	}
	e.wg.Add(1)
	go e.acceptLoop()
	return e, nil
}

// Addr is the address the endpoint listens on.
func (e *Endpoint) Addr() net.Addr { return e.udp.LocalAddr() }

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

func (e *Endpoint) peer(id ids.NodeID) *peer {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.peers[id]
}

// sessions returns the current connection to each connected peer.
func (e *Endpoint) sessions() []*session {
	e.mu.Lock()
	ps := make([]*peer, 0, len(e.peers))
	for _, p := range e.peers {
		ps = append(ps, p)
	}
	e.mu.Unlock()
	var out []*session
	for _, p := range ps {
		if s := p.current(); s != nil {
			out = append(out, s)
		}
	}
	return out
}

func (e *Endpoint) connectedPeers() int { return len(e.sessions()) }

func (e *Endpoint) onRefuse(r *pki.RefusalError) {
	e.stats.Refuse(string(r.Reason))
	e.cfg.Logger.Warn("refused peer certificate", "reason", r.Reason, "err", r.Err)
}

func (e *Endpoint) refuse(reason string) {
	e.stats.Refuse(reason)
}

func (e *Endpoint) allowed(from, to ids.NodeID) bool {
	return e.cfg.Filter == nil || e.cfg.Filter(from, to)
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
	peers := make([]*peer, 0, len(e.peers))
	for _, p := range e.peers {
		peers = append(peers, p)
	}
	e.mu.Unlock()
	// Connections first: a peer with a request in service sees the
	// connection go (ErrRequestLost: it may have been served) rather than an
	// answer from a handler whose context was cancelled under it.
	e.ln.Close()
	for _, p := range peers {
		p.closeAll()
	}
	e.cancel()
	e.wg.Wait()
	err := e.qt.Close()
	if cerr := e.udp.Close(); err == nil && !errors.Is(cerr, net.ErrClosed) {
		err = cerr
	}
	return err
}

// acceptLoop accepts peers' connections until the endpoint closes.
func (e *Endpoint) acceptLoop() {
	defer e.wg.Done()
	for {
		conn, err := e.ln.Accept(e.ctx)
		if err != nil {
			return
		}
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			e.acceptConn(conn)
		}()
	}
}

// acceptConn runs the acceptor's side of the hello and registers the
// connection.
func (e *Endpoint) acceptConn(conn *quic.Conn) {
	if alpn := conn.ConnectionState().TLS.NegotiatedProtocol; alpn != transport.ALPN {
		// A join connection (see join.go) never becomes a session.
		if alpn == JoinALPN && e.join != nil {
			e.join.serve(conn)
			return
		}
		conn.CloseWithError(codeRefused, "alpn")
		return
	}
	certNode, err := pki.PeerNode(conn.ConnectionState().TLS, e.cfg.Verifier)
	if err != nil {
		// The handshake verified the chain and the identity already; this
		// second verification fails only in corner cases (the certificate
		// expired in between, say).
		reason := "malformed"
		var re *pki.RefusalError
		if errors.As(err, &re) {
			reason = string(re.Reason)
		}
		e.refuse(reason)
		conn.CloseWithError(codeRefused, reason)
		return
	}
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.DialTimeout)
	defer cancel()
	st, err := conn.AcceptStream(ctx)
	if err != nil {
		conn.CloseWithError(codeRefused, "no hello")
		return
	}
	st.SetDeadline(time.Now().Add(e.cfg.DialTimeout))
	fr := transport.NewFrameReader(st, 4096)
	t, payload, err := fr.Next()
	if err != nil || t != transport.FrameHello {
		e.stats.FrameErrors.Add(1)
		e.refuse("malformed")
		conn.CloseWithError(codeProtocol, "expected hello")
		return
	}
	hello, err := transport.DecodeHello(payload)
	refuse := func(r *transport.Refusal) {
		e.refuse(r.Reason)
		e.cfg.Logger.Warn("refused peer connection", "peer", hello.Node, "cert_node", certNode, "reason", r.Reason, "msg", r.Message)
		transport.WriteFrame(st, transport.FrameRefuse, r.Encode(nil))
		st.Close()
		// Let the refusal reach the dialer before the connection goes.
		time.AfterFunc(100*time.Millisecond, func() { conn.CloseWithError(codeRefused, r.Reason) })
	}
	if err != nil {
		refuse(&transport.Refusal{Reason: "malformed", Message: err.Error()})
		return
	}
	version, r := transport.CheckHello(hello, certNode, e.node, e.cfg.ClusterID)
	if r != nil {
		refuse(r)
		return
	}
	ok2 := transport.HelloOK{Version: version, Node: e.node, Incarnation: e.incarnation}
	if err := transport.WriteFrame(st, transport.FrameHelloOK, ok2.Encode(nil)); err != nil {
		conn.CloseWithError(codeNormal, "")
		return
	}
	st.Close()
	e.stats.ConnsAccepted.Add(1)
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		conn.CloseWithError(codeNormal, "closing")
		return
	}
	p := e.peerLocked(hello.Node)
	e.mu.Unlock()
	p.register(e.newSession(conn, hello.Node, hello.Incarnation, hello.Node))
}

// dial connects to peer id at addr and runs the dialer's side of the hello.
func (e *Endpoint) dial(ctx context.Context, id ids.NodeID, addr string) (*session, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", addr, err)
	}
	ctx, cancel := context.WithTimeout(ctx, e.cfg.DialTimeout)
	defer cancel()
	tlsConf := pki.ClientTLS(e.cfg.Identity, e.cfg.Verifier, []string{transport.ALPN}, id, e.onRefuse)
	conn, err := e.qt.Dial(ctx, ua, tlsConf, e.qconf)
	if err != nil {
		return nil, fmt.Errorf("connect to node %s at %s: %w", id, addr, err)
	}
	fail := func(err error) (*session, error) {
		conn.CloseWithError(codeNormal, "")
		return nil, err
	}
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return fail(fmt.Errorf("open hello stream to node %s: %w", id, err))
	}
	if dl, ok := ctx.Deadline(); ok {
		st.SetDeadline(dl)
	}
	hello := transport.Hello{MinVersion: transport.MinProtocolVersion, MaxVersion: transport.ProtocolVersion,
		Node: e.node, Incarnation: e.incarnation, ClusterID: e.cfg.ClusterID}
	if err := transport.WriteFrame(st, transport.FrameHello, hello.Encode(nil)); err != nil {
		return fail(fmt.Errorf("send hello to node %s: %w", id, err))
	}
	ok, err := transport.ReadHelloAnswer(transport.NewFrameReader(st, 8192), id)
	if err != nil {
		var r *transport.Refusal
		if errors.As(err, &r) {
			e.refuse(r.Reason)
			return fail(fmt.Errorf("node %s: %w", id, err))
		}
		return fail(fmt.Errorf("hello with node %s: %w", id, err))
	}
	st.Close()
	e.stats.ConnsDialed.Add(1)
	return e.newSession(conn, id, ok.Incarnation, e.node), nil
}

// SendSnapshot streams a snapshot to node to on a stream of its own.
func (e *Endpoint) SendSnapshot(ctx context.Context, to ids.NodeID, stream io.Reader) error {
	if !e.allowed(e.node, to) {
		return transport.ErrUnreachable
	}
	p := e.peer(to)
	if p == nil {
		return transport.ErrUnreachable
	}
	s, err := p.session(ctx)
	if err != nil {
		return err
	}
	return s.sendSnapshot(ctx, stream)
}

// Call sends an RPC to node to.
func (e *Endpoint) Call(ctx context.Context, to ids.NodeID, method string, req []byte) ([]byte, error) {
	if len(method) == 0 || len(method) > transport.MaxMethodLen {
		return nil, fmt.Errorf("quicnet: bad method name %q", method)
	}
	if !e.allowed(e.node, to) {
		return nil, transport.ErrUnreachable
	}
	p := e.peer(to)
	if p == nil {
		return nil, transport.ErrUnreachable
	}
	s, err := p.session(ctx)
	if err != nil {
		return nil, err
	}
	e.stats.RPCsCalled.Add(1)
	return s.call(ctx, method, req)
}
