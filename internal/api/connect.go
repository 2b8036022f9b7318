package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	kvv1 "github.com/nodedb/nodedb-cluster/api/kv/v1"
	"github.com/nodedb/nodedb-cluster/api/kv/v1/kvv1connect"
	"github.com/nodedb/nodedb-cluster/internal/kv"
	"github.com/nodedb/nodedb-cluster/internal/server"
)

// The gRPC / Connect / gRPC-Web service nodedb.kv.v1.KV (api/kv/v1/kv.proto)
// over the same Service as the REST routes. docs/api.md, "gRPC / Connect",
// is the contract: the error-code mapping below is documented there.

// Metadata keys carried by every error (response headers with the Connect
// protocol, trailers with gRPC and gRPC-Web): the docs/api.md code and the
// REST error's hint object as JSON.
const (
	MetaCode = "Nodedb-Code"
	MetaHint = "Nodedb-Hint"
)

// Request-size bounds, enforced by connect before a message is decoded (and
// on the decompressed size): a larger message is RESOURCE_EXHAUSTED and
// nothing is written.
const (
	// connectSlack covers the fields around a key and a value.
	connectSlack = 64 << 10
	// connectMaxBatchBytes bounds a Batch request.
	connectMaxBatchBytes = 16 << 20
	// connectTimeout bounds a request whose client set no deadline.
	connectTimeout = 10 * time.Second
)

// ConnectHandler returns the path prefix ("/nodedb.kv.v1.KV/") and the
// handler of the KV service over svc, for an http.ServeMux. Serve it over
// HTTP/2 (TLS, or h2c) for gRPC clients; Connect and gRPC-Web clients also
// work over HTTP/1.1.
func ConnectHandler(svc Service) (string, http.Handler) {
	lim := svc.Limits()
	maxKey, maxValue := lim.MaxKeySize, lim.MaxValueSize
	if maxKey <= 0 {
		maxKey = kv.DefaultMaxKeySize
	}
	if maxValue <= 0 {
		maxValue = kv.DefaultMaxValueSize
	}
	single := maxKey + maxValue + connectSlack
	h := &connectKV{svc: svc}
	path, small := kvv1connect.NewKVHandler(h, connect.WithReadMaxBytes(single))
	_, batch := kvv1connect.NewKVHandler(h, connect.WithReadMaxBytes(max(single, connectMaxBatchBytes)))
	return path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == kvv1connect.KVBatchProcedure {
			batch.ServeHTTP(w, r)
			return
		}
		small.ServeHTTP(w, r)
	})
}

type connectKV struct {
	kvv1connect.UnimplementedKVHandler
	svc Service
}

var _ kvv1connect.KVHandler = (*connectKV)(nil)

func (h *connectKV) Put(ctx context.Context, req *connect.Request[kvv1.PutRequest]) (*connect.Response[kvv1.PutResponse], error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	m := req.Msg
	res, err := h.svc.KVPut(ctx, m.GetKey(), m.GetValue(), server.WriteOptions{
		IfVersion:      m.IfVersion,
		IdempotencyKey: m.GetIdempotencyKey(),
		Client:         m.GetClientId(),
		Seq:            m.GetSeq(),
		AckedBelow:     m.GetAckedBelow(),
		NoForward:      m.GetNoForward(),
	})
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&kvv1.PutResponse{Version: res.Version, Vshard: res.VShard, PrevVersion: res.PrevVersion}), nil
}

func (h *connectKV) Delete(ctx context.Context, req *connect.Request[kvv1.DeleteRequest]) (*connect.Response[kvv1.DeleteResponse], error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	m := req.Msg
	res, err := h.svc.KVDelete(ctx, m.GetKey(), server.WriteOptions{
		IfVersion:      m.IfVersion,
		IdempotencyKey: m.GetIdempotencyKey(),
		Client:         m.GetClientId(),
		Seq:            m.GetSeq(),
		AckedBelow:     m.GetAckedBelow(),
		NoForward:      m.GetNoForward(),
	})
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&kvv1.DeleteResponse{Version: res.Version, Vshard: res.VShard, PrevVersion: res.PrevVersion}), nil
}

func (h *connectKV) Batch(ctx context.Context, req *connect.Request[kvv1.BatchRequest]) (*connect.Response[kvv1.BatchResponse], error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	m := req.Msg
	ops := make([]kv.Op, len(m.GetOps()))
	for i, op := range m.GetOps() {
		switch op.GetKind() {
		case kvv1.Op_KIND_PUT:
			ops[i] = kv.PutOp(op.GetKey(), op.GetValue(), op.IfVersion)
		case kvv1.Op_KIND_DELETE:
			if len(op.GetValue()) > 0 {
				return nil, connectError(connectInvalid("op %d: a delete carries no value", i))
			}
			ops[i] = kv.DeleteOp(op.GetKey(), op.IfVersion)
		default:
			return nil, connectError(connectInvalid("op %d: unknown kind %d", i, op.GetKind()))
		}
	}
	res, err := h.svc.KVBatch(ctx, ops, server.WriteOptions{
		IdempotencyKey: m.GetIdempotencyKey(),
		Client:         m.GetClientId(),
		Seq:            m.GetSeq(),
		AckedBelow:     m.GetAckedBelow(),
		NoForward:      m.GetNoForward(),
	})
	if err != nil {
		return nil, connectError(err)
	}
	out := &kvv1.BatchResponse{Results: make([]*kvv1.WriteResult, len(res))}
	for i, r := range res {
		out.Results[i] = &kvv1.WriteResult{Version: r.Version, Vshard: r.VShard, PrevVersion: r.PrevVersion}
	}
	return connect.NewResponse(out), nil
}

func (h *connectKV) Get(ctx context.Context, req *connect.Request[kvv1.GetRequest]) (*connect.Response[kvv1.GetResponse], error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	m := req.Msg
	o, err := connectReadOptions(m.GetConsistency(), m.MaxStaleness, m.GetNoForward())
	if err != nil {
		return nil, connectError(err)
	}
	res, err := h.svc.KVGet(ctx, m.GetKey(), o)
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&kvv1.GetResponse{Found: res.Found, Value: res.Value, Version: res.Version, Vshard: res.VShard}), nil
}

func (h *connectKV) Scan(ctx context.Context, req *connect.Request[kvv1.ScanRequest]) (*connect.Response[kvv1.ScanResponse], error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	m := req.Msg
	o, err := connectReadOptions(m.GetConsistency(), m.MaxStaleness, m.GetNoForward())
	if err != nil {
		return nil, connectError(err)
	}
	// KVScan defaults 0 to 100 and caps at 1000; min keeps the int in range.
	page, err := h.svc.KVScan(ctx, m.GetPrefix(), m.GetCursor(), int(min(m.GetLimit(), 1<<20)), o)
	if err != nil {
		return nil, connectError(err)
	}
	out := &kvv1.ScanResponse{Items: make([]*kvv1.Item, len(page.Items)), Cursor: page.Cursor}
	for i, it := range page.Items {
		out.Items[i] = &kvv1.Item{Key: it.Key, Value: it.Value, Version: it.Version, Vshard: it.VShard}
	}
	return connect.NewResponse(out), nil
}

func (h *connectKV) Cluster(_ context.Context, _ *connect.Request[kvv1.ClusterRequest]) (*connect.Response[kvv1.ClusterResponse], error) {
	st, err := h.svc.ClusterStatus()
	if err != nil {
		return nil, connectError(&server.APIError{Code: server.CodeUnavailable, Message: err.Error()})
	}
	b, err := json.Marshal(st)
	if err != nil {
		return nil, connectError(&server.APIError{Code: server.CodeInternal, Message: err.Error()})
	}
	return connect.NewResponse(&kvv1.ClusterResponse{StatusJson: string(b)}), nil
}

// connectReadOptions checks a read's consistency as the REST routes do:
// max_staleness only with CONSISTENCY_STALE, which needs it (at least 1ms).
func connectReadOptions(c kvv1.Consistency, staleness *durationpb.Duration, noForward bool) (server.ReadOptions, error) {
	o := server.ReadOptions{NoForward: noForward}
	switch c {
	case kvv1.Consistency_CONSISTENCY_LINEARIZABLE:
		if staleness != nil {
			return o, connectInvalid("max_staleness needs CONSISTENCY_STALE")
		}
	case kvv1.Consistency_CONSISTENCY_STALE:
		if staleness.CheckValid() != nil || staleness.AsDuration() < time.Millisecond {
			return o, connectInvalid("CONSISTENCY_STALE needs max_staleness, a duration of at least 1ms")
		}
		o.Consistency, o.MaxStaleness = server.Stale, staleness.AsDuration()
	default:
		return o, connectInvalid("unknown consistency %d", c)
	}
	return o, nil
}

func connectInvalid(format string, args ...any) *server.APIError {
	return &server.APIError{Code: server.CodeInvalidArgument, Message: fmt.Sprintf(format, args...)}
}

// bounded bounds a request whose client set no deadline.
func bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, connectTimeout)
}

// connectCodes maps the docs/api.md codes to connect (gRPC) codes.
var connectCodes = map[string]connect.Code{
	server.CodeInvalidArgument: connect.CodeInvalidArgument,
	server.CodeUnauthenticated: connect.CodeUnauthenticated,
	server.CodeNotFound:        connect.CodeNotFound,
	// A failed if_version is a failed test-and-set: gRPC's ABORTED ("retry
	// at a higher level": read again, then write).
	server.CodeConflict: connect.CodeAborted,
	// As connect's own answer to a message over the read limit.
	server.CodeTooLarge: connect.CodeResourceExhausted,
	// The request must go elsewhere: nodedb-code and nodedb-hint say where.
	server.CodeNotLeader:   connect.CodeFailedPrecondition,
	server.CodeMoved:       connect.CodeFailedPrecondition,
	server.CodeFrozen:      connect.CodeUnavailable,
	server.CodeUnavailable: connect.CodeUnavailable,
	// gRPC's DEADLINE_EXCEEDED: "the operation may have completed". Retry
	// with the same idempotency identity to learn the outcome.
	server.CodeOutcomeUnknown: connect.CodeDeadlineExceeded,
	server.CodeInternal:       connect.CodeInternal,
}

// connectError turns a Service error into a connect error: the mapped code,
// the message "code: message" (APIError.Error), the nodedb-code and
// nodedb-hint metadata and an ErrorDetail.
func connectError(err error) error {
	var ae *server.APIError
	if !errors.As(err, &ae) {
		switch {
		case errors.Is(err, context.Canceled):
			return connect.NewError(connect.CodeCanceled, err)
		case errors.Is(err, context.DeadlineExceeded):
			return connect.NewError(connect.CodeDeadlineExceeded, err)
		}
		ae = &server.APIError{Code: server.CodeInternal, Message: err.Error()}
	}
	code, ok := connectCodes[ae.Code]
	if !ok {
		code = connect.CodeUnknown
	}
	cerr := connect.NewError(code, errors.New(ae.Error()))
	cerr.Meta().Set(MetaCode, ae.Code)
	detail := &kvv1.ErrorDetail{Code: ae.Code, Retryable: ae.Retryable()}
	if len(ae.Hint) > 0 {
		if b, err := json.Marshal(ae.Hint); err == nil {
			cerr.Meta().Set(MetaHint, string(b))
			detail.HintJson = string(b)
		}
	}
	if d, err := connect.NewErrorDetail(detail); err == nil {
		cerr.AddDetail(d)
	}
	return cerr
}
