package meta

import (
	"errors"
	"testing"

	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

// Every code but OK has a sentinel, and the sentinels are distinct.
func TestEverySentinel(t *testing.T) {
	for c := range metapb.Code_name {
		code := metapb.Code(c)
		if code == metapb.Code_CODE_OK {
			continue
		}
		s, ok := sentinels[code]
		if !ok {
			t.Fatalf("no sentinel for %v", code)
		}
		if s.(*Error).Code != code {
			t.Fatalf("sentinel of %v has code %v", code, s.(*Error).Code)
		}
		for other, o := range sentinels {
			if other != code && errors.Is(s, o) {
				t.Fatalf("%v is %v", code, other)
			}
		}
	}
}

func TestResultError(t *testing.T) {
	if err := ResultError(&metapb.Result{}); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(ResultError(nil), ErrMalformed) {
		t.Fatal("nil result")
	}
	err := ResultError(&metapb.Result{Code: metapb.Code_CODE_BAD_SECRET})
	var me *Error
	if !errors.As(err, &me) || me.Msg == "" || !errors.Is(err, ErrBadSecret) {
		t.Fatalf("%#v", err)
	}
	wrapped := wrap(errorf(metapb.Code_CODE_BAD_EPOCH, "inner"), "outer %d", 1)
	if !errors.Is(wrapped, ErrBadEpoch) || wrapped.Error() != "meta: outer 1: inner" {
		t.Fatalf("%v", wrapped)
	}
}

func TestResultMessageIsClippedAndValid(t *testing.T) {
	res := resultOf(errorf(metapb.Code_CODE_INVALID_ARGUMENT, "%s", string(make([]byte, 4096))+"\xff"))
	if len(res.GetMessage()) > maxMessageBytes {
		t.Fatalf("message of %d bytes", len(res.GetMessage()))
	}
	if _, err := DecodeResult(EncodeResult(res)); err != nil {
		t.Fatal(err)
	}
	if got := clip("héllo", 2); got != "h" {
		t.Fatalf("clip split a rune: %q", got)
	}
}
