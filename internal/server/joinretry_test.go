package server

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// TestRequestJoinRetriesBusyAndStopsOnRefusal: a node busy with other joins
// is asked again until it answers; a request the node refused as such
// (malformed, too large) is not sent again.
func TestRequestJoinRetriesBusyAndStopsOnRefusal(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ok, err := proto.Marshal(&metapb.JoinResponse{Code: joinOK, NodeId: 4})
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	busyTwice := func(ctx context.Context, addr, caHash string, req []byte) ([]byte, *x509.Certificate, error) {
		if calls.Add(1) <= 2 {
			return nil, nil, &transport.Refusal{Reason: transport.RefusalBusy, Message: "too many join connections"}
		}
		return ok, &x509.Certificate{}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, _, err := requestJoin(ctx, busyTwice, "quic", "n1", "hash", nil, log)
	if err != nil || resp.NodeId != 4 || calls.Load() != 3 {
		t.Fatalf("after two busy refusals: %v, %v, %d calls; want the answer on the third", resp, err, calls.Load())
	}

	calls.Store(0)
	tooLarge := func(ctx context.Context, addr, caHash string, req []byte) ([]byte, *x509.Certificate, error) {
		calls.Add(1)
		return nil, nil, &transport.Refusal{Reason: "too_large", Message: "join request of 70000 bytes"}
	}
	_, _, err = requestJoin(ctx, tooLarge, "quic", "n1", "hash", nil, log)
	var rf *transport.Refusal
	if !errors.As(err, &rf) || rf.Reason != "too_large" || calls.Load() != 1 || ctx.Err() != nil {
		t.Fatalf("a refused request: %v after %d calls, want the refusal at once", err, calls.Load())
	}
}
