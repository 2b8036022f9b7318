package server

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// countingCaller counts the RPCs a server calls, by method, and can refuse
// one method as a node that predates it would.
type countingCaller struct {
	transport.Caller
	mu      sync.Mutex
	calls   map[string]int
	refused string
}

func (e *countingCaller) Call(ctx context.Context, to ids.NodeID, method string, req []byte) ([]byte, error) {
	e.mu.Lock()
	e.calls[method]++
	refused := method == e.refused
	e.mu.Unlock()
	if refused {
		return nil, &transport.RPCError{Code: "unknown_method", Message: method}
	}
	return e.Caller.Call(ctx, to, method, req)
}

// TestObserveAllAsksEachNodeOnce checks that the metadata leader's
// observation of every group (each control pass) asks each other node once
// for the groups it leads, gets every group's leader status, and still gets
// them all, group by group, from a node that does not answer the batch.
func TestObserveAllAsksEachNodeOnce(t *testing.T) {
	c := newTestCluster(t, Settings{VShards: 64, Groups: 8, RF: 3})
	c.join()
	c.join()
	c.waitPlaced(3, 3)
	var s *Server
	for _, n := range c.nodes {
		if n.node.IsLeader(MetaGroup) {
			s = n
		}
	}
	if s == nil {
		t.Fatal("no metadata leader")
	}
	st := s.view.get()
	// Wait until the groups' leaders are spread beyond this node, so that
	// remote observations are made at all.
	deadline := time.Now().Add(30 * time.Second)
	for {
		remote := 0
		for gid := range st.GetGroups() {
			if gs, err := s.node.Status(ids.GroupID(gid)); err == nil && gs.State != "leader" {
				remote++
			}
		}
		if remote > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("every group is led by the metadata leader's node")
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Leaders may still be moving (placement balances them): a group whose
	// believed leader has just handed over is asked again on its own. Once
	// they settle, one batch per other node is all.
	observe := func(refused string) (batches, single int) {
		ep := &countingCaller{Caller: s.ep, calls: map[string]int{}, refused: refused}
		obs := s.observeAllVia(context.Background(), ep, st)
		for gid := range st.GetGroups() {
			if o := obs[gid]; o == nil || o.State != "leader" {
				t.Errorf("refusing %q: group %d: observed %+v, want its leader's status", refused, gid, o)
			}
		}
		batches, single = ep.calls[rpcGroupStatuses], ep.calls[rpcGroupStatus]
		t.Logf("refusing %q: %d batch calls, %d single calls for %d groups", refused, batches, single, len(st.GetGroups()))
		return batches, single
	}
	for {
		batches, single := observe("")
		if batches <= 2 && single == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("observing %d groups still made %d batch and %d single calls, want at most one batch per other node", len(st.GetGroups()), batches, single)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, single := observe(rpcGroupStatuses); single == 0 {
		t.Error("a node that refuses the batch was not asked group by group")
	}
}

// TestDecodeGroupList checks group.statuses requests: a round trip, and
// typed refusals of malformed ones before any allocation they claim.
func TestDecodeGroupList(t *testing.T) {
	in := []ids.GroupID{0, 1, 300, 1 << 40}
	got, err := decodeGroupList(encodeGroupList(in))
	if err != nil || len(got) != len(in) {
		t.Fatalf("round trip: %v, %v", got, err)
	}
	for i := range in {
		if got[i] != in[i] {
			t.Fatalf("round trip: %v, want %v", got, in)
		}
	}
	for name, b := range map[string][]byte{
		"empty":            nil,
		"count beyond it":  {0xff, 0xff, 0xff, 0xff, 0x0f, 1},
		"truncated":        {3, 1, 2},
		"trailing bytes":   {1, 1, 1},
		"bad varint group": {1, 0x80},
	} {
		_, err := decodeGroupList(b)
		var re *transport.RPCError
		if !errors.As(err, &re) || re.Code != codeInvalid {
			t.Errorf("%s: %v, want an invalid_argument RPC error", name, err)
		}
	}
}
