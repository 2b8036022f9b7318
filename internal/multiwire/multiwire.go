// Package multiwire is the framing of POST /v1/multi, which carries many
// independent REST requests in one HTTP exchange (docs/api.md).
//
// Why: under load most of a request's cost is the HTTP exchange itself
// (a read and a write system call on each side, header parsing, a
// goroutine wake-up), not the work. The Go client coalesces the requests
// that its callers have in flight to one node into one POST /v1/multi; the
// node runs them concurrently, each exactly as if it had come alone, and
// streams each answer back as soon as it is ready, so a slow request never
// holds up a fast one.
//
// A request body is a version byte and a count, then per request its
// method, request URI, headers and body. The response is a stream of
// frames, each the index of the request it answers, its status, headers
// and body. Every length is a uvarint and is checked against the bytes that
// remain and against Limits before anything is allocated.
package multiwire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// Version is the framing version, the first byte of a request body and of
// a response stream.
const Version byte = 1

// ContentType marks both directions.
const ContentType = "application/x-nodedb-multi"

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("multiwire: malformed")

// Limits bound what a decoder accepts.
type Limits struct {
	MaxRequests int // requests per body
	MaxHeaders  int // headers per request or response
	MaxString   int // bytes of a method, URI, header name or value
	MaxBody     int // bytes of one request's or response's body
}

// DefaultLimits suit the KV API: bodies up to the largest value plus room.
func DefaultLimits() Limits {
	return Limits{MaxRequests: 1024, MaxHeaders: 32, MaxString: 8 << 10, MaxBody: 2 << 20}
}

// Request is one request of a batch.
type Request struct {
	Method string
	URI    string // path and query, escaped
	Header http.Header
	Body   []byte
}

// Response is the answer to the request at Index.
type Response struct {
	Index  int
	Status int
	Header http.Header
	Body   []byte
}

// AppendRequests appends the encoding of reqs to b.
func AppendRequests(b []byte, reqs []Request) []byte {
	b = append(b, Version)
	b = binary.AppendUvarint(b, uint64(len(reqs)))
	for i := range reqs {
		r := &reqs[i]
		b = appendString(b, r.Method)
		b = appendString(b, r.URI)
		b = appendHeader(b, r.Header)
		b = appendString(b, string(r.Body))
	}
	return b
}

// DecodeRequests decodes a request body.
func DecodeRequests(b []byte, lim Limits) ([]Request, error) {
	// Strings (methods, URIs, header names and values) are cut from one
	// copy of the body instead of being copied one by one.
	d := decoder{b: b, s: string(b), lim: lim}
	if v := d.byte(); d.err == nil && v != Version {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrMalformed, v, Version)
	}
	n := d.count(lim.MaxRequests, "requests", "")
	if d.err != nil {
		return nil, d.err
	}
	if n == 0 {
		return nil, fmt.Errorf("%w: no requests", ErrMalformed)
	}
	reqs := make([]Request, 0, n)
	for range n {
		var r Request
		r.Method = d.string(lim.MaxString, "method")
		r.URI = d.string(lim.MaxString, "URI")
		r.Header = d.header()
		r.Body = d.bytes(lim.MaxBody, "body")
		if d.err != nil {
			return nil, d.err
		}
		reqs = append(reqs, r)
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the last request", ErrMalformed, len(d.b))
	}
	return reqs, nil
}

// AppendResponse appends the frame of one response to b.
func AppendResponse(b []byte, r *Response) []byte {
	b = binary.AppendUvarint(b, uint64(r.Index))
	b = binary.AppendUvarint(b, uint64(r.Status))
	b = appendHeader(b, r.Header)
	b = binary.AppendUvarint(b, uint64(len(r.Body)))
	return append(b, r.Body...)
}

// ResponseReader reads a response stream frame by frame.
type ResponseReader struct {
	r       *bufio.Reader
	lim     Limits
	started bool
	scratch []byte
}

// NewResponseReader reads the stream in r.
func NewResponseReader(r io.Reader, lim Limits) *ResponseReader {
	return &ResponseReader{r: bufio.NewReader(r), lim: lim}
}

// Next returns the next response, or io.EOF at the end of a well-formed
// stream. n is the number of requests sent: indexes are checked against it.
func (rr *ResponseReader) Next(n int) (Response, error) {
	if !rr.started {
		v, err := rr.r.ReadByte()
		if err != nil {
			return Response{}, unexpected(err)
		}
		if v != Version {
			return Response{}, fmt.Errorf("%w: version %d, want %d", ErrMalformed, v, Version)
		}
		rr.started = true
	}
	idx, err := readUvarint(rr.r)
	if err == io.EOF {
		return Response{}, io.EOF
	}
	if err != nil {
		return Response{}, unexpected(err)
	}
	if idx >= uint64(n) {
		return Response{}, fmt.Errorf("%w: answer to request %d of %d", ErrMalformed, idx, n)
	}
	status, err := readUvarint(rr.r)
	if err != nil {
		return Response{}, unexpected(err)
	}
	if status < 100 || status > 999 {
		return Response{}, fmt.Errorf("%w: status %d", ErrMalformed, status)
	}
	resp := Response{Index: int(idx), Status: int(status)}
	nh, err := rr.readLen(rr.lim.MaxHeaders, "headers", "")
	if err != nil {
		return Response{}, err
	}
	resp.Header = make(http.Header, nh)
	vals := make([]string, nh)
	for i := range nh {
		k, err := rr.readScratch(rr.lim.MaxString, "header name")
		if err != nil {
			return Response{}, err
		}
		ck, known := knownName(k)
		if !known {
			ck = http.CanonicalHeaderKey(string(k))
		}
		v, err := rr.readScratch(rr.lim.MaxString, "header value")
		if err != nil {
			return Response{}, err
		}
		if prev, ok := resp.Header[ck]; ok {
			resp.Header[ck] = append(prev, string(v))
			continue
		}
		vals[i] = string(v)
		resp.Header[ck] = vals[i : i+1 : i+1]
	}
	if resp.Body, err = rr.readBytes(rr.lim.MaxBody, "body"); err != nil {
		return Response{}, err
	}
	return resp, nil
}

// readLen reads a length of at most max of what (with unit: " bytes" or
// ""; given apart so that no message is built unless it is needed).
func (rr *ResponseReader) readLen(max int, what, unit string) (int, error) {
	n, err := readUvarint(rr.r)
	if err != nil {
		return 0, unexpected(err)
	}
	if n > uint64(max) {
		return 0, fmt.Errorf("%w: %d %s%s, at most %d", ErrMalformed, n, what, unit, max)
	}
	return int(n), nil
}

// readScratch reads a string field into the reader's scratch buffer, valid
// until the next call.
func (rr *ResponseReader) readScratch(max int, what string) ([]byte, error) {
	n, err := rr.readLen(max, what, " bytes")
	if err != nil {
		return nil, err
	}
	if cap(rr.scratch) < n {
		rr.scratch = make([]byte, n)
	}
	b := rr.scratch[:n]
	if _, err := io.ReadFull(rr.r, b); err != nil {
		return nil, unexpected(err)
	}
	return b, nil
}

// knownName returns the canonical form of the header names a node's answers
// carry, without allocating.
func knownName(k []byte) (string, bool) {
	switch string(k) {
	case "Content-Type":
		return "Content-Type", true
	case "Content-Length":
		return "Content-Length", true
	case "X-Nodedb-Version":
		return "X-Nodedb-Version", true
	case "X-Nodedb-Vshard":
		return "X-Nodedb-Vshard", true
	case "Retry-After":
		return "Retry-After", true
	}
	return "", false
}

func (rr *ResponseReader) readBytes(max int, what string) ([]byte, error) {
	n, err := rr.readLen(max, what, " bytes")
	if err != nil {
		return nil, err
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(rr.r, b); err != nil {
		return nil, unexpected(err)
	}
	return b, nil
}

// readUvarint is binary.ReadUvarint with an overflow reported as
// ErrMalformed (bytes from the network, not a program error).
func readUvarint(r io.ByteReader) (uint64, error) {
	var x uint64
	var s uint
	for i := range binary.MaxVarintLen64 {
		b, err := r.ReadByte()
		if err != nil {
			if i > 0 && err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		if b < 0x80 {
			if i == binary.MaxVarintLen64-1 && b > 1 {
				break
			}
			return x | uint64(b)<<s, nil
		}
		x |= uint64(b&0x7f) << s
		s += 7
	}
	return 0, fmt.Errorf("%w: a varint overflows 64 bits", ErrMalformed)
}

// unexpected maps a stream that ends inside a frame to a malformed-stream
// error; other read errors pass through.
func unexpected(err error) error {
	if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: stream ends inside a frame", ErrMalformed)
	}
	return err
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendHeader(b []byte, h http.Header) []byte {
	n := 0
	for _, vs := range h {
		n += len(vs)
	}
	b = binary.AppendUvarint(b, uint64(n))
	for k, vs := range h {
		for _, v := range vs {
			b = appendString(b, k)
			b = appendString(b, v)
		}
	}
	return b
}

// decoder reads a request body. s holds the same bytes as b, as a string:
// strings are cut from it.
type decoder struct {
	b   []byte
	s   string
	lim Limits
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
	}
}

// skip consumes k bytes.
func (d *decoder) skip(k int) {
	d.b, d.s = d.b[k:], d.s[k:]
}

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) == 0 {
		d.fail("empty")
		return 0
	}
	v := d.b[0]
	d.skip(1)
	return v
}

// count reads a length of at most max of what (with unit: " bytes" or "";
// given apart so that no message is built unless it is needed).
func (d *decoder) count(max int, what, unit string) int {
	if d.err != nil {
		return 0
	}
	n, k := binary.Uvarint(d.b)
	if k <= 0 {
		d.fail("bad length of %s%s", what, unit)
		return 0
	}
	d.skip(k)
	if n > uint64(max) {
		d.fail("%d %s%s, at most %d", n, what, unit, max)
		return 0
	}
	return int(n)
}

// length reads the length of a string or byte field and checks it against
// what is left.
func (d *decoder) length(max int, what string) int {
	n := d.count(max, what, " bytes")
	if d.err != nil {
		return 0
	}
	if n > len(d.b) {
		d.fail("%s of %d bytes, %d left", what, n, len(d.b))
		return 0
	}
	return n
}

func (d *decoder) bytes(max int, what string) []byte {
	n := d.length(max, what)
	if d.err != nil {
		return nil
	}
	v := d.b[:n:n]
	d.skip(n)
	return v
}

func (d *decoder) string(max int, what string) string {
	n := d.length(max, what)
	if d.err != nil {
		return ""
	}
	v := d.s[:n]
	d.skip(n)
	return v
}

// header reads a request's headers into one map whose values share one
// backing array.
func (d *decoder) header() http.Header {
	n := d.count(d.lim.MaxHeaders, "headers", "")
	if d.err != nil {
		return nil
	}
	h := make(http.Header, n)
	vals := make([]string, n)
	for i := range n {
		k := d.string(d.lim.MaxString, "header name")
		v := d.string(d.lim.MaxString, "header value")
		if d.err != nil {
			return nil
		}
		k = http.CanonicalHeaderKey(k)
		if prev, ok := h[k]; ok {
			h[k] = append(prev, v)
			continue
		}
		vals[i] = v
		h[k] = vals[i : i+1 : i+1]
	}
	return h
}
