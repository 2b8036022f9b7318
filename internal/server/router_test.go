package server

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/nodedb/nodedb-cluster/cluster"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// TestAfterFailureRetriesOnlyWhatCannotHaveApplied: the forwarding loop's
// decision (and the API's started writes', which share it) over every
// failure a local or remote attempt can give. A write is tried again only
// on failures that prove it never reached a log; anything that may have
// applied is outcome unknown, whatever else the error says (a proposal cut
// off by a stopping host or a destroyed replica carries "stopped" or "group
// not found" in its text). Reads, which change nothing, are tried again on
// those too.
func TestAfterFailureRetriesOnlyWhatCannotHaveApplied(t *testing.T) {
	const target ids.NodeID = 2
	cutOff := func(cause error) error { return fmt.Errorf("%w: %v", cluster.ErrOutcomeUnknown, cause) }
	type want int
	const (
		retry want = iota
		unknown
		moved
		unavailable
		other
	)
	cases := []struct {
		name  string
		err   error // as an attempt returns it (local errors go through toRPCError)
		write want
		read  want
		hint  ids.NodeID
	}{
		{"local not leader, leader 3", toRPCError(&cluster.NotLeaderError{Group: 1, LeaderNode: 3}), retry, retry, 3},
		{"local not leader, leader is the target", toRPCError(&cluster.NotLeaderError{Group: 1, LeaderNode: target}), retry, retry, 0},
		{"local group not found", toRPCError(cluster.ErrGroupNotFound), retry, retry, 0},
		{"local proposal dropped", toRPCError(cluster.ErrProposalDropped), retry, retry, 0},
		{"local transfer aborted", toRPCError(cluster.ErrTransferAborted), retry, retry, 0},
		{"local host stopped before proposing", toRPCError(cluster.ErrStopped), retry, retry, 0},
		{"local proposal cut off by a stop", toRPCError(cutOff(cluster.ErrStopped)), unknown, retry, 0},
		{"local proposal cut off by a destroy", toRPCError(cutOff(cluster.ErrGroupNotFound)), unknown, retry, 0},
		{"local wait ended", toRPCError(fmt.Errorf("%w: %w", cluster.ErrOutcomeUnknown, context.DeadlineExceeded)), unknown, retry, 0},
		{"local bare deadline", toRPCError(context.DeadlineExceeded), unknown, retry, 0},
		{"local too large", toRPCError(fmt.Errorf("%w: 9 > 8", cluster.ErrTooLarge)), other, other, 0},
		{"remote not leader", &transport.RPCError{Code: codeNotLeader, Message: "3"}, retry, retry, 3},
		{"remote unavailable", &transport.RPCError{Code: codeUnavailable, Message: "stopped"}, retry, retry, 0},
		{"remote outcome unknown", &transport.RPCError{Code: codeOutcomeUnknown, Message: "cut off"}, unknown, retry, 0},
		{"remote moved", &transport.RPCError{Code: codeMoved, Message: "7:2:4"}, moved, moved, 0},
		{"remote too large", &transport.RPCError{Code: codeTooLarge, Message: "big"}, other, other, 0},
		{"request lost after sending", fmt.Errorf("rpc: %w", transport.ErrRequestLost), unknown, retry, 0},
		{"unreachable before sending", fmt.Errorf("rpc: %w", transport.ErrUnreachable), retry, retry, 0},
		{"something else", errors.New("disk on fire"), other, other, 0},
	}
	for _, c := range cases {
		for _, write := range []bool{true, false} {
			w := c.read
			if write {
				w = c.write
			}
			hint, final := afterFailure(context.Background(), write, target, c.err)
			var me *MovedError
			var got want
			switch {
			case final == nil:
				got = retry
			case errors.Is(final, cluster.ErrOutcomeUnknown):
				got = unknown
			case errors.As(final, &me):
				got = moved
			case errors.Is(final, ErrUnavailable):
				got = unavailable
			default:
				got = other
			}
			if got != w || (got == retry && hint != c.hint) {
				t.Errorf("%s (write %v): decision %d hint %d, want %d hint %d (final %v)", c.name, write, got, hint, w, c.hint, final)
			}
		}
	}
	// A context that ends while an attempt's error says nothing more.
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	if _, final := afterFailure(ended, true, target, errors.New("eof")); final == nil {
		t.Error("an unclassified failure was retried")
	}
}
