package transport

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Stream transports (QUIC, and TCP for comparison) carry every payload in a
// frame:
//
//	type(1) length(4, big endian) crc32c(4, big endian) payload(length)
//
// The checksum covers the type, the length and the payload, so a corrupted
// header is caught as surely as a corrupted body. A reader checks the type and
// bounds the length before it allocates anything, and grows its buffer only as
// payload bytes actually arrive: a peer that announces a huge frame and then
// stalls costs a small buffer, not the announced size.

// FrameType names what a frame carries. A stream accepts only the types that
// belong on it; anything else is a protocol error.
type FrameType uint8

// Frame types.
const (
	FrameHello       FrameType = 1 // connection handshake: versions and the node's identity claim
	FrameHelloOK     FrameType = 2 // handshake accepted: the chosen version
	FrameRefuse      FrameType = 3 // handshake refused: a reason
	FrameRaftBatch   FrameType = 4 // an EncodeBatch payload
	FrameRPCRequest  FrameType = 5
	FrameRPCResponse FrameType = 6
	FrameResult      FrameType = 7 // the outcome of a snapshot stream
	frameTypeEnd     FrameType = 8
)

func (t FrameType) String() string {
	switch t {
	case FrameHello:
		return "hello"
	case FrameHelloOK:
		return "hello-ok"
	case FrameRefuse:
		return "refuse"
	case FrameRaftBatch:
		return "raft-batch"
	case FrameRPCRequest:
		return "rpc-request"
	case FrameRPCResponse:
		return "rpc-response"
	case FrameResult:
		return "result"
	}
	return fmt.Sprintf("frame-type-%d", uint8(t))
}

// FrameHeaderSize is the size of a frame's header.
const FrameHeaderSize = 9

// DefaultMaxFrameBytes bounds a frame's payload unless configured otherwise.
const DefaultMaxFrameBytes = 64 << 20

// frameGrowStep is how much a reader's buffer grows at a time while a large
// payload arrives.
const frameGrowStep = 256 << 10

// ErrFrame is wrapped by every framing error: unknown type, oversized length,
// checksum mismatch, or a stream that ends inside a frame.
var ErrFrame = errors.New("transport: bad frame")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// AppendFrame appends a frame holding payload to dst.
func AppendFrame(dst []byte, t FrameType, payload []byte) []byte {
	var h [FrameHeaderSize]byte
	h[0] = byte(t)
	binary.BigEndian.PutUint32(h[1:5], uint32(len(payload)))
	crc := crc32.Update(0, castagnoli, h[:5])
	crc = crc32.Update(crc, castagnoli, payload)
	binary.BigEndian.PutUint32(h[5:9], crc)
	dst = append(dst, h[:]...)
	return append(dst, payload...)
}

// BeginFrame appends a header placeholder to dst and returns the offset to
// pass to FinishFrame once the payload has been appended after it; it lets
// encoders build a payload in place without a copy.
func BeginFrame(dst []byte) ([]byte, int) {
	return append(dst, make([]byte, FrameHeaderSize)...), len(dst)
}

// FinishFrame fills in the header of the frame started at off.
func FinishFrame(b []byte, off int, t FrameType) ([]byte, error) {
	n := len(b) - off - FrameHeaderSize
	if n < 0 || uint64(n) > 1<<32-1 {
		return nil, fmt.Errorf("%w: payload of %d bytes", ErrFrame, n)
	}
	h := b[off : off+FrameHeaderSize]
	h[0] = byte(t)
	binary.BigEndian.PutUint32(h[1:5], uint32(n))
	crc := crc32.Update(0, castagnoli, h[:5])
	crc = crc32.Update(crc, castagnoli, b[off+FrameHeaderSize:])
	binary.BigEndian.PutUint32(h[5:9], crc)
	return b, nil
}

// WriteFrame writes one frame to w.
func WriteFrame(w io.Writer, t FrameType, payload []byte) error {
	_, err := w.Write(AppendFrame(make([]byte, 0, FrameHeaderSize+len(payload)), t, payload))
	return err
}

// FrameReader reads frames from a stream.
type FrameReader struct {
	r   *bufio.Reader
	max int
	buf []byte
}

// NewFrameReader reads frames of at most maxPayload bytes from r (0 means
// DefaultMaxFrameBytes).
func NewFrameReader(r io.Reader, maxPayload int) *FrameReader {
	if maxPayload <= 0 {
		maxPayload = DefaultMaxFrameBytes
	}
	return &FrameReader{r: bufio.NewReaderSize(r, 32<<10), max: maxPayload}
}

// Next returns the next frame. The payload is valid until the following call.
// It returns io.EOF when the stream ends cleanly between frames, and an error
// wrapping ErrFrame when the stream breaks the framing; errors of the
// underlying reader are returned as they are.
func (f *FrameReader) Next() (FrameType, []byte, error) {
	var h [FrameHeaderSize]byte
	if _, err := io.ReadFull(f.r, h[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, nil, fmt.Errorf("%w: stream ends inside a header", ErrFrame)
		}
		return 0, nil, err
	}
	t := FrameType(h[0])
	if t == 0 || t >= frameTypeEnd {
		return 0, nil, fmt.Errorf("%w: unknown type %d", ErrFrame, h[0])
	}
	n := binary.BigEndian.Uint32(h[1:5])
	if uint64(n) > uint64(f.max) {
		return 0, nil, fmt.Errorf("%w: %s payload of %d bytes exceeds the limit of %d", ErrFrame, t, n, f.max)
	}
	// Grow the buffer as the payload arrives, not to the announced size.
	f.buf = f.buf[:0]
	for len(f.buf) < int(n) {
		step := min(int(n)-len(f.buf), frameGrowStep)
		start := len(f.buf)
		if cap(f.buf)-start < step {
			nb := make([]byte, start, start+max(step, min(2*cap(f.buf), int(n)-start)))
			copy(nb, f.buf)
			f.buf = nb
		}
		f.buf = f.buf[:start+step]
		if _, err := io.ReadFull(f.r, f.buf[start:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return 0, nil, fmt.Errorf("%w: stream ends inside a %s payload", ErrFrame, t)
			}
			return 0, nil, err
		}
	}
	crc := crc32.Update(0, castagnoli, h[:5])
	crc = crc32.Update(crc, castagnoli, f.buf)
	if crc != binary.BigEndian.Uint32(h[5:9]) {
		return 0, nil, fmt.Errorf("%w: %s checksum mismatch", ErrFrame, t)
	}
	return t, f.buf, nil
}

// Buffered reports how many bytes the reader holds beyond the frames returned
// so far.
func (f *FrameReader) Buffered() int { return f.r.Buffered() }

// Reader returns the underlying buffered reader, for a stream that switches
// from frames to raw bytes (a snapshot after its header).
func (f *FrameReader) Reader() *bufio.Reader { return f.r }
