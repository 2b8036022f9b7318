package server

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nodedb/nodedb-cluster/cluster"
	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// Stale reads.
//
// A replica may serve a read with staleness bound D from its own state when
// it holds a closed point (T, I) for the group: T is this node's monotonic
// clock reading taken before a ReadIndex round that confirmed commit index
// I with a quorum, and the replica has applied I. Every write acknowledged
// before T is at an index <= I, hence in the state; if now - T <= D, every
// write acknowledged more than D ago is too. Both T and now come from the
// same node's monotonic clock, so the bound holds whatever the skew between
// node clocks: the proof needs only that clocks advance at about the rate of
// real time. One ReadIndex round (a heartbeat exchange, no log write) serves
// every stale read of the group on this node for D after it.
//
// The design named closed timestamps from a hybrid logical clock, published
// by leaders; this local form proves the same bound without the clock-skew
// assumption that publication across nodes needs (docs/architecture.md).

// closedPoint is a proven freshness point of one group on this node.
type closedPoint struct {
	at    time.Time // monotonic reading taken before the ReadIndex round
	index uint64
}

type closedPoints struct {
	mu sync.Mutex
	m  map[ids.GroupID]closedPoint
}

func (c *closedPoints) get(g ids.GroupID) (closedPoint, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.m[g]
	return p, ok
}

func (c *closedPoints) put(g ids.GroupID, p closedPoint) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[ids.GroupID]closedPoint{}
	}
	if old, ok := c.m[g]; !ok || p.at.After(old.at) {
		c.m[g] = p
	}
}

// staleRead answers q on vShard vs of group g from a replica whose state is
// provably no older than maxStale. A node without a replica of g forwards a
// linearizable read instead, which satisfies any bound.
func (s *Server) staleRead(ctx context.Context, g ids.GroupID, vs uint32, q []byte, maxStale time.Duration) ([]byte, error) {
	if !slices.Contains(s.node.Groups(), g) {
		return s.do(ctx, false, &request{group: g, vshard: vs, body: q})
	}
	if re := s.checkRoute(&request{group: g, vshard: vs}); re != nil {
		return nil, movedError(re.Message)
	}
	p, ok := s.closed.get(g)
	if !ok || time.Since(p.at) > maxStale {
		at := time.Now()
		rctx, cancel := context.WithTimeout(ctx, min(maxStale, 2*time.Second))
		idx, err := s.node.ReadIndex(rctx, g)
		cancel()
		if err != nil {
			return nil, &APIError{Code: CodeUnavailable, Message: fmt.Sprintf("cannot prove group %d's state is fresher than %s here: %v", g, maxStale, err)}
		}
		p = closedPoint{at: at, index: idx}
		s.closed.put(g, p)
		s.staleStats.refreshes.Add(1)
	} else {
		s.staleStats.local.Add(1)
	}
	st, err := s.node.Status(g)
	if err != nil {
		return nil, err
	}
	if st.Applied < p.index {
		// ReadIndex waited for this replica to apply the index; a replica
		// that lost it since (it cannot) would not prove anything.
		return nil, &APIError{Code: CodeUnavailable, Message: "replica behind its closed point"}
	}
	out, err := s.node.ReadLocal(g, vs, q)
	if errors.Is(err, cluster.ErrGroupNotFound) {
		return s.do(ctx, false, &request{group: g, vshard: vs, body: q})
	}
	return out, err
}

// Scan cursors: "<vshard>.<hex of the last key returned>".

func formatCursor(vs uint32, key []byte) string {
	return strconv.FormatUint(uint64(vs), 10) + "." + hex.EncodeToString(key)
}

func parseCursor(c string, vshards int) (uint32, []byte, error) {
	if c == "" {
		return 0, nil, nil
	}
	v, k, ok := strings.Cut(c, ".")
	vs, err := strconv.ParseUint(v, 10, 32)
	if !ok || err != nil || vs >= uint64(vshards) {
		return 0, nil, apiErrorf(CodeInvalidArgument, "malformed scan cursor")
	}
	key, err := hex.DecodeString(k)
	if err != nil || len(key) == 0 {
		return 0, nil, apiErrorf(CodeInvalidArgument, "malformed scan cursor")
	}
	return uint32(vs), key, nil
}
