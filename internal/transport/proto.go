package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// ProtocolVersion is the inter-node protocol version this build speaks. A
// connection's Hello carries the range the dialer speaks; the acceptor picks
// the highest version both speak or refuses the connection, so a later build
// can adapt to an older peer or refuse it explicitly instead of misreading it.
const (
	ProtocolVersion    = 1
	MinProtocolVersion = 1
)

// ALPN is the TLS application protocol of inter-node connections.
const ALPN = "nodedb-cluster/1"

// Stream kinds: the first byte of every stream a node opens to a peer.
const (
	StreamRaft     byte = 'B' // unidirectional: Raft message batches, for the connection's lifetime
	StreamRPC      byte = 'R' // bidirectional: RPC requests and responses, multiplexed by request ID
	StreamSnapshot byte = 'S' // bidirectional: one snapshot, then a FrameResult back
)

// Bounds of the small fields of control frames.
const (
	maxClusterIDLen = 128
	maxReasonLen    = 64
	maxMessageLen   = 4096
	// MaxMethodLen bounds an RPC method name.
	MaxMethodLen = 64
)

// Hello is the first frame of a connection, sent by the dialer on its
// control stream: the protocol versions it speaks and the identity it claims.
// The acceptor checks the claim against the node ID in the dialer's
// certificate.
type Hello struct {
	MinVersion, MaxVersion uint32
	Node                   ids.NodeID
	// Incarnation is random per process start: it tells a peer that a new
	// connection comes from a restarted process, whose older connections are
	// dead even if they do not look it yet.
	Incarnation uint64
	// ClusterID, when not empty, must match the acceptor's.
	ClusterID string
}

// HelloOK accepts a connection.
type HelloOK struct {
	Version     uint32
	Node        ids.NodeID
	Incarnation uint64
}

// Refusal is why a connection, stream or request was refused.
type Refusal struct {
	Reason  string // a stable code, such as "version" or "node_id_mismatch"
	Message string
}

func (r *Refusal) Error() string { return fmt.Sprintf("refused (%s): %s", r.Reason, r.Message) }

// RefusalBusy is the Reason of a join refused because the node serves as
// many join connections or requests as it allows: the one refusal worth
// retrying as it is.
const RefusalBusy = "busy"

// ErrMalformedControl is wrapped by decoding errors of control payloads.
var ErrMalformedControl = errors.New("transport: malformed control payload")

// decoder reads the fields of a control payload, remembering the first
// error.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = fmt.Errorf("%w: bad %s", ErrMalformedControl, what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) uint32(what string) uint32 {
	v := d.uvarint(what)
	if v > 1<<32-1 {
		d.fail(what)
		return 0
	}
	return uint32(v)
}

func (d *decoder) str(what string, limit int) string {
	n := d.uvarint(what + " length")
	if d.err != nil {
		return ""
	}
	if n > uint64(limit) || n > uint64(len(d.b)) {
		d.err = fmt.Errorf("%w: %s of %d bytes", ErrMalformedControl, what, n)
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: bad %s", ErrMalformedControl, what)
	}
}

func (d *decoder) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%w: %d trailing bytes", ErrMalformedControl, len(d.b))
	}
	return d.err
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// Encode appends h's wire form to b.
func (h *Hello) Encode(b []byte) []byte {
	b = binary.AppendUvarint(b, uint64(h.MinVersion))
	b = binary.AppendUvarint(b, uint64(h.MaxVersion))
	b = binary.AppendUvarint(b, uint64(h.Node))
	b = binary.AppendUvarint(b, h.Incarnation)
	return appendStr(b, h.ClusterID)
}

// DecodeHello parses and validates a Hello payload.
func DecodeHello(b []byte) (Hello, error) {
	d := decoder{b: b}
	h := Hello{
		MinVersion:  d.uint32("min version"),
		MaxVersion:  d.uint32("max version"),
		Node:        ids.NodeID(d.uvarint("node")),
		Incarnation: d.uvarint("incarnation"),
		ClusterID:   d.str("cluster id", maxClusterIDLen),
	}
	if err := d.end(); err != nil {
		return Hello{}, err
	}
	if h.Node == 0 {
		return Hello{}, fmt.Errorf("%w: node 0", ErrMalformedControl)
	}
	if h.MinVersion == 0 || h.MinVersion > h.MaxVersion {
		return Hello{}, fmt.Errorf("%w: version range %d..%d", ErrMalformedControl, h.MinVersion, h.MaxVersion)
	}
	return h, nil
}

// NegotiateVersion returns the highest version both this build and a peer
// speaking [min, max] understand.
func NegotiateVersion(min, max uint32) (uint32, bool) {
	v := uint32(ProtocolVersion)
	if max < v {
		v = max
	}
	if v < min || v < MinProtocolVersion {
		return 0, false
	}
	return v, true
}

// Encode appends h's wire form to b.
func (h *HelloOK) Encode(b []byte) []byte {
	b = binary.AppendUvarint(b, uint64(h.Version))
	b = binary.AppendUvarint(b, uint64(h.Node))
	return binary.AppendUvarint(b, h.Incarnation)
}

// DecodeHelloOK parses and validates a HelloOK payload.
func DecodeHelloOK(b []byte) (HelloOK, error) {
	d := decoder{b: b}
	h := HelloOK{Version: d.uint32("version"), Node: ids.NodeID(d.uvarint("node")), Incarnation: d.uvarint("incarnation")}
	if err := d.end(); err != nil {
		return HelloOK{}, err
	}
	if h.Node == 0 || h.Version == 0 {
		return HelloOK{}, fmt.Errorf("%w: node %d version %d", ErrMalformedControl, h.Node, h.Version)
	}
	return h, nil
}

// Encode appends r's wire form to b; over-long fields are cut to their bound.
func (r *Refusal) Encode(b []byte) []byte {
	b = appendStr(b, truncate(r.Reason, maxReasonLen))
	return appendStr(b, truncate(r.Message, maxMessageLen))
}

// DecodeRefusal parses a Refuse or Result payload.
func DecodeRefusal(b []byte) (Refusal, error) {
	d := decoder{b: b}
	r := Refusal{Reason: d.str("reason", maxReasonLen), Message: d.str("message", maxMessageLen)}
	return r, d.end()
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// RPCRequest is one request on an RPC stream.
type RPCRequest struct {
	ID uint64
	// TimeoutMicros is the caller's remaining deadline (0: none); the server
	// runs the handler under it.
	TimeoutMicros uint64
	Method        string
	Body          []byte
}

// Encode appends r's wire form to b.
func (r *RPCRequest) Encode(b []byte) []byte {
	b = binary.AppendUvarint(b, r.ID)
	b = binary.AppendUvarint(b, r.TimeoutMicros)
	b = appendStr(b, r.Method)
	return append(b, r.Body...)
}

// DecodeRPCRequest parses a request; Body aliases b.
func DecodeRPCRequest(b []byte) (RPCRequest, error) {
	d := decoder{b: b}
	r := RPCRequest{ID: d.uvarint("request id"), TimeoutMicros: d.uvarint("timeout"), Method: d.str("method", MaxMethodLen)}
	if d.err != nil {
		return RPCRequest{}, d.err
	}
	if r.Method == "" {
		return RPCRequest{}, fmt.Errorf("%w: empty method", ErrMalformedControl)
	}
	r.Body = d.b
	return r, nil
}

// RPCResponse answers the request with the same ID: a body, or an error with
// a stable code.
type RPCResponse struct {
	ID   uint64
	Code string // empty on success
	Body []byte // the result, or the error message when Code is set
}

// Encode appends r's wire form to b.
func (r *RPCResponse) Encode(b []byte) []byte {
	b = binary.AppendUvarint(b, r.ID)
	b = appendStr(b, truncate(r.Code, maxReasonLen))
	return append(b, r.Body...)
}

// DecodeRPCResponse parses a response; Body aliases b.
func DecodeRPCResponse(b []byte) (RPCResponse, error) {
	d := decoder{b: b}
	r := RPCResponse{ID: d.uvarint("request id"), Code: d.str("code", maxReasonLen)}
	if d.err != nil {
		return RPCResponse{}, d.err
	}
	r.Body = d.b
	return r, nil
}

// RPCHandler serves one RPC method. The returned error is sent to the caller:
// an *RPCError keeps its code, anything else becomes code "internal".
type RPCHandler func(ctx context.Context, from ids.NodeID, req []byte) ([]byte, error)

// RPCError is an error returned by a remote handler, or by the transport for
// a request that could not be served.
type RPCError struct {
	Code    string
	Message string
}

func (e *RPCError) Error() string { return fmt.Sprintf("rpc error %s: %s", e.Code, e.Message) }

// RPC error codes the transport itself produces.
const (
	RPCUnknownMethod = "unknown_method"
	RPCInternal      = "internal"
	RPCDeadline      = "deadline_exceeded"
)

// Caller sends request/response RPCs to peers.
type Caller interface {
	// Call sends req to method on node to and waits for its response or ctx.
	// Errors: ErrUnreachable when no connection could be made, an *RPCError
	// from the remote side, or ctx's error.
	Call(ctx context.Context, to ids.NodeID, method string, req []byte) ([]byte, error)
}
