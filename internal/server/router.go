package server

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nodedb/nodedb-cluster/cluster"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"github.com/nodedb/nodedb-cluster/internal/transport"
	"github.com/nodedb/nodedb-cluster/vshard"
)

// RPC methods between nodes. A request is served by the node that leads the
// group; a node that receives one it cannot serve answers not_leader with
// the leader it knows, and never forwards it again (one hop at most).
const (
	rpcPropose = "raft.propose"
	rpcRead    = "raft.read"
)

// Error codes of forwarded requests.
const (
	codeNotLeader      = "not_leader"
	codeUnavailable    = "unavailable"
	codeOutcomeUnknown = "outcome_unknown"
	codeTooLarge       = "too_large"
	codeInvalid        = "invalid_argument"
	codeMoved          = "moved"
)

// MovedError is returned for a request routed to a group that does not own
// its vShard in the serving node's metadata: the hint names the owner.
type MovedError struct {
	VShard uint32
	Group  ids.GroupID
	Epoch  uint64
}

func (e *MovedError) Error() string {
	return fmt.Sprintf("vShard %d is owned by group %d (epoch %d)", e.VShard, e.Group, e.Epoch)
}

// checkRoute refuses a request for a data group that does not own the
// vShard, so that no write lands in a group's copy of a vShard it does not
// own. The metadata group takes requests for vShard 0 only.
func (s *Server) checkRoute(r *request) *transport.RPCError {
	if r.group == MetaGroup {
		if r.vshard != 0 {
			return &transport.RPCError{Code: codeInvalid, Message: "the metadata group has vShard 0 only"}
		}
		return nil
	}
	st := s.view.get()
	if st == nil {
		return nil // no routing known here yet: the group's leader decides
	}
	g, epoch := meta.RouteOf(st, r.vshard)
	if g == 0 || ids.GroupID(g) == r.group {
		return nil
	}
	return &transport.RPCError{Code: codeMoved, Message: fmt.Sprintf("%d:%d:%d", r.vshard, g, epoch)}
}

// movedError decodes a moved answer.
func movedError(msg string) error {
	var e MovedError
	if _, err := fmt.Sscanf(msg, "%d:%d:%d", &e.VShard, &e.Group, &e.Epoch); err != nil {
		return fmt.Errorf("moved: %s", msg)
	}
	return &e
}

// ErrUnavailable is returned when no leader could be reached before the
// deadline; the request had no effect.
var ErrUnavailable = errors.New("server: group unavailable")

// request is a forwarded proposal or read.
type request struct {
	group      ids.GroupID
	vshard     uint32
	client     uint64
	seq        uint64
	ackedBelow uint64
	body       []byte
	// noForward: answer NotLeaderError rather than send the request to
	// another node (smart clients go to the leader themselves).
	noForward bool
}

func (r *request) encode() []byte {
	b := binary.AppendUvarint(nil, uint64(r.group))
	b = binary.AppendUvarint(b, uint64(r.vshard))
	b = binary.AppendUvarint(b, r.client)
	b = binary.AppendUvarint(b, r.seq)
	b = binary.AppendUvarint(b, r.ackedBelow)
	return append(b, r.body...)
}

func (r *request) proposal() cluster.Proposal {
	return cluster.Proposal{VShard: r.vshard, Client: r.client, Seq: r.seq, AckedBelow: r.ackedBelow, Payload: r.body}
}

func decodeRequest(b []byte, vshards int) (request, error) {
	var r request
	var vals [5]uint64
	for i := range vals {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return r, &transport.RPCError{Code: codeInvalid, Message: "malformed request"}
		}
		vals[i], b = v, b[n:]
	}
	if vals[1] >= uint64(vshards) {
		return r, &transport.RPCError{Code: codeInvalid, Message: fmt.Sprintf("vshard %d out of range", vals[1])}
	}
	return request{group: ids.GroupID(vals[0]), vshard: uint32(vals[1]), client: vals[2], seq: vals[3], ackedBelow: vals[4], body: b}, nil
}

func (s *Server) registerRPCs() {
	s.registerControlRPCs()
	s.ep.Handle(rpcPropose, func(ctx context.Context, from ids.NodeID, b []byte) ([]byte, error) {
		r, err := decodeRequest(b, s.vshards)
		if err != nil {
			return nil, err
		}
		if err := s.checkRoute(&r); err != nil {
			return nil, err
		}
		out, err := s.node.Propose(ctx, r.group, r.proposal())
		return out, toRPCError(err)
	})
	s.ep.Handle(rpcRead, func(ctx context.Context, from ids.NodeID, b []byte) ([]byte, error) {
		r, err := decodeRequest(b, s.vshards)
		if err != nil {
			return nil, err
		}
		if err := s.checkRoute(&r); err != nil {
			return nil, err
		}
		out, err := s.node.Read(ctx, r.group, r.vshard, r.body)
		return out, toRPCError(err)
	})
}

// toRPCError turns a local error into one a peer can act on.
func toRPCError(err error) error {
	var nl *cluster.NotLeaderError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, cluster.ErrOutcomeUnknown):
		// First: whatever else it says, a command that may have applied
		// must not be retried.
		return &transport.RPCError{Code: codeOutcomeUnknown, Message: err.Error()}
	case errors.As(err, &nl):
		return &transport.RPCError{Code: codeNotLeader, Message: strconv.FormatUint(uint64(nl.LeaderNode), 10)}
	case errors.Is(err, cluster.ErrGroupNotFound):
		return &transport.RPCError{Code: codeNotLeader, Message: "0"}
	case errors.Is(err, cluster.ErrTooLarge):
		return &transport.RPCError{Code: codeTooLarge, Message: err.Error()}
	case errors.Is(err, cluster.ErrProposalDropped), errors.Is(err, cluster.ErrStopped), errors.Is(err, cluster.ErrTransferAborted):
		return &transport.RPCError{Code: codeUnavailable, Message: err.Error()}
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return &transport.RPCError{Code: codeOutcomeUnknown, Message: err.Error()}
	}
	return err
}

// Route returns the vShard of key and the group that owns it in this node's
// metadata state (group 0, the metadata group, while this node has none).
func (s *Server) Route(key []byte) (uint32, ids.GroupID) {
	vs := vshard.ForKey(key, s.vshards)
	g, _ := meta.RouteOf(s.view.get(), vs)
	return vs, ids.GroupID(g)
}

// Propose applies a command to key's vShard through its group's leader,
// here or on the node that leads it. Errors: ErrUnavailable (no effect),
// cluster.ErrOutcomeUnknown (the command may or may not have applied), or
// the state machine's result error inside the returned bytes.
func (s *Server) Propose(ctx context.Context, key []byte, cmd []byte) ([]byte, error) {
	vs, g := s.Route(key)
	return s.do(ctx, true, &request{group: g, vshard: vs, body: cmd})
}

// Read runs a linearizable query on key's vShard at its group's leader.
func (s *Server) Read(ctx context.Context, key []byte, query []byte) ([]byte, error) {
	vs, g := s.Route(key)
	return s.do(ctx, false, &request{group: g, vshard: vs, body: query})
}

// do sends r to the group's leader, following leader hints and retrying
// while that is safe: until the request may have reached a leader's log,
// every failure is retried; after that, a write's failure is reported as
// cluster.ErrOutcomeUnknown.
func (s *Server) do(ctx context.Context, write bool, r *request) ([]byte, error) {
	backoff := 5 * time.Millisecond
	var hint ids.NodeID
	var last error
	for {
		if err := ctx.Err(); err != nil {
			// Every attempt so far failed before reaching a log: a write
			// whose time is up is not proposed now only to be unknown.
			if last == nil {
				return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
			}
			return nil, fmt.Errorf("%w: %v (last error: %v)", ErrUnavailable, err, last)
		}
		target := hint
		if target == 0 {
			if _, n, err := s.node.Leader(r.group); err == nil {
				target = n
			}
		}
		if target == 0 {
			target = s.anyReplica(r.group)
		}
		if r.noForward && target != s.id {
			if re := s.checkRoute(r); re != nil && re.Code == codeMoved {
				return nil, movedError(re.Message)
			}
			return nil, &cluster.NotLeaderError{Group: r.group, LeaderNode: s.leaderHint(r.group)}
		}
		var out []byte
		var err error
		if target == s.id || target == 0 {
			if re := s.checkRoute(r); re != nil {
				if re.Code == codeMoved {
					return nil, movedError(re.Message)
				}
				return nil, re
			}
			if write {
				out, err = s.node.Propose(ctx, r.group, r.proposal())
			} else {
				out, err = s.node.Read(ctx, r.group, r.vshard, r.body)
			}
			err = toRPCError(err)
		} else {
			method := rpcRead
			if write {
				method = rpcPropose
			}
			out, err = s.ep.Call(ctx, target, method, r.encode())
		}
		if err == nil {
			return out, nil
		}
		var final error
		if hint, final = afterFailure(ctx, write, target, err); final != nil {
			return nil, final
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %v (last error: %v)", ErrUnavailable, ctx.Err(), last)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 200*time.Millisecond)
	}
}

// afterFailure decides what do does after an attempt at target failed
// with err: try again (final nil), at hint when the error named the leader,
// or give up with final. A write is tried again only while it cannot have
// reached a leader's log; after that its failure is
// cluster.ErrOutcomeUnknown.
func afterFailure(ctx context.Context, write bool, target ids.NodeID, err error) (hint ids.NodeID, final error) {
	var re *transport.RPCError
	switch {
	case errors.As(err, &re) && re.Code == codeNotLeader:
		if n, perr := strconv.ParseUint(re.Message, 10, 64); perr == nil && ids.NodeID(n) != target {
			hint = ids.NodeID(n)
		}
	case errors.As(err, &re) && re.Code == codeMoved:
		return 0, movedError(re.Message)
	case errors.As(err, &re) && re.Code == codeUnavailable:
	case errors.As(err, &re) && re.Code == codeOutcomeUnknown:
		if write {
			return 0, fmt.Errorf("%w: %s", cluster.ErrOutcomeUnknown, re.Message)
		}
	case errors.As(err, &re):
		return 0, err
	case errors.Is(err, transport.ErrRequestLost):
		if write {
			return 0, fmt.Errorf("%w: %v", cluster.ErrOutcomeUnknown, err)
		}
	case errors.Is(err, transport.ErrUnreachable):
	case ctx.Err() != nil:
		if write {
			// The request may be in a leader's log.
			return 0, fmt.Errorf("%w: %v", cluster.ErrOutcomeUnknown, ctx.Err())
		}
		return 0, fmt.Errorf("%w: %v", ErrUnavailable, ctx.Err())
	default:
		return 0, err
	}
	return hint, nil
}

// anyReplica picks a node holding group g other than this one, for when no
// leader is known: it will answer with its own leader hint.
func (s *Server) anyReplica(g ids.GroupID) ids.NodeID {
	st := s.view.get()
	grp := st.GetGroups()[uint64(g)]
	if grp == nil {
		// A joiner that has no metadata yet knows only its peers.
		if g == MetaGroup {
			s.peersMu.Lock()
			defer s.peersMu.Unlock()
			for n := range s.peers {
				return n
			}
		}
		return 0
	}
	if h := ids.NodeID(grp.LeaderHint); h != 0 && h != s.id {
		if time.Now().UnixNano()%2 == 0 {
			return h
		}
	}
	var nodes []ids.NodeID
	for _, r := range grp.Replicas {
		if ids.NodeID(r.Node) != s.id {
			nodes = append(nodes, ids.NodeID(r.Node))
		}
	}
	if len(nodes) == 0 {
		return 0
	}
	return nodes[time.Now().UnixNano()%int64(len(nodes))]
}

// leaderHint is the leader of g as far as this node knows: its own replica's
// view, else the metadata's hint; 0 if neither knows.
func (s *Server) leaderHint(g ids.GroupID) ids.NodeID {
	if _, n, err := s.node.Leader(g); err == nil && n != 0 {
		return n
	}
	return ids.NodeID(s.view.get().GetGroups()[uint64(g)].GetLeaderHint())
}

// ProposeMeta commits a metadata entry through the metadata leader and
// returns its result; an entry the applier refused is a *meta.Error. It is
// how operator tools change the metadata (the entries are in package meta).
func (s *Server) ProposeMeta(ctx context.Context, e *metapb.Entry) (*metapb.Result, error) {
	return s.proposeMeta(ctx, e)
}

// proposeMeta commits a metadata entry through the metadata leader and
// returns its result; an entry the applier refused is a *meta.Error.
func (s *Server) proposeMeta(ctx context.Context, e *metapb.Entry) (*metapb.Result, error) {
	b, err := meta.EncodeEntry(e)
	if err != nil {
		return nil, err
	}
	out, err := s.do(ctx, true, &request{group: MetaGroup, vshard: 0, body: b})
	if err != nil {
		return nil, err
	}
	res, err := meta.DecodeResult(out)
	if err != nil {
		return nil, err
	}
	return res, meta.ResultError(res)
}
