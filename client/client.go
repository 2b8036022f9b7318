// Package client is the Go client of nodedb-cluster's key-value API
// (docs/api.md, docs/client.md).
//
// The client keeps a routing table (GET /v1/cluster) and sends every
// request straight to the leader of the key's Raft group, asking the node
// not to forward it; it follows leader hints, reloads the table when the
// cluster says it is stale, avoids unreachable nodes and retries retryable
// errors with exponential backoff and jitter until the call's context ends.
// Writes carry an exactly-once identity (a client ID and a sequence number
// kept across retries), so a write that returns without error was applied
// exactly once, however many attempts it took.
//
//	c, err := client.New(ctx, client.Config{Endpoints: []string{"127.0.0.1:8401"}})
//	...
//	defer c.Close()
//	w, err := c.Put(ctx, []byte("greeting"), []byte("hello"))
//	g, err := c.Get(ctx, []byte("greeting"))
//	_, err = c.Put(ctx, []byte("greeting"), []byte("hi"), client.WithIfVersion(g.Version))
//	if errors.Is(err, client.ErrConflict) { cur, _ := client.CurrentVersion(err) ... }
package client

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nodedb/nodedb-cluster/vshard"
)

// Headers of the REST API (docs/api.md).
const (
	headerVersion        = "X-Nodedb-Version"
	headerVShard         = "X-Nodedb-Vshard"
	headerIdempotencyKey = "Idempotency-Key"
	headerClientID       = "X-Nodedb-Client-Id"
	headerSeq            = "X-Nodedb-Seq"
	headerAckedBelow     = "X-Nodedb-Acked-Below"
	headerNoForward      = "X-Nodedb-No-Forward"
	headerTimeout        = "X-Nodedb-Timeout"
	headerEpoch          = "X-Nodedb-Epoch"
)

// Config configures a Client.
type Config struct {
	// Endpoints are the API addresses (host:port) of any nodes of the
	// cluster; at least one. The client learns every other node from
	// them.
	Endpoints []string
	// TLS, when set, makes the client speak HTTPS with it (trust the
	// cluster CA's ca.crt); nil means plain HTTP.
	TLS *tls.Config
	// RequestTimeout bounds one attempt of a request (default 5s). The
	// cluster is told a slightly shorter bound (X-Nodedb-Timeout) so that it
	// can answer before the client stops waiting. Every call is also bounded
	// by its context: retries go on until the context ends.
	RequestTimeout time.Duration
	// HTTPClient, when set, is used for every request (its redirects are
	// never followed). Otherwise the client makes its own.
	HTTPClient *http.Client
	// Logger receives debug logs of retries and routing (default: none).
	Logger *slog.Logger

	// MinRefreshInterval is the least time between two reloads of the
	// routing table (default 100ms).
	MinRefreshInterval time.Duration
	// BackoffBase and BackoffMax bound the exponential backoff between
	// retries (defaults 10ms and 1s); each wait is jittered.
	BackoffBase, BackoffMax time.Duration
	// SuspectFor is how long a node that failed at the network level is
	// avoided while another node can serve (default 1s).
	SuspectFor time.Duration

	// DisableMulti sends every request in its own HTTP exchange. By default
	// the single-key requests that callers have in flight to one node share
	// POST /v1/multi exchanges (see docs/client.md): each is still an
	// independent request with its own result, but the HTTP cost is paid
	// once per exchange instead of once per request. A node that does not
	// know /v1/multi gets single requests.
	DisableMulti bool
	// MultiMaxRequests bounds the requests one exchange carries (default
	// 256).
	MultiMaxRequests int
}

// Client is a client of a nodedb cluster. It is safe for concurrent use.
type Client struct {
	cfg       Config
	endpoints []string
	scheme    string
	hc        *http.Client
	ownHTTP   *http.Transport // closed by Close when the client made it
	log       *slog.Logger
	id        uint64
	seqs      seqTracker
	rr        atomic.Uint64
	// maxRetryAge is MaxRetryAge (shorter in tests).
	maxRetryAge time.Duration
	closed      atomic.Bool

	pipesMu sync.Mutex
	pipes   map[string]*pipe // by node address
	pipesWG sync.WaitGroup   // the pipes' exchanges in flight

	mu      sync.RWMutex // guards tab, the tables' leaders and suspect
	tab     *table
	suspect map[uint64]time.Time

	refreshMu   sync.Mutex
	refreshing  chan struct{}
	refreshErr  error
	lastRefresh time.Time
}

// New returns a client of the cluster that cfg.Endpoints belong to, once it
// has loaded the routing table. It waits for one until ctx ends (at most
// 10s when ctx has no deadline).
func New(ctx context.Context, cfg Config) (*Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("nodedb client: no endpoints")
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 5 * time.Second
	}
	if cfg.MinRefreshInterval <= 0 {
		cfg.MinRefreshInterval = 100 * time.Millisecond
	}
	if cfg.BackoffBase <= 0 {
		cfg.BackoffBase = 10 * time.Millisecond
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = time.Second
	}
	cfg.BackoffMax = max(cfg.BackoffMax, cfg.BackoffBase)
	if cfg.SuspectFor <= 0 {
		cfg.SuspectFor = time.Second
	}
	if cfg.MultiMaxRequests <= 0 {
		cfg.MultiMaxRequests = 256
	}
	c := &Client{
		cfg:     cfg,
		scheme:  "http",
		log:     cfg.Logger,
		suspect: map[uint64]time.Time{},
		id:      newClientID(),

		maxRetryAge: MaxRetryAge,
	}
	c.seqs.init()
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if cfg.TLS != nil {
		c.scheme = "https"
	}
	for _, e := range cfg.Endpoints {
		a, err := hostPort(e)
		if err != nil {
			return nil, err
		}
		c.endpoints = append(c.endpoints, a)
	}
	if cfg.HTTPClient != nil {
		hc := *cfg.HTTPClient
		c.hc = &hc
	} else {
		c.ownHTTP = &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSClientConfig:     cfg.TLS,
			ForceAttemptHTTP2:   cfg.TLS != nil,
			MaxIdleConns:        256,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
			TLSHandshakeTimeout: 5 * time.Second,
		}
		c.hc = &http.Client{Transport: c.ownHTTP}
	}
	// A redirect would replay a write as a GET elsewhere: never follow one.
	c.hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	bo := c.newBackoff()
	for {
		_, err := c.currentTable(ctx)
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil || !bo.wait(ctx) {
			c.Close()
			return nil, fmt.Errorf("nodedb client: %w", err)
		}
	}
}

// hostPort accepts host:port or a URL and returns host:port.
func hostPort(e string) (string, error) {
	if strings.Contains(e, "://") {
		u, err := url.Parse(e)
		if err != nil {
			return "", fmt.Errorf("nodedb client: endpoint %q: %w", e, err)
		}
		e = u.Host
	}
	if _, _, err := net.SplitHostPort(e); err != nil {
		return "", fmt.Errorf("nodedb client: endpoint %q: want host:port", e)
	}
	return e, nil
}

// newClientID returns a random non-zero ID with the top bit clear (the
// cluster reserves IDs with the top bit set for Idempotency-Key writes).
func newClientID() uint64 {
	var b [8]byte
	for {
		_, _ = crand.Read(b[:])
		if id := binary.BigEndian.Uint64(b[:]) &^ (1 << 63); id != 0 {
			return id
		}
	}
}

// ID returns the client's exactly-once identity.
func (c *Client) ID() uint64 { return c.id }

// Close releases the client's idle connections. Calls after Close fail
// with ErrClosed.
func (c *Client) Close() error {
	c.closed.Store(true)
	c.pipesWG.Wait()
	if c.ownHTTP != nil {
		c.ownHTTP.CloseIdleConnections()
	}
	return nil
}

// seqTracker hands out write sequence numbers and knows the lowest one
// still in flight: every sequence below it is finished and never retried.
type seqTracker struct {
	mu       sync.Mutex
	next     uint64
	low      uint64
	finished map[uint64]bool // finished sequences above low
}

func (s *seqTracker) init() {
	s.next, s.low, s.finished = 1, 1, map[uint64]bool{}
}

func (s *seqTracker) begin() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	seq := s.next
	s.next++
	return seq
}

func (s *seqTracker) end(seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq != s.low {
		s.finished[seq] = true
		return
	}
	s.low++
	for s.finished[s.low] {
		delete(s.finished, s.low)
		s.low++
	}
}

// ackedBelow is the lowest sequence still in flight.
func (s *seqTracker) ackedBelow() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.low
}

// backoff is exponential with jitter: each wait is drawn from [d/2, d].
type backoff struct {
	d, max time.Duration
}

func (c *Client) newBackoff() *backoff {
	return &backoff{d: c.cfg.BackoffBase, max: c.cfg.BackoffMax}
}

// wait sleeps for the next backoff; false if ctx ended first.
func (b *backoff) wait(ctx context.Context) bool {
	d := b.d/2 + rand.N(b.d/2+1)
	b.d = min(2*b.d, b.max)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// request is one API call, sent as many times as it takes.
type request struct {
	method string
	path   string // escaped
	query  url.Values
	body   []byte
	// key routes the request (its vShard); without one, vs is the vShard
	// routed on, or -1 for a scan across vShards (any node).
	key   []byte
	vs    int64
	stale bool
	write bool
	idem  string
	seq   uint64
}

// response is an answer read in full.
type response struct {
	status int
	header http.Header
	body   []byte
	node   uint64
}

// MaxRetryAge bounds how long the client retries one write, whatever its
// context allows: no attempt starts later than this after the first, and a
// write still without a definite answer then fails with CodeOutcomeUnknown
// (or CodeUnavailable if no attempt can have reached the cluster). The
// cluster forgets the exactly-once record of a client that has not written
// to a vShard for an hour (the nodes' ClientIdleExpiry), after which a
// retry of the same write would apply again; retrying for at most this
// long keeps every retry well inside it.
const MaxRetryAge = 10 * time.Minute

// errRetryAge is why a write was given up after MaxRetryAge.
var errRetryAge = fmt.Errorf("nodedb client: write retried for %v (MaxRetryAge): %w", MaxRetryAge, context.DeadlineExceeded)

// do sends r until it gets a definite answer or ctx ends (for a write with
// an exactly-once identity, at most MaxRetryAge).
func (c *Client) do(ctx context.Context, r *request) (*response, error) {
	if c.closed.Load() {
		return nil, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if r.write && r.idem == "" {
		r.seq = c.seqs.begin()
		defer c.seqs.end(r.seq)
	}
	// Only a write with an exactly-once identity has an age bound; checked
	// before each retry, so the common write pays one clock read for it.
	var retryUntil time.Time
	if r.write && r.idem == "" {
		retryUntil = time.Now().Add(c.maxRetryAge)
	}
	var (
		bo           = c.newBackoff()
		last         error
		maybeApplied bool // a write attempt may have reached a leader
		hops         int  // immediate retries after a leader hint
		netErrs      int  // network errors so far
	)
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, c.giveUp(err, last, maybeApplied)
		}
		if attempt > 1 && !retryUntil.IsZero() && time.Now().After(retryUntil) {
			return nil, c.giveUp(errRetryAge, last, maybeApplied)
		}
		if c.closed.Load() {
			return nil, c.giveUp(ErrClosed, last, maybeApplied)
		}
		t, err := c.currentTable(ctx)
		if err != nil {
			last = err
			if !bo.wait(ctx) {
				return nil, c.giveUp(ctx.Err(), last, maybeApplied)
			}
			continue
		}
		vs := r.vs
		if r.key != nil {
			vs = int64(vshard.ForKey(r.key, t.count))
		}
		tg := c.pick(t, vs, r.stale)
		resp, err := c.send(ctx, tg, r, vs)
		if err != nil {
			dial := isDialError(err)
			if r.write && !dial {
				maybeApplied = true
			}
			if ctx.Err() != nil {
				return nil, c.giveUp(ctx.Err(), err, maybeApplied)
			}
			netErrs++
			c.log.Debug("nodedb client: network error", "node", tg.node, "addr", tg.addr, "attempt", attempt, "err", err)
			last = &Error{Code: CodeUnavailable, Message: fmt.Sprintf("node %d (%s): %v", tg.node, tg.addr, err), Err: err}
			if dial || errors.Is(err, context.DeadlineExceeded) {
				// The node is down or does not answer: avoid it for a
				// while, and look for the group's leader elsewhere. A
				// broken connection is retried at the same node (a node
				// that went down refuses the next one).
				c.markSuspect(tg.node)
				_ = c.refresh(ctx)
			}
			if netErrs > 1 && !bo.wait(ctx) {
				return nil, c.giveUp(ctx.Err(), last, maybeApplied)
			}
			continue
		}
		c.clearSuspect(tg.node)
		if resp.status == http.StatusOK {
			return resp, nil
		}
		e := parseError(resp.status, resp.body)
		last = e
		switch e.Code {
		case CodeNotLeader:
			c.log.Debug("nodedb client: not leader", "node", tg.node, "group", tg.group, "hint", e.Hint, "attempt", attempt)
			if c.learnLeader(ctx, tg.group, e.Hint) && hops < 3 {
				hops++
				continue
			}
			_ = c.refresh(ctx)
		case CodeMoved:
			c.log.Debug("nodedb client: moved", "node", tg.node, "hint", e.Hint, "attempt", attempt)
			if c.learnMoved(e.Hint) && hops < 3 {
				hops++
				continue
			}
			_ = c.refresh(ctx)
		case CodeUnavailable, CodeFrozen:
			c.log.Debug("nodedb client: retrying", "code", e.Code, "node", tg.node, "attempt", attempt, "message", e.Message)
		case CodeOutcomeUnknown:
			if r.write {
				maybeApplied = true
			}
			c.log.Debug("nodedb client: outcome unknown, retrying with the same identity", "node", tg.node, "seq", r.seq, "attempt", attempt)
		default:
			return nil, e
		}
		if e.foreign && r.write {
			// Not the cluster's answer (a proxy's?): the write may have
			// reached it.
			maybeApplied = true
		}
		hops = 0
		if !bo.wait(ctx) {
			return nil, c.giveUp(ctx.Err(), last, maybeApplied)
		}
	}
}

// giveUp is the error of a call whose context ended: outcome_unknown for a
// write that may have been applied, unavailable otherwise; both wrap the
// context's error.
func (c *Client) giveUp(ctxErr, last error, maybeApplied bool) error {
	if last == nil {
		return ctxErr
	}
	if maybeApplied {
		return &Error{Code: CodeOutcomeUnknown, Message: fmt.Sprintf("%v; the write may have been applied (last error: %v)", ctxErr, last), Err: ctxErr}
	}
	return &Error{Code: CodeUnavailable, Message: fmt.Sprintf("%v (last error: %v)", ctxErr, last), Err: ctxErr}
}

func isDialError(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

// send makes one attempt of r at tg: carried in a POST /v1/multi with
// the other requests in flight to the same node when it is a single-key
// request (see pipe), on its own otherwise.
func (c *Client) send(ctx context.Context, tg target, r *request, vs int64) (*response, error) {
	if tg.addr == "" {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("no node to send to")}
	}
	// The attempt is bounded by RequestTimeout and by ctx. No context is
	// made for the bound unless the request goes alone in an HTTP request
	// of its own: a carried request waits with a timer, which costs far
	// less than a context derived from the caller's (whose parent's lock
	// every one of many concurrent callers would take twice).
	d := c.cfg.RequestTimeout
	deadline := time.Now().Add(d)
	ctxDeadline, hasDeadline := ctx.Deadline()
	if hasDeadline && !ctxDeadline.After(deadline) {
		deadline, d = ctxDeadline, time.Until(ctxDeadline)
	}
	uri := r.path
	if len(r.query) > 0 {
		uri += "?" + r.query.Encode()
	}
	// Names are canonical already, and values share one array: a request's
	// headers cost two allocations besides their values.
	h := make(http.Header, 8)
	vals := make([]string, 0, 8)
	set := func(k, v string) {
		vals = append(vals, v)
		h[k] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
	// The cluster gets a tenth less time than the attempt, so that it can
	// answer (outcome_unknown at worst) before the client stops waiting.
	srv := (d - d/10).Truncate(time.Millisecond)
	set(headerTimeout, max(srv, time.Millisecond).String())
	if r.body != nil {
		set("Content-Type", "application/octet-stream")
	}
	if !r.stale && vs >= 0 {
		set(headerNoForward, "1")
	}
	if vs >= 0 && tg.epoch != 0 {
		set(headerEpoch, strconv.FormatUint(tg.epoch, 10))
	}
	if r.write {
		if r.idem != "" {
			set(headerIdempotencyKey, r.idem)
		} else {
			set(headerClientID, strconv.FormatUint(c.id, 10))
			set(headerSeq, strconv.FormatUint(r.seq, 10))
			set(headerAckedBelow, strconv.FormatUint(c.seqs.ackedBelow(), 10))
		}
	}
	alone := func() (*response, error) {
		actx := ctx
		if !hasDeadline || deadline.Before(ctxDeadline) {
			var cancel context.CancelFunc
			actx, cancel = context.WithDeadline(ctx, deadline)
			defer cancel()
		}
		return c.sendAlone(actx, r.method, tg, uri, h, r.body)
	}
	if !c.cfg.DisableMulti && strings.HasPrefix(r.path, "/v1/kv/") {
		if p := c.pipeTo(tg.addr); p != nil {
			resp, err := p.do(ctx, deadline, r.method, uri, h, r.body, alone)
			if !errors.Is(err, errMultiUnsupported) {
				if resp != nil {
					resp.node = tg.node
				}
				return resp, err
			}
		}
	}
	return alone()
}

// sendAlone sends one request in its own HTTP exchange.
func (c *Client) sendAlone(ctx context.Context, method string, tg target, uri string, h http.Header, body []byte) (*response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.scheme+"://"+tg.addr+uri, rd)
	if err != nil {
		return nil, invalidArg("%v", err)
	}
	req.Header = h
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	return &response{status: resp.StatusCode, header: resp.Header, body: b, node: tg.node}, nil
}

// parseError decodes an error answer.
func parseError(status int, body []byte) *Error {
	var eb struct {
		Code    string         `json:"code"`
		Message string         `json:"message"`
		Hint    map[string]any `json:"hint"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&eb); err != nil || eb.Code == "" {
		msg := strings.TrimSpace(string(body))
		if len(msg) > 200 {
			msg = msg[:200] + "…"
		}
		code := CodeInternal
		switch {
		case status == http.StatusBadGateway, status == http.StatusServiceUnavailable, status == http.StatusGatewayTimeout:
			code = CodeUnavailable
		case status >= 300 && status < 500:
			code = CodeInvalidArgument
		}
		return &Error{Code: code, Message: fmt.Sprintf("HTTP %d: %s", status, msg), Status: status, foreign: true}
	}
	return &Error{Code: eb.Code, Message: eb.Message, Hint: eb.Hint, Status: status}
}
