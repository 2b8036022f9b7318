package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/nodedb/nodedb-cluster/cluster"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/kv"
	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"github.com/nodedb/nodedb-cluster/vshard"
)

// The typed key-value service every API protocol (REST, Connect) calls.
// Errors are *APIError with the codes of docs/api.md.

// Consistency is a read's freshness requirement.
type Consistency int

const (
	// Linearizable reads reflect every write acknowledged before the read
	// started (ReadIndex on the group's leader).
	Linearizable Consistency = iota
	// Stale reads may be served by any replica whose state provably
	// reflects every write acknowledged more than MaxStaleness ago.
	Stale
)

// ReadOptions shape a read.
type ReadOptions struct {
	Consistency  Consistency
	MaxStaleness time.Duration
	// NoForward: answer not_leader instead of forwarding (linearizable).
	NoForward bool
	// Epoch, when non-zero, is the routing epoch of the key's vShard the
	// client routed with (see checkEpoch).
	Epoch uint64
}

// WriteOptions shape a write.
type WriteOptions struct {
	// IfVersion makes the write conditional on the key's current version
	// (0: the key must be absent). For a batch, use kv.Op's IfVersion.
	IfVersion *uint64
	// IdempotencyKey, or Client and Seq (and AckedBelow), identify the write
	// for exactly-once application; at most one of the two forms.
	IdempotencyKey string
	Client, Seq    uint64
	AckedBelow     uint64
	// NoForward: answer not_leader instead of forwarding.
	NoForward bool
	// Epoch, when non-zero, is the routing epoch the client routed with.
	Epoch uint64
}

// WriteResult is one applied write.
type WriteResult struct {
	Version     uint64 `json:"version"`
	VShard      uint32 `json:"vshard"`
	PrevVersion uint64 `json:"prev_version"`
}

// GetResult is a read key.
type GetResult struct {
	Found   bool
	Value   []byte
	Version uint64
	VShard  uint32
}

// ScanItem is one key of a scan page.
type ScanItem struct {
	Key     []byte
	Value   []byte
	Version uint64
	VShard  uint32
}

// ScanPage is one page of a scan; Cursor is empty once the scan is done.
type ScanPage struct {
	Items  []ScanItem
	Cursor string
}

// Error codes of the client API (docs/api.md).
const (
	CodeInvalidArgument = "invalid_argument"
	CodeUnauthenticated = "unauthenticated"
	CodeNotFound        = "not_found"
	CodeConflict        = "conflict"
	CodeTooLarge        = "too_large"
	CodeNotLeader       = "not_leader"
	CodeMoved           = "moved"
	CodeFrozen          = "frozen"
	CodeUnavailable     = "unavailable"
	CodeOutcomeUnknown  = "outcome_unknown"
	CodeInternal        = "internal"
)

// APIError is a client-API error: a code of docs/api.md, a message and,
// for some codes, a hint (the leader, the owner of a vShard, the current
// version).
type APIError struct {
	Code    string
	Message string
	Hint    map[string]any
}

func (e *APIError) Error() string { return e.Code + ": " + e.Message }

// Retryable reports whether the same request may succeed later as is.
func (e *APIError) Retryable() bool {
	switch e.Code {
	case CodeUnavailable, CodeFrozen, CodeOutcomeUnknown:
		return true
	}
	return false
}

// HTTPStatus is the HTTP status that answers an API error code.
func HTTPStatus(code string) int {
	switch code {
	case CodeInvalidArgument:
		return http.StatusBadRequest
	case CodeUnauthenticated:
		return http.StatusUnauthorized
	case CodeNotFound:
		return http.StatusNotFound
	case CodeConflict:
		return http.StatusConflict
	case CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case CodeNotLeader, CodeMoved:
		return http.StatusMisdirectedRequest
	case CodeFrozen, CodeUnavailable:
		return http.StatusServiceUnavailable
	case CodeOutcomeUnknown:
		return http.StatusGatewayTimeout
	}
	return http.StatusInternalServerError
}

func apiErrorf(code, format string, args ...any) *APIError {
	return &APIError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Limits returns the key-value limits this node enforces.
func (s *Server) Limits() kv.Limits { return s.limits }

// apiError maps an internal error to the API's.
func (s *Server) apiError(err error) *APIError {
	var (
		ae *APIError
		ke *kv.Error
		me *MovedError
		nl *cluster.NotLeaderError
	)
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &ke):
		e := &APIError{Code: string(ke.Code), Message: ke.Message}
		if ke.Code == kv.CodeConflict {
			e.Hint = map[string]any{"current_version": ke.CurrentVersion, "failed_op": ke.FailedOp}
		}
		switch ke.Code {
		case kv.CodeInvalidArgument, kv.CodeNotFound, kv.CodeConflict, kv.CodeTooLarge:
		default:
			e.Code = CodeInvalidArgument
		}
		return e
	case errors.As(err, &me):
		return &APIError{Code: CodeMoved, Message: me.Error(), Hint: map[string]any{"vshard": me.VShard, "group": uint64(me.Group), "epoch": me.Epoch}}
	case errors.As(err, &nl):
		e := &APIError{Code: CodeNotLeader, Message: fmt.Sprintf("this node does not lead group %d", nl.Group)}
		if nl.LeaderNode != 0 {
			e.Hint = map[string]any{"leader": uint64(nl.LeaderNode), "leader_api": s.view.get().GetNodes()[uint64(nl.LeaderNode)].GetApiAddr()}
		}
		return e
	case errors.Is(err, cluster.ErrOutcomeUnknown):
		return &APIError{Code: CodeOutcomeUnknown, Message: err.Error()}
	case errors.Is(err, ErrUnavailable), errors.Is(err, ErrNoMetadata), errors.Is(err, cluster.ErrStopped),
		errors.Is(err, cluster.ErrProposalDropped), errors.Is(err, context.DeadlineExceeded):
		return &APIError{Code: CodeUnavailable, Message: err.Error()}
	case errors.Is(err, cluster.ErrTooLarge):
		return &APIError{Code: CodeTooLarge, Message: err.Error()}
	}
	return &APIError{Code: CodeInternal, Message: err.Error()}
}

// identity resolves a write's exactly-once identity. An idempotency key
// becomes a client of its own (a hash of the key, with the top bit set so
// that it never collides with the random IDs of Go clients, which leave it
// clear) with sequence 1.
func identity(o WriteOptions) (client, seq, acked uint64, err *APIError) {
	switch {
	case o.IdempotencyKey != "" && (o.Client != 0 || o.Seq != 0):
		return 0, 0, 0, apiErrorf(CodeInvalidArgument, "give an idempotency key or a client ID and sequence, not both")
	case len(o.IdempotencyKey) > 256:
		return 0, 0, 0, apiErrorf(CodeInvalidArgument, "idempotency key is %d bytes, at most 256", len(o.IdempotencyKey))
	case o.IdempotencyKey != "":
		h := sha256.Sum256([]byte("nodedb-idempotency-key\x00" + o.IdempotencyKey))
		return binary.BigEndian.Uint64(h[:8]) | 1<<63, 1, 0, nil
	case (o.Client == 0) != (o.Seq == 0):
		return 0, 0, 0, apiErrorf(CodeInvalidArgument, "a client ID needs a sequence number and the reverse, both non-zero")
	case o.AckedBelow > o.Seq:
		return 0, 0, 0, apiErrorf(CodeInvalidArgument, "acked-below %d is above the sequence %d", o.AckedBelow, o.Seq)
	}
	return o.Client, o.Seq, o.AckedBelow, nil
}

// KVPut writes value at key.
func (s *Server) KVPut(ctx context.Context, key, value []byte, o WriteOptions) (WriteResult, error) {
	cmd, err := kv.EncodePut(key, value, o.IfVersion, s.limits)
	if err != nil {
		return WriteResult{}, s.apiError(err)
	}
	res, err := s.kvWrite(ctx, key, cmd, o)
	if err != nil {
		return WriteResult{}, err
	}
	return res[0], nil
}

// KVDelete deletes key; it is not_found when the key is absent.
func (s *Server) KVDelete(ctx context.Context, key []byte, o WriteOptions) (WriteResult, error) {
	cmd, err := kv.EncodeDelete(key, o.IfVersion, s.limits)
	if err != nil {
		return WriteResult{}, s.apiError(err)
	}
	res, err := s.kvWrite(ctx, key, cmd, o)
	if err != nil {
		return WriteResult{}, err
	}
	if res[0].PrevVersion == 0 {
		return res[0], apiErrorf(CodeNotFound, "key %q does not exist", key)
	}
	return res[0], nil
}

// KVBatch applies ops atomically: all or none. Every key must be in the
// same vShard (share a {hash tag}).
func (s *Server) KVBatch(ctx context.Context, ops []kv.Op, o WriteOptions) ([]WriteResult, error) {
	if len(ops) == 0 {
		return nil, apiErrorf(CodeInvalidArgument, "empty batch")
	}
	if o.IfVersion != nil {
		return nil, apiErrorf(CodeInvalidArgument, "a batch takes its conditions per op")
	}
	vs, _ := s.Route(ops[0].Key)
	for i, op := range ops[1:] {
		if v, _ := s.Route(op.Key); v != vs {
			return nil, apiErrorf(CodeInvalidArgument, "op %d: key %q is in vShard %d, op 0's in vShard %d: a batch stays within one vShard (use a {hash tag})", i+1, op.Key, v, vs)
		}
	}
	cmd, err := kv.EncodeBatch(ops, s.limits)
	if err != nil {
		return nil, s.apiError(err)
	}
	return s.kvWrite(ctx, ops[0].Key, cmd, o)
}

func (s *Server) kvWrite(ctx context.Context, key, cmd []byte, o WriteOptions) ([]WriteResult, error) {
	r, err := s.writeRequest(key, cmd, o)
	if err != nil {
		return nil, err
	}
	out, err := s.do(ctx, true, r)
	if err != nil {
		return nil, s.apiError(err)
	}
	return s.writeResults(r.vshard, out)
}

// writeRequest is the request that writes cmd to key's vShard.
func (s *Server) writeRequest(key, cmd []byte, o WriteOptions) (*request, error) {
	client, seq, acked, ierr := identity(o)
	if ierr != nil {
		return nil, ierr
	}
	if s.view.get() == nil {
		return nil, apiErrorf(CodeUnavailable, "no routing on this node yet")
	}
	vs, g := s.Route(key)
	if err := s.checkEpoch(vs, o.Epoch); err != nil {
		return nil, err
	}
	return &request{group: g, vshard: vs, client: client, seq: seq, ackedBelow: acked, body: cmd, noForward: o.NoForward}, nil
}

// writeResults decodes the state machine's result of a write to vShard vs.
func (s *Server) writeResults(vs uint32, out []byte) ([]WriteResult, error) {
	res, err := kv.DecodeResult(out)
	if err != nil {
		return nil, s.apiError(err)
	}
	wr := make([]WriteResult, len(res.Ops))
	for i, op := range res.Ops {
		wr[i] = WriteResult{Version: op.Version, VShard: vs, PrevVersion: op.PrevVersion}
	}
	if len(wr) == 0 {
		return nil, apiErrorf(CodeInternal, "write applied with no result")
	}
	return wr, nil
}

// PendingWrite is a write started by StartKVPut or StartKVDelete. Done is
// closed once FinishKVWrite can answer it.
type PendingWrite interface {
	Done() <-chan struct{}
}

// pendingWrite is this server's PendingWrite: a proposal started on the
// leader of the key's group.
type pendingWrite struct {
	prop *cluster.PendingProposal
	vs   uint32
	del  bool // a DELETE: not_found when the key was absent
	key  []byte
}

func (p *pendingWrite) Done() <-chan struct{} { return p.prop.Done() }

// StartKVPut starts a PUT of value at key without waiting for it, when this
// node leads the key's group and routes the key's vShard there, so that one
// goroutine can have many writes in flight without a goroutine blocked for
// each. ok is false in every other case (another leader, an epoch or input
// KVPut would refuse, no routing yet), and then nothing was proposed: the
// caller uses KVPut, which also gives the same errors. notify is as for
// cluster.Node.StartPropose: called once Done is closed, it must not block.
func (s *Server) StartKVPut(key, value []byte, o WriteOptions, notify func()) (p PendingWrite, ok bool) {
	cmd, err := kv.EncodePut(key, value, o.IfVersion, s.limits)
	if err != nil {
		return nil, false
	}
	return s.startKVWrite(key, cmd, o, false, notify)
}

// StartKVDelete is StartKVPut for a DELETE of key.
func (s *Server) StartKVDelete(key []byte, o WriteOptions, notify func()) (p PendingWrite, ok bool) {
	cmd, err := kv.EncodeDelete(key, o.IfVersion, s.limits)
	if err != nil {
		return nil, false
	}
	return s.startKVWrite(key, cmd, o, true, notify)
}

func (s *Server) startKVWrite(key, cmd []byte, o WriteOptions, del bool, notify func()) (PendingWrite, bool) {
	r, err := s.writeRequest(key, cmd, o)
	if err != nil {
		return nil, false
	}
	if !s.servesHere(r) {
		return nil, false
	}
	prop, err := s.node.StartPropose(r.group, r.proposal(), notify)
	if err != nil {
		return nil, false
	}
	return &pendingWrite{prop: prop, vs: r.vshard, del: del, key: key}, true
}

// servesHere reports whether this node leads r's group and routes r's
// vShard to it: what a request started here (StartKVGet, StartKVPut)
// needs, as Server.do would serve it here.
func (s *Server) servesHere(r *request) bool {
	_, n, err := s.node.Leader(r.group)
	return err == nil && n == s.id && s.checkRoute(r) == nil
}

// FinishKVWrite answers p once it is done, as KVPut or KVDelete would have.
// ok is false only when the write failed where it started in a way that
// proves it never reached a log (leadership moved, Raft dropped it): the
// caller writes again through KVPut or KVDelete, which is what they do
// themselves on such a failure. Every other outcome, an unknown one
// included, is the answer.
func (s *Server) FinishKVWrite(p PendingWrite) (res WriteResult, ok bool, err error) {
	pw, mine := p.(*pendingWrite)
	if !mine {
		return WriteResult{}, true, apiErrorf(CodeInternal, "not a write this node started")
	}
	out, err := s.node.FinishPropose(pw.prop)
	if errors.Is(err, cluster.ErrProposalNotDone) {
		return WriteResult{}, true, apiErrorf(CodeInternal, "write answered before its outcome was known")
	}
	if err != nil {
		if _, final := afterFailure(context.Background(), true, s.id, toRPCError(err)); final != nil {
			return WriteResult{}, true, s.apiError(final)
		}
		return WriteResult{}, false, nil
	}
	wr, err := s.writeResults(pw.vs, out)
	if err != nil {
		return WriteResult{}, true, err
	}
	if pw.del && wr[0].PrevVersion == 0 {
		return wr[0], true, apiErrorf(CodeNotFound, "key %q does not exist", pw.key)
	}
	return wr[0], true, nil
}

// AbandonKVWrite is the answer to a started write whose caller stops
// waiting for it (its time ran out, cause): its outcome is unknown, as
// KVPut's would be then. The write itself goes on and may still apply.
func (s *Server) AbandonKVWrite(cause error) error {
	return s.apiError(fmt.Errorf("%w: %w", cluster.ErrOutcomeUnknown, cause))
}

// KVGet reads key.
func (s *Server) KVGet(ctx context.Context, key []byte, o ReadOptions) (GetResult, error) {
	q, err := kv.EncodeGet(key, s.limits)
	if err != nil {
		return GetResult{}, s.apiError(err)
	}
	vs, g := s.Route(key)
	if err := s.checkEpoch(vs, o.Epoch); err != nil {
		return GetResult{}, err
	}
	out, err := s.kvRead(ctx, g, vs, q, o)
	if err != nil {
		return GetResult{}, err
	}
	r, err := kv.DecodeGetResponse(out)
	if err != nil {
		return GetResult{}, s.apiError(err)
	}
	return GetResult{Found: r.Found, Value: r.Value, Version: r.Version, VShard: vs}, nil
}

// PendingGet is a linearizable GET started by StartKVGet. Done is closed
// once FinishKVGet can answer it.
type PendingGet interface {
	Done() <-chan struct{}
}

// pendingGet is this server's PendingGet: a read started on the leader of
// the key's group.
type pendingGet struct {
	read *cluster.PendingRead
	vs   uint32
	q    []byte
}

func (p *pendingGet) Done() <-chan struct{} { return p.read.Done() }

// StartKVGet starts a linearizable GET of key without waiting for it, when
// this node leads the key's group and routes the key's vShard there, so
// that one goroutine can have many GETs in flight and the GETs of a group
// share its next ReadIndex round. ok is false in every other case (another
// leader, stale reads, an epoch or input KVGet would refuse, no routing yet):
// the caller uses KVGet, which also gives the same errors. notify is as for
// cluster.Node.StartRead: called once Done is closed, it must not block.
func (s *Server) StartKVGet(key []byte, o ReadOptions, notify func()) (p PendingGet, ok bool) {
	if o.Consistency != Linearizable || s.view.get() == nil {
		return nil, false
	}
	q, err := kv.EncodeGet(key, s.limits)
	if err != nil {
		return nil, false
	}
	vs, g := s.Route(key)
	if s.checkEpoch(vs, o.Epoch) != nil {
		return nil, false
	}
	if !s.servesHere(&request{group: g, vshard: vs, body: q}) {
		return nil, false
	}
	read, err := s.node.StartRead(g, notify)
	if err != nil {
		return nil, false
	}
	return &pendingGet{read: read, vs: vs, q: q}, true
}

// FinishKVGet answers p once it is done. ok is false when the read failed
// where it started (leadership moved, the replica went away, the node is
// stopping) or p is not this server's: the caller reads again through
// KVGet, which follows the new leader and reports what cannot be helped; a
// read changes nothing, so reading again is safe.
func (s *Server) FinishKVGet(p PendingGet) (res GetResult, ok bool, err error) {
	pg, mine := p.(*pendingGet)
	if !mine {
		return GetResult{}, false, nil
	}
	out, err := s.node.FinishRead(pg.read, pg.vs, pg.q)
	if err != nil {
		return GetResult{}, false, nil
	}
	r, err := kv.DecodeGetResponse(out)
	if err != nil {
		return GetResult{}, true, s.apiError(err)
	}
	return GetResult{Found: r.Found, Value: r.Value, Version: r.Version, VShard: pg.vs}, true, nil
}

func (s *Server) kvRead(ctx context.Context, g ids.GroupID, vs uint32, q []byte, o ReadOptions) ([]byte, error) {
	if s.view.get() == nil {
		return nil, apiErrorf(CodeUnavailable, "no routing on this node yet")
	}
	switch o.Consistency {
	case Linearizable:
		out, err := s.do(ctx, false, &request{group: g, vshard: vs, body: q, noForward: o.NoForward})
		if err != nil {
			return nil, s.apiError(err)
		}
		return out, nil
	case Stale:
		if o.MaxStaleness < time.Millisecond {
			return nil, apiErrorf(CodeInvalidArgument, "max_staleness must be at least 1ms")
		}
		out, err := s.staleRead(ctx, g, vs, q, o.MaxStaleness)
		if err != nil {
			return nil, s.apiError(err)
		}
		return out, nil
	}
	return nil, apiErrorf(CodeInvalidArgument, "unknown consistency %d", o.Consistency)
}

// checkEpoch compares the epoch a client routed vShard vs with to this
// node's: an older one is moved (the client's routing is stale: here is the
// owner), a newer one means this node's metadata is behind: unavailable,
// retry (elsewhere or later).
func (s *Server) checkEpoch(vs uint32, epoch uint64) error {
	if epoch == 0 {
		return nil
	}
	g, cur := meta.RouteOf(s.view.get(), vs)
	switch {
	case epoch < cur:
		return &APIError{Code: CodeMoved, Message: fmt.Sprintf("vShard %d is at epoch %d, the request was routed at %d", vs, cur, epoch),
			Hint: map[string]any{"vshard": vs, "group": g, "epoch": cur}}
	case epoch > cur:
		return &APIError{Code: CodeUnavailable, Message: fmt.Sprintf("this node's routing of vShard %d (epoch %d) is behind the request's (%d)", vs, cur, epoch)}
	}
	return nil
}

// Scan pages. A cursor is "vshard.hex(last key)": the scan goes through the
// vShards in order and, within one, in key order.

// KVScan returns up to limit keys starting with prefix, from cursor on.
func (s *Server) KVScan(ctx context.Context, prefix []byte, cursor string, limit int, o ReadOptions) (ScanPage, error) {
	switch {
	case limit <= 0:
		limit = 100
	case limit > 1000:
		limit = 1000
	}
	if s.view.get() == nil {
		return ScanPage{}, apiErrorf(CodeUnavailable, "no routing on this node yet")
	}
	vs, after, err := parseCursor(cursor, s.vshards)
	if err != nil {
		return ScanPage{}, err
	}
	end := uint32(s.vshards)
	if tagged, ok := prefixVShard(prefix, s.vshards); ok {
		// Every key with this prefix has the prefix's hash tag: one vShard.
		if cursor == "" {
			vs = tagged
		}
		if vs != tagged {
			return ScanPage{}, apiErrorf(CodeInvalidArgument, "scan cursor is for another prefix")
		}
		end = tagged + 1
	}
	var page ScanPage
	for ; vs < end; vs, after = vs+1, nil {
		q, err := kv.EncodeScan(prefix, after, limit-len(page.Items), s.limits)
		if err != nil {
			return ScanPage{}, s.apiError(err)
		}
		g64, _ := meta.RouteOf(s.view.get(), vs)
		g := ids.GroupID(g64)
		out, err := s.kvRead(ctx, g, vs, q, o)
		if err != nil {
			return ScanPage{}, err
		}
		r, err := kv.DecodeScanResponse(out)
		if err != nil {
			return ScanPage{}, s.apiError(err)
		}
		for _, e := range r.Entries {
			page.Items = append(page.Items, ScanItem{Key: clone(e.Key), Value: clone(e.Value), Version: e.Version, VShard: vs})
		}
		if len(page.Items) >= limit || r.More {
			last := page.Items[len(page.Items)-1]
			if r.More || vs+1 < end {
				page.Cursor = formatCursor(last.VShard, last.Key)
			}
			return page, nil
		}
	}
	return page, nil
}

// prefixVShard reports the vShard of every key starting with prefix, when
// the prefix holds a complete non-empty hash tag ("{user1}..."): the hash
// key of such a key is that tag, whatever follows.
func prefixVShard(prefix []byte, vshards int) (uint32, bool) {
	open := bytes.IndexByte(prefix, '{')
	if open < 0 {
		return 0, false
	}
	end := bytes.IndexByte(prefix[open+1:], '}')
	if end <= 0 {
		return 0, false
	}
	return vshard.ForKey(prefix[:open+1+end+1], vshards), true
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }

// Ready reports whether this node serves client requests: it has applied
// metadata, is active, and every group it holds has a leader.
func (s *Server) Ready() error {
	st := s.view.get()
	if st == nil {
		return ErrNoMetadata
	}
	me := st.GetNodes()[uint64(s.id)]
	if me == nil || me.GetState() != metapb.NodeState_NODE_STATE_ACTIVE {
		return fmt.Errorf("node %d is %s, not active", s.id, meta.NodeStateName(me.GetState()))
	}
	for _, g := range s.node.Groups() {
		if _, n, err := s.node.Leader(g); err != nil || n == 0 {
			return fmt.Errorf("group %d has no leader", g)
		}
	}
	return nil
}
