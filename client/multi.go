package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/multiwire"
)

// errMultiUnsupported: the node does not serve POST /v1/multi (an older
// node); the request is sent on its own instead.
var errMultiUnsupported = errors.New("nodedb client: node does not serve /v1/multi")

// pipe coalesces the single-key requests in flight to one node into
// POST /v1/multi exchanges (package multiwire). Batching is natural, never
// timed: a request is sent at once when fewer than maxSending exchanges
// are being sent; otherwise it waits for the next one, which takes
// everything that queued meanwhile. So one caller alone pays no delay,
// and many callers share exchanges in proportion to the load.
//
// An exchange counts as being sent until its first answer arrives or
// sendingFor passes, whichever is first; its answers stream back in the
// order they finish, so a slow request holds up neither the others in its
// exchange nor the next exchanges.
type pipe struct {
	c    *Client
	addr string

	mu          sync.Mutex
	queue       []*piped
	sending     int
	unsupported bool
}

const (
	// maxAnswerBytes bounds one answer's body in a stream (a value, or an
	// error's JSON); a node's value limit is far below it.
	maxAnswerBytes = 64 << 20

	maxSending = 2
	sendingFor = 2 * time.Millisecond
)

// piped is one request waiting in, or carried by, an exchange.
type piped struct {
	ctx      context.Context // the caller's
	deadline time.Time       // the attempt's end, at or before ctx's
	req      multiwire.Request
	done     chan pipedResult // buffered: the exchange never blocks on it
}

type pipedResult struct {
	resp *response
	err  error
}

// pipeTo returns the pipe to addr, or nil when the client is closed.
func (c *Client) pipeTo(addr string) *pipe {
	c.pipesMu.Lock()
	defer c.pipesMu.Unlock()
	if c.closed.Load() {
		return nil
	}
	if c.pipes == nil {
		c.pipes = map[string]*pipe{}
	}
	p := c.pipes[addr]
	if p == nil {
		p = &pipe{c: c, addr: addr}
		c.pipes[addr] = p
	}
	return p
}

// do sends one request through the pipe and waits for its answer or ctx.
// A request that finds the pipe idle is sent by its caller in its own
// plain exchange (alone): a lone request pays neither a goroutine hand-off
// nor the framing and streamed answer of /v1/multi; the requests that come
// while it is being sent queue for the next /v1/multi exchange.
func (p *pipe) do(ctx context.Context, deadline time.Time, method, uri string, h http.Header, body []byte, alone func() (*response, error)) (*response, error) {
	pr := &piped{ctx: ctx, deadline: deadline, req: multiwire.Request{Method: method, URI: uri, Header: h, Body: body}, done: make(chan pipedResult, 1)}
	p.mu.Lock()
	if p.unsupported {
		p.mu.Unlock()
		return nil, errMultiUnsupported
	}
	if p.sending == 0 && len(p.queue) == 0 {
		p.sending++
		p.mu.Unlock()
		var slot sync.Once
		t := time.AfterFunc(sendingFor, func() { p.sent(&slot) })
		defer t.Stop()
		defer p.sent(&slot)
		return alone()
	}
	p.queue = append(p.queue, pr)
	p.startLocked()
	p.mu.Unlock()
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	// Either way out before the answer, the request may still be carried
	// and applied; the caller treats this like a connection that timed out.
	select {
	case res := <-pr.done:
		return res.resp, res.err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return nil, context.DeadlineExceeded
	}
}

// startLocked starts an exchange with what is queued if a sending slot is
// free. Caller holds p.mu.
func (p *pipe) startLocked() {
	if p.sending >= maxSending || len(p.queue) == 0 {
		return
	}
	n := min(len(p.queue), p.c.cfg.MultiMaxRequests)
	batch := make([]*piped, n)
	copy(batch, p.queue)
	p.queue = append(p.queue[:0], p.queue[n:]...)
	p.sending++
	p.c.pipesWG.Add(1)
	go func() {
		defer p.c.pipesWG.Done()
		p.exchange(batch)
	}()
}

// sent frees the exchange's sending slot, once, and starts the next
// exchange if requests are waiting.
func (p *pipe) sent(once *sync.Once) {
	once.Do(func() {
		p.mu.Lock()
		p.sending--
		p.startLocked()
		p.mu.Unlock()
	})
}

// exchange sends batch in one POST /v1/multi and delivers every answer.
func (p *pipe) exchange(batch []*piped) {
	var slot sync.Once
	defer p.sent(&slot)
	// Requests whose caller gave up are not sent.
	live := batch[:0]
	var deadline time.Time
	now := time.Now()
	for _, pr := range batch {
		if err := pr.ctx.Err(); err != nil {
			pr.done <- pipedResult{err: err}
			continue
		}
		if !now.Before(pr.deadline) {
			pr.done <- pipedResult{err: context.DeadlineExceeded}
			continue
		}
		live = append(live, pr)
		if pr.deadline.After(deadline) {
			deadline = pr.deadline
		}
	}
	if len(live) == 0 {
		return
	}
	base := context.Background()
	if len(live) == 1 {
		base = live[0].ctx // one caller: its cancellation ends the exchange
	}
	ctx, cancel := context.WithDeadline(base, deadline)
	defer cancel()
	reqs := make([]multiwire.Request, len(live))
	for i, pr := range live {
		reqs[i] = pr.req
	}
	fail := func(err error) {
		for _, pr := range live {
			if pr != nil {
				pr.done <- pipedResult{err: err}
			}
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.c.scheme+"://"+p.addr+"/v1/multi", bytes.NewReader(multiwire.AppendRequests(nil, reqs)))
	if err != nil {
		fail(err)
		return
	}
	req.Header.Set("Content-Type", multiwire.ContentType)
	// The slot is freed after sendingFor even if no answer has come: a
	// slow request must not stop the requests behind it from being sent.
	t := time.AfterFunc(sendingFor, func() { p.sent(&slot) })
	defer t.Stop()
	resp, err := p.c.hc.Do(req)
	if err != nil {
		fail(err)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed {
		p.mu.Lock()
		p.unsupported = true
		p.mu.Unlock()
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		fail(errMultiUnsupported)
		return
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != multiwire.ContentType {
		// The node refused the exchange as a whole: every request gets
		// that answer, as if it had been sent alone.
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		for i, pr := range live {
			pr.done <- pipedResult{resp: &response{status: resp.StatusCode, header: resp.Header, body: b}}
			live[i] = nil
		}
		return
	}
	lim := multiwire.DefaultLimits()
	lim.MaxBody = maxAnswerBytes
	rr := multiwire.NewResponseReader(resp.Body, lim)
	left := len(live)
	for left > 0 {
		a, err := rr.Next(len(live))
		if err == io.EOF {
			err = fmt.Errorf("%w: the stream ended with %d answers missing", multiwire.ErrMalformed, left)
		}
		if err != nil {
			fail(err)
			return
		}
		p.sent(&slot)
		pr := live[a.Index]
		if pr == nil {
			fail(fmt.Errorf("%w: a second answer to request %d", multiwire.ErrMalformed, a.Index))
			return
		}
		pr.done <- pipedResult{resp: &response{status: a.Status, header: a.Header, body: a.Body}}
		live[a.Index] = nil
		left--
	}
}
