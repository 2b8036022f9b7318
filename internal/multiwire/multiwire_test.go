package multiwire

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"reflect"
	"testing"
)

func TestRequestsRoundTrip(t *testing.T) {
	in := []Request{
		{Method: "PUT", URI: "/v1/kv/a?if_version=0", Header: http.Header{"X-Nodedb-Seq": {"7"}, "Idempotency-Key": {"k1"}}, Body: []byte("value")},
		{Method: "GET", URI: "/v1/kv/%00b", Header: http.Header{}, Body: []byte{}},
		{Method: "DELETE", URI: "/v1/kv/c", Header: http.Header{"A": {"1", "2"}}, Body: []byte{}},
	}
	b := AppendRequests(nil, in)
	out, err := DecodeRequests(b, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", out, in)
	}
}

func TestResponsesRoundTrip(t *testing.T) {
	in := []Response{
		{Index: 2, Status: 200, Header: http.Header{"X-Nodedb-Version": {"3"}}, Body: []byte(`{"version":3}`)},
		{Index: 0, Status: 409, Header: http.Header{"Retry-After": {"1"}}, Body: []byte(`{"code":"conflict"}`)},
		{Index: 1, Status: 204, Header: http.Header{}, Body: []byte{}},
		{Index: 1, Status: 200, Header: http.Header{"Content-Type": {"application/json"}, "X-Other": {"a", "b"}, "X-Nodedb-Vshard": {"7"}}, Body: []byte("x")},
	}
	b := []byte{Version}
	for i := range in {
		b = AppendResponse(b, &in[i])
	}
	rr := NewResponseReader(bytes.NewReader(b), DefaultLimits())
	for i := range in {
		got, err := rr.Next(len(in))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, in[i]) {
			t.Fatalf("frame %d: got %+v, want %+v", i, got, in[i])
		}
	}
	if _, err := rr.Next(len(in)); err != io.EOF {
		t.Fatalf("after the last frame: %v, want io.EOF", err)
	}
}

// TestDecodeRefusesBadInput: every malformed body is a typed error, and
// no declared length is trusted before the bytes are there.
func TestDecodeRefusesBadInput(t *testing.T) {
	good := AppendRequests(nil, []Request{{Method: "GET", URI: "/v1/kv/a", Body: []byte("x")}})
	lim := DefaultLimits()
	for name, b := range map[string][]byte{
		"empty":          nil,
		"bad version":    append([]byte{9}, good[1:]...),
		"no requests":    {Version, 0},
		"too many":       {Version, 0xff, 0xff, 0x03},
		"truncated":      good[:len(good)-1],
		"trailing bytes": append(append([]byte(nil), good...), 0),
		"huge body len":  {Version, 1, 3, 'G', 'E', 'T', 1, '/', 0, 0xff, 0xff, 0xff, 0xff, 0x0f},
		"huge count len": {Version, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
		"bad varint":     {Version, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
	} {
		if _, err := DecodeRequests(b, lim); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
	frame := AppendResponse([]byte{Version}, &Response{Index: 0, Status: 200, Body: []byte("abc")})
	for name, c := range map[string]struct {
		b []byte
		n int
	}{
		"index out of range": {frame, 0},
		"cut inside a frame": {frame[:len(frame)-1], 1},
		"bad version":        {append([]byte{2}, frame[1:]...), 1},
		"bad status":         {[]byte{Version, 0, 7, 0, 0}, 1},
		"empty stream":       {nil, 1},
	} {
		if _, err := NewResponseReader(bytes.NewReader(c.b), lim).Next(c.n); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}

func FuzzDecodeRequests(f *testing.F) {
	f.Add(AppendRequests(nil, []Request{{Method: "PUT", URI: "/v1/kv/a", Header: http.Header{"A": {"b"}}, Body: []byte("v")}}))
	f.Add([]byte{Version, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		lim := Limits{MaxRequests: 8, MaxHeaders: 4, MaxString: 64, MaxBody: 256}
		reqs, err := DecodeRequests(b, lim)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if len(reqs) == 0 || len(reqs) > lim.MaxRequests {
			t.Fatalf("%d requests", len(reqs))
		}
		for _, r := range reqs {
			if len(r.Body) > lim.MaxBody || len(r.URI) > lim.MaxString || len(r.Header) > lim.MaxHeaders {
				t.Fatalf("limit exceeded: %+v", r)
			}
		}
	})
}

func FuzzResponseReader(f *testing.F) {
	f.Add(AppendResponse([]byte{Version}, &Response{Index: 1, Status: 200, Header: http.Header{"A": {"b"}}, Body: []byte("v")}))
	f.Fuzz(func(t *testing.T, b []byte) {
		lim := Limits{MaxRequests: 8, MaxHeaders: 4, MaxString: 64, MaxBody: 256}
		rr := NewResponseReader(bytes.NewReader(b), lim)
		for range 16 {
			r, err := rr.Next(4)
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrMalformed) {
					t.Fatalf("untyped error %v", err)
				}
				return
			}
			if r.Index < 0 || r.Index >= 4 || len(r.Body) > lim.MaxBody {
				t.Fatalf("bad frame %+v", r)
			}
		}
	})
}

// BenchmarkResponseReader decodes the answers a node streams for 16
// carried GETs of 256-byte values: what the Go client does per answer.
func BenchmarkResponseReader(b *testing.B) {
	const n = 16
	stream := []byte{Version}
	for i := range n {
		stream = AppendResponse(stream, &Response{Index: i, Status: 200, Header: http.Header{
			"X-Nodedb-Vshard": {"794"}, "X-Nodedb-Version": {"12"}, "Content-Type": {"application/octet-stream"}, "Content-Length": {"256"},
		}, Body: bytes.Repeat([]byte{'v'}, 256)})
	}
	b.ReportAllocs()
	for b.Loop() {
		rr := NewResponseReader(bytes.NewReader(stream), DefaultLimits())
		for range n {
			if _, err := rr.Next(n); err != nil {
				b.Fatal(err)
			}
		}
	}
}
