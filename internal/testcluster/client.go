package testcluster

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/nodedb/nodedb-cluster/cluster"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/kv"
)

// Client is a key-value client of a test cluster with exactly-once writes:
// each write gets a sequence number once and keeps it across every retry, so
// a write retried after a lost response is applied once.
type Client struct {
	c  *Cluster
	id uint64

	mu          sync.Mutex
	nextSeq     uint64
	outstanding map[uint64]bool
	rng         *rand.Rand

	// AttemptTimeout bounds one attempt; the caller's context bounds all.
	AttemptTimeout time.Duration
	// LoseAnswers is the probability that the answer to an applied write is
	// treated as lost: the client sends the same write again (same identity)
	// and returns that attempt's answer, which exactly-once must make the
	// first one's. Linearizability checks then also check exactly-once.
	LoseAnswers float64
}

// NewClient returns a client with the given non-zero ID.
func (c *Cluster) NewClient(id uint64) *Client {
	return &Client{
		c: c, id: id, nextSeq: 1,
		outstanding:    map[uint64]bool{},
		rng:            rand.New(rand.NewPCG(uint64(c.opts.Seed), id)),
		AttemptTimeout: 500 * time.Millisecond,
	}
}

// ID returns the client's ID.
func (cl *Client) ID() uint64 { return cl.id }

func (cl *Client) begin() (seq, ackedBelow uint64) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	seq = cl.nextSeq
	cl.nextSeq++
	cl.outstanding[seq] = true
	return seq, cl.ackedBelowLocked()
}

func (cl *Client) ackedBelowLocked() uint64 {
	low := cl.nextSeq
	for s := range cl.outstanding {
		low = min(low, s)
	}
	return low
}

func (cl *Client) end(seq uint64) {
	cl.mu.Lock()
	delete(cl.outstanding, seq)
	cl.mu.Unlock()
}

// Put writes key=value, if ifVersion allows (nil: unconditionally).
func (cl *Client) Put(ctx context.Context, key, value []byte, ifVersion *uint64) (kv.OpResult, error) {
	cmd, err := kv.EncodePut(key, value, ifVersion, kv.DefaultLimits())
	if err != nil {
		return kv.OpResult{}, err
	}
	return cl.single(ctx, key, cmd)
}

// Delete removes key, if ifVersion allows.
func (cl *Client) Delete(ctx context.Context, key []byte, ifVersion *uint64) (kv.OpResult, error) {
	cmd, err := kv.EncodeDelete(key, ifVersion, kv.DefaultLimits())
	if err != nil {
		return kv.OpResult{}, err
	}
	return cl.single(ctx, key, cmd)
}

func (cl *Client) single(ctx context.Context, key, cmd []byte) (kv.OpResult, error) {
	res, err := cl.Write(ctx, key, cmd)
	if err != nil {
		return kv.OpResult{}, err
	}
	r, err := kv.DecodeResult(res)
	if err != nil {
		return kv.OpResult{}, err
	}
	if len(r.Ops) != 1 {
		return kv.OpResult{}, fmt.Errorf("testcluster: %d op results for one op", len(r.Ops))
	}
	return r.Ops[0], nil
}

// Write proposes an encoded kv command routed by key, retrying until it has
// a definite outcome or ctx ends. When ctx ends after an attempt whose outcome
// is unknown, the error wraps cluster.ErrOutcomeUnknown: the write may or may
// not have been applied.
func (cl *Client) Write(ctx context.Context, key, cmd []byte) ([]byte, error) {
	vs, g := cl.c.Route(key)
	seq, acked := cl.begin()
	defer cl.end(seq)
	p := cluster.Proposal{VShard: vs, Client: cl.id, Seq: seq, AckedBelow: acked, Payload: cmd}
	ambiguous := false
	var last error
	for {
		if err := ctx.Err(); err != nil {
			if ambiguous {
				return nil, fmt.Errorf("%w: %w (last error: %v)", cluster.ErrOutcomeUnknown, err, last)
			}
			return nil, fmt.Errorf("write not applied: %w (last error: %v)", err, last)
		}
		n := cl.c.Leader(g)
		if n == nil {
			last = fmt.Errorf("no leader for %s", g)
			cl.pause(ctx)
			continue
		}
		actx, cancel := context.WithTimeout(ctx, cl.AttemptTimeout)
		res, err := n.Propose(actx, g, p)
		cancel()
		if err == nil {
			if cl.loseAnswer() {
				ambiguous = true // applied, as far as the caller can tell
				last = errors.New("answer lost on purpose")
				cl.pause(ctx)
				continue
			}
			return res, nil
		}
		last = err
		var nl *cluster.NotLeaderError
		switch {
		case errors.As(err, &nl), errors.Is(err, cluster.ErrProposalDropped), errors.Is(err, cluster.ErrGroupNotFound):
			// Definitely not applied by this attempt.
		case errors.Is(err, cluster.ErrOutcomeUnknown), errors.Is(err, cluster.ErrStopped):
			ambiguous = true
		case errors.Is(err, cluster.ErrStaleSequence):
			return nil, err
		default:
			ambiguous = true
		}
		cl.pause(ctx)
	}
}

// loseAnswer draws whether to lose an applied write's answer.
func (cl *Client) loseAnswer() bool {
	if cl.LoseAnswers <= 0 {
		return false
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.rng.Float64() < cl.LoseAnswers
}

// Get reads key linearizably from a random running replica of its group.
func (cl *Client) Get(ctx context.Context, key []byte) (kv.GetResponse, error) {
	q, err := kv.EncodeGet(key, kv.DefaultLimits())
	if err != nil {
		return kv.GetResponse{}, err
	}
	vs, g := cl.c.Route(key)
	var last error
	for {
		if err := ctx.Err(); err != nil {
			return kv.GetResponse{}, fmt.Errorf("read failed: %w (last error: %v)", err, last)
		}
		n := cl.replicaOf(g)
		if n == nil {
			last = errors.New("no running replica")
			cl.pause(ctx)
			continue
		}
		actx, cancel := context.WithTimeout(ctx, cl.AttemptTimeout)
		res, err := n.Read(actx, g, vs, q)
		cancel()
		if err == nil {
			return kv.DecodeGetResponse(res)
		}
		last = err
		cl.pause(ctx)
	}
}

func (cl *Client) replicaOf(g ids.GroupID) *cluster.Node {
	var cands []*cluster.Node
	for _, n := range cl.c.Live() {
		for _, h := range n.Groups() {
			if h == g {
				cands = append(cands, n)
			}
		}
	}
	if len(cands) == 0 {
		return nil
	}
	cl.mu.Lock()
	i := cl.rng.IntN(len(cands))
	cl.mu.Unlock()
	return cands[i]
}

func (cl *Client) pause(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-time.After(cl.c.opts.TickInterval):
	}
}
