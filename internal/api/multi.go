package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/nodedb/nodedb-cluster/internal/multiwire"
	"github.com/nodedb/nodedb-cluster/internal/server"
)

// newMulti returns the POST /v1/multi handler over inner (whose KV routes
// are rest's), carrying values up to maxValue bytes.
func newMulti(inner http.Handler, rest *rest, maxValue int, w *workers) *multi {
	lim := multiwire.DefaultLimits()
	lim.MaxBody = max(lim.MaxBody, maxValue+64<<10)
	return &multi{inner: inner, rest: rest, lim: lim, workers: w}
}

// multi serves POST /v1/multi: many independent single-key requests in one
// HTTP exchange (see package multiwire for why and how). Each request runs
// through the same handler it would reach alone, concurrently with the
// others, and its answer is streamed back as soon as it is ready. Only the
// single-key KV routes may be carried: a batch cannot nest another, nor
// reach the operator or profiling routes.
type multi struct {
	inner   http.Handler
	rest    *rest
	lim     multiwire.Limits
	workers *workers
}

// answerBufs recycles the buffers exchanges encode their answers into; a
// buffer grown past maxPooledAnswerBuf (a large value) is left to the
// collector.
var answerBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

const maxPooledAnswerBuf = 256 << 10

// maxMultiBody bounds a POST /v1/multi body before it is read.
const maxMultiBody = 64 << 20

func (m *multi) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxMultiBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, &server.APIError{Code: server.CodeTooLarge, Message: fmt.Sprintf("multi body larger than %d bytes", maxMultiBody)})
			return
		}
		writeError(w, invalid("read multi body: %v", err))
		return
	}
	reqs, err := multiwire.DecodeRequests(body, m.lim)
	if err != nil {
		writeError(w, invalid("%v", err))
		return
	}
	ctxs, stop := workBounds(r.Context(), reqs)
	defer stop() // after every request has answered: see the loop below
	w.Header().Set("Content-Type", multiwire.ContentType)
	bp := answerBufs.Get().(*[]byte)
	out := append((*bp)[:0], multiwire.Version)
	defer func() {
		if cap(out) <= maxPooledAnswerBuf {
			*bp = out[:0]
			answerBufs.Put(bp)
		}
	}()
	if len(reqs) == 1 {
		// A lone request runs on this goroutine: handing it to a worker
		// and its answer back would cost two goroutine wake-ups, each a
		// wait for a processor under load, and nothing runs beside it.
		resp := m.serveOne(ctxs[0], r, 0, &reqs[0])
		out = multiwire.AppendResponse(out, &resp)
		_, _ = w.Write(out) // one write with a Content-Length
		return
	}
	x := m.newExchange(r, reqs, ctxs)
	for i := range reqs {
		if !x.start(i) {
			x.toWorker(i)
		}
	}

	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	// Every request sends exactly one answer, so counting them is enough to
	// know when all have answered; no goroutine waits to close a channel.
	left := len(reqs)
	for left > 0 {
		resp, _ := x.next(true)
		out = multiwire.AppendResponse(out, &resp)
		left--
		// Write what is ready now in one go: answers that finish together
		// (one fsync or one ReadIndex round covers many) share a system
		// call. Their workers were woken together but finish one by one,
		// so give them one turn of the scheduler before writing.
		for yielded := false; left > 0; {
			if more, ok := x.next(false); ok {
				out = multiwire.AppendResponse(out, &more)
				left--
				continue
			}
			if yielded {
				break
			}
			runtime.Gosched()
			yielded = true
		}
		if _, err := w.Write(out); err != nil {
			// The client is gone; the requests still finish (their
			// contexts end with the connection's) and are drained.
			for ; left > 0; left-- {
				x.next(true)
			}
			return
		}
		out = out[:0]
		if left > 0 {
			// Others are still running: send these answers now. The
			// last ones go out when the handler returns, in the same
			// write as the end of the response.
			_ = rc.Flush()
		}
	}
}

// exchange runs the requests of one /v1/multi exchange that carries more
// than one. A plain GET, PUT or DELETE of a key whose group this node leads
// is started here (server.StartKVGet, StartKVPut, StartKVDelete) and
// answered on the exchange's goroutine once its read index is confirmed or
// its write applied: no worker wakes for it, no worker hands its answer
// back, and the requests of one group in the exchange reach its replica
// together (the GETs share one ReadIndex round). Anything else goes to an
// API worker, which blocks in the service until its answer. A started
// request that fails where it started without having changed anything
// (leadership moved before a write reached the log) goes to a worker, which
// answers it as if it had gone there at first; a started GET whose time
// runs out goes to a worker too, and a started write whose time runs out is
// answered outcome_unknown, as a worker's would be.
type exchange struct {
	m     *multi
	outer *http.Request
	reqs  []multiwire.Request
	ctxs  []context.Context
	done  chan multiwire.Response // answers from workers
	ready chan int                // started requests that are done
	// started holds the started requests by request index. They share one
	// context, startCtx (the exchange's requests share one unless their
	// timeouts differ: requests with another go to workers), and pending
	// counts those not yet answered.
	started  []startedReq
	startCtx context.Context
	pending  int
	getter   asyncGetter
	writer   asyncWriter
}

// startedReq is a request started on the exchange's goroutine: a GET or a
// write (one of get and write is set).
type startedReq struct {
	get   server.PendingGet
	write server.PendingWrite
	key   []byte
}

func (st *startedReq) none() bool { return st.get == nil && st.write == nil }

// asyncGetter is what the exchange needs to start GETs (*server.Server
// has it; a Service without it sends every GET to a worker).
type asyncGetter interface {
	StartKVGet(key []byte, o server.ReadOptions, notify func()) (server.PendingGet, bool)
	FinishKVGet(p server.PendingGet) (server.GetResult, bool, error)
}

// asyncWriter is what the exchange needs to start PUTs and DELETEs
// (*server.Server has it; a Service without it sends every write to a
// worker).
type asyncWriter interface {
	StartKVPut(key, value []byte, o server.WriteOptions, notify func()) (server.PendingWrite, bool)
	StartKVDelete(key []byte, o server.WriteOptions, notify func()) (server.PendingWrite, bool)
	FinishKVWrite(p server.PendingWrite) (server.WriteResult, bool, error)
	AbandonKVWrite(cause error) error
}

var (
	_ asyncGetter = (*server.Server)(nil)
	_ asyncWriter = (*server.Server)(nil)
)

func (m *multi) newExchange(outer *http.Request, reqs []multiwire.Request, ctxs []context.Context) *exchange {
	x := &exchange{m: m, outer: outer, reqs: reqs, ctxs: ctxs, done: make(chan multiwire.Response, len(reqs))}
	x.getter, _ = m.rest.svc.(asyncGetter)
	x.writer, _ = m.rest.svc.(asyncWriter)
	return x
}

// toWorker hands request i to an API worker.
func (x *exchange) toWorker(i int) {
	x.m.workers.run(func() {
		x.done <- x.m.serveOne(x.ctxs[i], x.outer, i, &x.reqs[i])
	})
}

// start starts request i here when it is a plain GET, PUT or DELETE that
// this node can serve as its group's leader (see exchange), and reports
// whether it did. Whatever it declines, a worker serves from the start: a
// request is declined only before anything was proposed or read.
func (x *exchange) start(i int) bool {
	sr := &x.reqs[i]
	switch {
	case x.startCtx != nil && x.ctxs[i] != x.startCtx:
		return false
	case sr.Method == http.MethodGet:
		if x.getter == nil {
			return false
		}
	case sr.Method == http.MethodPut || sr.Method == http.MethodDelete:
		if x.writer == nil {
			return false
		}
	default:
		return false
	}
	key, ok := plainKey(sr.URI)
	if !ok {
		return false
	}
	k, err := x.m.rest.checkKey(key)
	if err != nil {
		return false
	}
	if x.ready == nil {
		x.ready = make(chan int, len(x.reqs))
		x.started = make([]startedReq, len(x.reqs))
	}
	ready := x.ready
	notify := func() { ready <- i } // never blocks: room for every request
	st := startedReq{key: k}
	switch sr.Method {
	case http.MethodGet:
		o, err := readOptionsOf(nil, sr.Header)
		if err != nil {
			return false
		}
		if st.get, ok = x.getter.StartKVGet(k, o, notify); !ok {
			return false
		}
	default:
		o, err := writeOptionsOf(nil, sr.Header)
		if err != nil {
			return false
		}
		if sr.Method == http.MethodDelete {
			st.write, ok = x.writer.StartKVDelete(k, o, notify)
		} else {
			if int64(len(sr.Body)) > x.m.rest.maxValue() {
				return false
			}
			value := sr.Body
			if value == nil {
				value = []byte{} // as read from an empty body
			}
			st.write, ok = x.writer.StartKVPut(k, value, o, notify)
		}
		if !ok {
			return false
		}
	}
	x.started[i] = st
	x.startCtx = x.ctxs[i]
	x.pending++
	return true
}

// next returns the next answer: from a worker, or a started request
// answered here. With wait false it returns false at once when none is
// ready.
func (x *exchange) next(wait bool) (multiwire.Response, bool) {
	for {
		var i int
		if wait {
			var expired <-chan struct{}
			if x.pending > 0 {
				expired = x.startCtx.Done()
			}
			select {
			case resp := <-x.done:
				return resp, true
			case i = <-x.ready:
			case <-expired:
				x.expire()
				continue
			}
		} else {
			select {
			case resp := <-x.done:
				return resp, true
			case i = <-x.ready:
			default:
				return multiwire.Response{}, false
			}
		}
		if resp, ok := x.finish(i); ok {
			return resp, true
		}
	}
}

// expire answers the started requests not yet answered once their context
// has ended: GETs go to workers, which answer them as their context (now
// ended) says, their reads left to finish; a write already decided gets its
// answer, one still undecided outcome_unknown. Every answer goes through
// x.done, which has room for one per request.
func (x *exchange) expire() {
	for i := range x.started {
		st := x.started[i]
		if st.none() {
			continue
		}
		x.started[i] = startedReq{}
		if st.get != nil {
			x.toWorker(i)
			continue
		}
		select {
		case <-st.write.Done():
			if resp, ok := x.answerWrite(i, st); ok {
				x.done <- resp
			}
		default:
			x.done <- errorAnswer(i, x.writer.AbandonKVWrite(x.startCtx.Err()))
		}
	}
	x.pending = 0
}

// finish answers started request i, or hands it to a worker (false) when
// it failed where it started (see exchange) or has been answered already.
func (x *exchange) finish(i int) (multiwire.Response, bool) {
	st := x.started[i]
	if st.none() {
		return multiwire.Response{}, false // answered by expire
	}
	x.started[i] = startedReq{}
	x.pending--
	if st.write != nil {
		return x.answerWrite(i, st)
	}
	res, ok, err := x.getter.FinishKVGet(st.get)
	if !ok {
		x.toWorker(i)
		return multiwire.Response{}, false
	}
	if err == nil && res.Found {
		return foundAnswer(i, res), true
	}
	rec := newRecorder()
	writeGet(rec, st.key, res, err)
	return rec.response(i), true
}

// answerWrite answers started write i, which is done, or hands it to a
// worker (false) when it never reached a log.
func (x *exchange) answerWrite(i int, st startedReq) (multiwire.Response, bool) {
	res, ok, err := x.writer.FinishKVWrite(st.write)
	if !ok {
		x.toWorker(i)
		return multiwire.Response{}, false
	}
	if err != nil {
		return errorAnswer(i, err), true
	}
	return writtenAnswer(i, res), true
}

// maxBounds bounds the distinct X-Nodedb-Timeout values of an exchange
// that share a context; past it, requests get a context each.
const maxBounds = 8

// workBounds returns the context of each request's work: the exchange's,
// bounded by the request's X-Nodedb-Timeout. Requests with the same value
// (the Go client gives all of its requests the same) share one context and
// its timer, made once for the exchange. stop releases them; call it once
// every request is done.
func workBounds(outer context.Context, reqs []multiwire.Request) (ctxs []context.Context, stop func()) {
	type bound struct {
		v   string
		ctx context.Context
	}
	var bounds []bound
	var cancels []context.CancelFunc
	ctxs = make([]context.Context, len(reqs))
	for i := range reqs {
		v := reqs[i].Header.Get(HeaderTimeout)
		j := slices.IndexFunc(bounds, func(b bound) bool { return b.v == v })
		if j >= 0 {
			ctxs[i] = bounds[j].ctx
			continue
		}
		ctx, cancel := context.WithTimeout(outer, timeoutValue(v))
		cancels = append(cancels, cancel)
		ctxs[i] = ctx
		if len(bounds) < maxBounds {
			bounds = append(bounds, bound{v, ctx})
		}
	}
	return ctxs, func() {
		for _, c := range cancels {
			c()
		}
	}
}

// serveOne runs one carried request; ctx bounds its work.
func (m *multi) serveOne(ctx context.Context, outer *http.Request, i int, sr *multiwire.Request) multiwire.Response {
	if !strings.HasPrefix(sr.URI, "/v1/kv/") || (sr.Method != http.MethodPut && sr.Method != http.MethodGet && sr.Method != http.MethodDelete) {
		rec := newRecorder()
		writeError(rec, invalid("a multi request carries only PUT, GET and DELETE of /v1/kv/{key}, not %s %.100q", sr.Method, sr.URI))
		return rec.response(i)
	}
	if key, ok := plainKey(sr.URI); ok {
		return m.plain(ctx, i, sr, key)
	}
	req, err := http.NewRequestWithContext(outer.Context(), sr.Method, sr.URI, bytes.NewReader(sr.Body))
	if err != nil {
		rec := newRecorder()
		writeError(rec, invalid("request %d: %v", i, err))
		return rec.response(i)
	}
	req.Header = sr.Header
	req.RemoteAddr = outer.RemoteAddr
	req.TLS = outer.TLS
	req.Host = outer.Host
	rec := newRecorder()
	m.inner.ServeHTTP(rec, req)
	return rec.response(i)
}

// plainKey returns the key of a URI /v1/kv/{key} with no query, when the
// URI routes there as it is (no path cleaning): the URI of the commonest
// carried requests (a GET, a PUT without a condition, a DELETE), which
// m.plain serves without building an http.Request or routing it. Any other
// URI goes the general way.
func plainKey(uri string) (string, bool) {
	seg, ok := strings.CutPrefix(uri, "/v1/kv/")
	if !ok || seg == "" || seg == "." || seg == ".." || strings.ContainsAny(seg, "/?#") {
		return "", false
	}
	key, err := url.PathUnescape(seg)
	if err != nil {
		return "", false
	}
	return key, true
}

// plain serves a carried GET, PUT or DELETE of key exactly as rest's
// handlers would: the same options (from the headers: the URI has no
// query), limits, bound of work (ctx, from workBounds) and answer.
func (m *multi) plain(ctx context.Context, i int, sr *multiwire.Request, key string) multiwire.Response {
	k, err := m.rest.checkKey(key)
	if err != nil {
		return errorAnswer(i, err)
	}
	svc := m.rest.svc
	if sr.Method == http.MethodGet {
		o, err := readOptionsOf(nil, sr.Header)
		if err != nil {
			return errorAnswer(i, err)
		}
		res, err := svc.KVGet(ctx, k, o)
		if err == nil && res.Found {
			return foundAnswer(i, res)
		}
		rec := newRecorder()
		writeGet(rec, k, res, err)
		return rec.response(i)
	}
	o, err := writeOptionsOf(nil, sr.Header)
	if err != nil {
		return errorAnswer(i, err)
	}
	var res server.WriteResult
	if sr.Method == http.MethodDelete {
		res, err = svc.KVDelete(ctx, k, o)
	} else {
		if max := m.rest.maxValue(); int64(len(sr.Body)) > max {
			return errorAnswer(i, valueTooLarge(int64(len(sr.Body)), max))
		}
		value := sr.Body
		if value == nil {
			value = []byte{} // as read from an empty body
		}
		res, err = svc.KVPut(ctx, k, value, o)
	}
	if err != nil {
		return errorAnswer(i, err)
	}
	return writtenAnswer(i, res)
}

// errorAnswer is writeError's answer to a carried request.
func errorAnswer(i int, err error) multiwire.Response {
	rec := newRecorder()
	writeError(rec, err)
	return rec.response(i)
}

// foundAnswer is writeGet's answer to a GET that found its key, built
// without a recorder: the commonest carried answer, which would otherwise
// cost a header map filled through Header.Set and a copy of the value.
// TestCarriedMatchesAlone holds the two to the same bytes.
func foundAnswer(i int, res server.GetResult) multiwire.Response {
	h := answerHeader(
		HeaderVShard, strconv.FormatUint(uint64(res.VShard), 10),
		HeaderVersion, strconv.FormatUint(res.Version, 10),
		"Content-Type", "application/octet-stream",
		"Content-Length", strconv.Itoa(len(res.Value)))
	return multiwire.Response{Index: i, Status: http.StatusOK, Header: h, Body: res.Value}
}

// writtenAnswer is writeWrite's answer to a write that succeeded, built
// the same way as foundAnswer.
func writtenAnswer(i int, res server.WriteResult) multiwire.Response {
	h := answerHeader(
		HeaderVersion, strconv.FormatUint(res.Version, 10),
		HeaderVShard, strconv.FormatUint(uint64(res.VShard), 10),
		"Content-Type", "application/json")
	return multiwire.Response{Index: i, Status: http.StatusOK, Header: h, Body: appendWriteResult(make([]byte, 0, 64), res)}
}

// answerHeader returns a header of canonical names (not checked) and one
// value each, given as name, value pairs, with every value in one backing
// array.
func answerHeader(pairs ...string) http.Header {
	n := len(pairs) / 2
	h := make(http.Header, n)
	vals := make([]string, n)
	for i := range n {
		vals[i] = pairs[2*i+1]
		h[pairs[2*i]] = vals[i : i+1 : i+1]
	}
	return h
}

// recorder is the http.ResponseWriter of a carried request.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func newRecorder() *recorder { return &recorder{header: http.Header{}} }

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	return r.body.Write(b)
}

func (r *recorder) response(i int) multiwire.Response {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return multiwire.Response{Index: i, Status: r.status, Header: r.header, Body: r.body.Bytes()}
}
