package transport

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"testing"
	"testing/iotest"
)

func TestFrameRoundTrip(t *testing.T) {
	var stream []byte
	payloads := [][]byte{nil, {1}, bytes.Repeat([]byte("x"), 300<<10)}
	for i, p := range payloads {
		stream = AppendFrame(stream, FrameType(1+i), p)
	}
	b, off := BeginFrame(stream)
	b = append(b, "in place"...)
	stream, err := FinishFrame(b, off, FrameRPCRequest)
	if err != nil {
		t.Fatal(err)
	}
	// One byte at a time: framing must not depend on read sizes.
	fr := NewFrameReader(iotest.OneByteReader(bytes.NewReader(stream)), 1<<20)
	for i, p := range payloads {
		typ, got, err := fr.Next()
		if err != nil || typ != FrameType(1+i) || !bytes.Equal(got, p) {
			t.Fatalf("frame %d: %v %v (%d bytes), want %v (%d bytes)", i, typ, err, len(got), FrameType(1+i), len(p))
		}
	}
	if typ, got, err := fr.Next(); err != nil || typ != FrameRPCRequest || string(got) != "in place" {
		t.Fatalf("in-place frame: %v %q %v", typ, got, err)
	}
	if _, _, err := fr.Next(); err != io.EOF {
		t.Fatalf("after the last frame: %v, want io.EOF", err)
	}
}

func TestFrameReaderRefusesBadFrames(t *testing.T) {
	good := AppendFrame(nil, FrameRaftBatch, []byte("payload"))
	flip := func(i int) []byte {
		b := bytes.Clone(good)
		b[i] ^= 0x40
		return b
	}
	for name, in := range map[string][]byte{
		"type zero":          append([]byte{0}, good[1:]...),
		"unknown type":       append([]byte{200}, good[1:]...),
		"oversized":          {byte(FrameRaftBatch), 0, 0x10, 0, 1, 0, 0, 0, 0},
		"flipped length":     flip(4),
		"flipped checksum":   flip(6),
		"flipped payload":    flip(len(good) - 1),
		"truncated header":   good[:5],
		"truncated payload":  good[:len(good)-2],
		"type changed later": append([]byte{byte(FrameRPCRequest)}, good[1:]...),
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := NewFrameReader(bytes.NewReader(in), 1<<20).Next()
			if !errors.Is(err, ErrFrame) {
				t.Fatalf("Next = %v, want ErrFrame", err)
			}
		})
	}
}

// A header announcing the largest allowed frame, followed by a trickle of
// bytes, must cost memory in proportion to the bytes sent, not the claim.
func TestFrameReaderAllocatesAsBytesArrive(t *testing.T) {
	hdr := []byte{byte(FrameRaftBatch), 0x04, 0, 0, 0, 0, 0, 0, 0} // 64 MiB claimed
	in := io.MultiReader(bytes.NewReader(hdr), bytes.NewReader(make([]byte, 1000)))
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, _, err := NewFrameReader(in, DefaultMaxFrameBytes).Next()
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrFrame) {
		t.Fatalf("Next = %v, want ErrFrame for the truncated payload", err)
	}
	if grown := after.TotalAlloc - before.TotalAlloc; grown > 4<<20 {
		t.Fatalf("allocated %d bytes for a 1000-byte trickle", grown)
	}
}

func FuzzFrameReader(f *testing.F) {
	f.Add(AppendFrame(nil, FrameRaftBatch, []byte{1, 0}))
	f.Add(AppendFrame(AppendFrame(nil, FrameHello, []byte{1, 1, 2, 3, 0}), FrameRPCRequest, []byte("x")))
	f.Add([]byte{byte(FrameRaftBatch), 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		fr := NewFrameReader(bytes.NewReader(data), 1<<16)
		consumed := 0
		for {
			typ, payload, err := fr.Next()
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrFrame) {
					t.Fatalf("unexpected error kind: %v", err)
				}
				return
			}
			if typ == 0 || typ >= frameTypeEnd || len(payload) > 1<<16 {
				t.Fatalf("accepted frame %v of %d bytes", typ, len(payload))
			}
			// What was accepted re-encodes to the bytes that were read.
			enc := AppendFrame(nil, typ, payload)
			if !bytes.Equal(enc, data[consumed:consumed+len(enc)]) {
				t.Fatal("accepted frame does not re-encode to its input")
			}
			consumed += len(enc)
			// Control payloads decode or fail cleanly, never panic.
			switch typ {
			case FrameHello:
				if h, err := DecodeHello(payload); err == nil && (h.Node == 0 || h.MinVersion > h.MaxVersion) {
					t.Fatalf("accepted invalid hello %+v", h)
				}
			case FrameHelloOK:
				DecodeHelloOK(payload)
			case FrameRefuse, FrameResult:
				DecodeRefusal(payload)
			case FrameRPCRequest:
				if r, err := DecodeRPCRequest(payload); err == nil && (r.Method == "" || len(r.Method) > MaxMethodLen) {
					t.Fatalf("accepted request with method %q", r.Method)
				}
			case FrameRPCResponse:
				DecodeRPCResponse(payload)
			case FrameRaftBatch:
				DecodeBatch(payload)
			}
		}
	})
}

func TestControlPayloadsRoundTrip(t *testing.T) {
	h := Hello{MinVersion: 1, MaxVersion: 3, Node: 42, Incarnation: 1 << 60, ClusterID: "prod"}
	got, err := DecodeHello(h.Encode(nil))
	if err != nil || got != h {
		t.Fatalf("hello: %+v %v", got, err)
	}
	ok := HelloOK{Version: 1, Node: 7, Incarnation: 9}
	if got, err := DecodeHelloOK(ok.Encode(nil)); err != nil || got != ok {
		t.Fatalf("hello-ok: %+v %v", got, err)
	}
	r := Refusal{Reason: "version", Message: "too old"}
	if got, err := DecodeRefusal(r.Encode(nil)); err != nil || got != r {
		t.Fatalf("refusal: %+v %v", got, err)
	}
	req := RPCRequest{ID: 5, TimeoutMicros: 1000, Method: "kv.put", Body: []byte("body")}
	if got, err := DecodeRPCRequest(req.Encode(nil)); err != nil || got.ID != 5 || got.Method != "kv.put" || string(got.Body) != "body" || got.TimeoutMicros != 1000 {
		t.Fatalf("request: %+v %v", got, err)
	}
	resp := RPCResponse{ID: 5, Code: "conflict", Body: []byte("msg")}
	if got, err := DecodeRPCResponse(resp.Encode(nil)); err != nil || got.ID != 5 || got.Code != "conflict" || string(got.Body) != "msg" {
		t.Fatalf("response: %+v %v", got, err)
	}
	for name, b := range map[string][]byte{
		"node zero":        (&Hello{MinVersion: 1, MaxVersion: 1}).Encode(nil),
		"inverted range":   (&Hello{MinVersion: 2, MaxVersion: 1, Node: 1}).Encode(nil),
		"trailing bytes":   append(h.Encode(nil), 0),
		"long cluster id":  (&Hello{MinVersion: 1, MaxVersion: 1, Node: 1, ClusterID: string(make([]byte, 200))}).Encode(nil),
		"truncated":        h.Encode(nil)[:3],
		"version overflow": {0xff, 0xff, 0xff, 0xff, 0x7f, 1, 1, 1, 0},
	} {
		if _, err := DecodeHello(b); !errors.Is(err, ErrMalformedControl) {
			t.Errorf("%s: DecodeHello = %v, want ErrMalformedControl", name, err)
		}
	}
}

func TestNegotiateVersion(t *testing.T) {
	for _, tc := range []struct {
		min, max uint32
		want     uint32
		ok       bool
	}{
		{1, 1, 1, true},
		{1, 5, ProtocolVersion, true},
		{ProtocolVersion + 1, ProtocolVersion + 3, 0, false},
	} {
		got, ok := NegotiateVersion(tc.min, tc.max)
		if got != tc.want || ok != tc.ok {
			t.Errorf("NegotiateVersion(%d, %d) = %d %v, want %d %v", tc.min, tc.max, got, ok, tc.want, tc.ok)
		}
	}
}
