package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nodedb/nodedb-cluster/internal/kv"
	"github.com/nodedb/nodedb-cluster/internal/server"
)

// REST handlers of docs/api.md. Every answer is JSON except a GET of a
// key's value; every error is {"code", "message", "hint"} with the status
// of its code.

// Headers of the REST API.
const (
	HeaderVersion        = "X-Nodedb-Version"
	HeaderVShard         = "X-Nodedb-Vshard"
	HeaderIdempotencyKey = "Idempotency-Key"
	HeaderClientID       = "X-Nodedb-Client-Id"
	HeaderSeq            = "X-Nodedb-Seq"
	HeaderAckedBelow     = "X-Nodedb-Acked-Below"
	HeaderNoForward      = "X-Nodedb-No-Forward"
	HeaderEpoch          = "X-Nodedb-Epoch"
	// HeaderTimeout bounds the request's work in the cluster (a Go
	// duration, 1ms to 60s; default 10s).
	HeaderTimeout = "X-Nodedb-Timeout"
)

// requestTimeout bounds one request's work in the cluster when the client
// sets no deadline of its own (Go's HTTP server gives none).
const requestTimeout = 10 * time.Second

type rest struct {
	svc Service
}

func (h *rest) register(mux *http.ServeMux) {
	mux.HandleFunc("PUT /v1/kv/{key}", h.put)
	mux.HandleFunc("GET /v1/kv/{key}", h.get)
	mux.HandleFunc("DELETE /v1/kv/{key}", h.del)
	mux.HandleFunc("GET /v1/kv", h.scan)
	mux.HandleFunc("GET /v1/cluster", h.cluster)
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", h.readyz)
}

// ErrorBody is the JSON of an error answer.
type ErrorBody struct {
	Code    string         `json:"code"`
	Message string         `json:"message"`
	Hint    map[string]any `json:"hint,omitempty"`
}

// Status returns the HTTP status of an API error code.
func Status(code string) int { return server.HTTPStatus(code) }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	var ae *server.APIError
	if !errors.As(err, &ae) {
		ae = &server.APIError{Code: server.CodeInternal, Message: err.Error()}
	}
	if ae.Retryable() {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, Status(ae.Code), ErrorBody{Code: ae.Code, Message: ae.Message, Hint: ae.Hint})
}

func invalid(format string, args ...any) error {
	return &server.APIError{Code: server.CodeInvalidArgument, Message: fmt.Sprintf(format, args...)}
}

// writeOptions reads the write parameters and headers.
func writeOptions(r *http.Request) (server.WriteOptions, error) {
	return writeOptionsOf(r.URL.Query(), r.Header)
}

// writeOptionsOf reads the write parameters from a request's query and
// headers (q may be nil: no query).
func writeOptionsOf(q url.Values, hd http.Header) (server.WriteOptions, error) {
	var o server.WriteOptions
	if v := q.Get("if_version"); v != "" || q.Has("if_version") {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return o, invalid("if_version %q: want a non-negative integer", v)
		}
		o.IfVersion = &n
	}
	o.IdempotencyKey = hd.Get(HeaderIdempotencyKey)
	for _, f := range []struct {
		h   string
		dst *uint64
	}{{HeaderClientID, &o.Client}, {HeaderSeq, &o.Seq}, {HeaderAckedBelow, &o.AckedBelow}} {
		if v := hd.Get(f.h); v != "" {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return o, invalid("%s %q: want a decimal uint64", f.h, v)
			}
			*f.dst = n
		}
	}
	o.NoForward = hd.Get(HeaderNoForward) == "1"
	var err error
	o.Epoch, err = epochHeader(hd)
	return o, err
}

// epochHeader reads the optional X-Nodedb-Epoch header.
func epochHeader(hd http.Header) (uint64, error) {
	v := hd.Get(HeaderEpoch)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, invalid("%s %q: want a decimal uint64", HeaderEpoch, v)
	}
	return n, nil
}

// readOptions reads consistency and max_staleness.
func readOptions(r *http.Request) (server.ReadOptions, error) {
	return readOptionsOf(r.URL.Query(), r.Header)
}

// readOptionsOf reads the read parameters from a request's query and
// headers (q may be nil: no query).
func readOptionsOf(q url.Values, hd http.Header) (server.ReadOptions, error) {
	var o server.ReadOptions
	switch c := q.Get("consistency"); c {
	case "", "linearizable":
		if q.Has("max_staleness") {
			return o, invalid("max_staleness needs consistency=stale")
		}
	case "stale":
		o.Consistency = server.Stale
		d, err := time.ParseDuration(q.Get("max_staleness"))
		if err != nil || d < time.Millisecond {
			return o, invalid("consistency=stale needs max_staleness, a duration of at least 1ms (e.g. 2s)")
		}
		o.MaxStaleness = d
	default:
		return o, invalid("consistency %q: want linearizable or stale", c)
	}
	o.NoForward = hd.Get(HeaderNoForward) == "1"
	var err error
	o.Epoch, err = epochHeader(hd)
	return o, err
}

// key returns the path's key, bounded.
func (h *rest) key(r *http.Request) ([]byte, error) { return h.checkKey(r.PathValue("key")) }

func (h *rest) checkKey(k string) ([]byte, error) {
	if k == "" {
		return nil, invalid("empty key")
	}
	if max := h.svc.Limits().MaxKeySize; max > 0 && len(k) > max {
		return nil, &server.APIError{Code: server.CodeTooLarge, Message: fmt.Sprintf("key is %d bytes, the limit is %d", len(k), max)}
	}
	return []byte(k), nil
}

func (h *rest) put(w http.ResponseWriter, r *http.Request) {
	key, err := h.key(r)
	if err != nil {
		writeError(w, err)
		return
	}
	o, err := writeOptions(r)
	if err != nil {
		writeError(w, err)
		return
	}
	max := h.maxValue()
	if r.ContentLength > max {
		writeError(w, valueTooLarge(r.ContentLength, max))
		return
	}
	value, err := io.ReadAll(http.MaxBytesReader(w, r.Body, max))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			err = &server.APIError{Code: server.CodeTooLarge, Message: fmt.Sprintf("value is over the limit of %d bytes", max)}
		} else {
			err = invalid("read body: %v", err)
		}
		writeError(w, err)
		return
	}
	ctx, cancel := withTimeout(r)
	defer cancel()
	res, err := h.svc.KVPut(ctx, key, value, o)
	writeWrite(w, res, err)
}

func (h *rest) del(w http.ResponseWriter, r *http.Request) {
	key, err := h.key(r)
	if err != nil {
		writeError(w, err)
		return
	}
	o, err := writeOptions(r)
	if err != nil {
		writeError(w, err)
		return
	}
	ctx, cancel := withTimeout(r)
	defer cancel()
	res, err := h.svc.KVDelete(ctx, key, o)
	writeWrite(w, res, err)
}

// maxValue is the largest value a PUT may carry.
func (h *rest) maxValue() int64 {
	if max := int64(h.svc.Limits().MaxValueSize); max > 0 {
		return max
	}
	return kv.DefaultMaxValueSize
}

func valueTooLarge(n, max int64) error {
	return &server.APIError{Code: server.CodeTooLarge, Message: fmt.Sprintf("value is %d bytes, the limit is %d", n, max)}
}

// writeWrite writes the answer to a write: its result, or err. The JSON is
// what encoding/json makes of server.WriteResult (TestWriteResultJSON),
// written without reflection: it is the answer of every write.
func writeWrite(w http.ResponseWriter, res server.WriteResult, err error) {
	if err != nil {
		writeError(w, err)
		return
	}
	hd := w.Header()
	hd.Set(HeaderVersion, strconv.FormatUint(res.Version, 10))
	hd.Set(HeaderVShard, strconv.FormatUint(uint64(res.VShard), 10))
	hd.Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.Write(appendWriteResult(make([]byte, 0, 64), res))
}

func appendWriteResult(b []byte, res server.WriteResult) []byte {
	b = append(b, `{"version":`...)
	b = strconv.AppendUint(b, res.Version, 10)
	b = append(b, `,"vshard":`...)
	b = strconv.AppendUint(b, uint64(res.VShard), 10)
	b = append(b, `,"prev_version":`...)
	b = strconv.AppendUint(b, res.PrevVersion, 10)
	return append(b, "}\n"...)
}

func (h *rest) get(w http.ResponseWriter, r *http.Request) {
	key, err := h.key(r)
	if err != nil {
		writeError(w, err)
		return
	}
	o, err := readOptions(r)
	if err != nil {
		writeError(w, err)
		return
	}
	ctx, cancel := withTimeout(r)
	defer cancel()
	res, err := h.svc.KVGet(ctx, key, o)
	writeGet(w, key, res, err)
}

// writeGet writes the answer to a GET of key: its value, or err.
func writeGet(w http.ResponseWriter, key []byte, res server.GetResult, err error) {
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set(HeaderVShard, strconv.FormatUint(uint64(res.VShard), 10))
	if !res.Found {
		writeError(w, &server.APIError{Code: server.CodeNotFound, Message: fmt.Sprintf("key %q does not exist", key)})
		return
	}
	w.Header().Set(HeaderVersion, strconv.FormatUint(res.Version, 10))
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(res.Value)))
	w.WriteHeader(http.StatusOK)
	w.Write(res.Value)
}

// ScanItem is one key of a scan answer.
type ScanItem struct {
	Key         string `json:"key"`
	Value       string `json:"value,omitempty"`
	ValueBase64 []byte `json:"value_base64,omitempty"`
	Version     uint64 `json:"version"`
	VShard      uint32 `json:"vshard"`
}

// ScanAnswer is a scan page.
type ScanAnswer struct {
	Items  []ScanItem `json:"items"`
	Cursor string     `json:"cursor"`
}

func (h *rest) scan(w http.ResponseWriter, r *http.Request) {
	o, err := readOptions(r)
	if err != nil {
		writeError(w, err)
		return
	}
	q := r.URL.Query()
	limit := 0
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 {
			writeError(w, invalid("limit %q: want a positive integer", v))
			return
		}
	}
	prefix := q.Get("prefix")
	if max := h.svc.Limits().MaxKeySize; max > 0 && len(prefix) > max {
		writeError(w, &server.APIError{Code: server.CodeTooLarge, Message: "prefix over the key size limit"})
		return
	}
	ctx, cancel := withTimeout(r)
	defer cancel()
	page, err := h.svc.KVScan(ctx, []byte(prefix), q.Get("cursor"), limit, o)
	if err != nil {
		writeError(w, err)
		return
	}
	ans := ScanAnswer{Items: make([]ScanItem, 0, len(page.Items)), Cursor: page.Cursor}
	for _, it := range page.Items {
		si := ScanItem{Key: string(it.Key), Version: it.Version, VShard: it.VShard}
		if utf8.Valid(it.Value) {
			si.Value = string(it.Value)
		} else {
			si.ValueBase64 = it.Value
		}
		ans.Items = append(ans.Items, si)
	}
	writeJSON(w, http.StatusOK, ans)
}

func (h *rest) cluster(w http.ResponseWriter, r *http.Request) {
	st, err := h.svc.ClusterStatus()
	if err != nil {
		writeError(w, &server.APIError{Code: server.CodeUnavailable, Message: err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (h *rest) readyz(w http.ResponseWriter, r *http.Request) {
	if err := h.svc.Ready(); err != nil {
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "not ready: "+strings.TrimSpace(err.Error())+"\n")
		return
	}
	io.WriteString(w, "ok\n")
}

// withTimeout is the request's context, bounded by its X-Nodedb-Timeout
// (clamped to 1ms..60s) or requestTimeout.
func withTimeout(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), timeoutOf(r.Header))
}

// timeoutOf is the bound of a request's work: its X-Nodedb-Timeout, or
// requestTimeout.
func timeoutOf(hd http.Header) time.Duration { return timeoutValue(hd.Get(HeaderTimeout)) }

// timeoutValue is timeoutOf for the header's value.
func timeoutValue(v string) time.Duration {
	if v != "" {
		if t, err := time.ParseDuration(v); err == nil {
			return min(max(t, time.Millisecond), time.Minute)
		}
	}
	return requestTimeout
}
