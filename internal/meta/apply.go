package meta

import (
	"fmt"

	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"google.golang.org/protobuf/proto"
)

// Apply applies one metadata entry to prev, as of now (the proposer's
// timestamp carried in the log entry, in Unix nanoseconds: the only clock
// the metadata group knows). It is pure and deterministic, and the one way a
// State changes.
//
// On success it returns a new state (prev is never modified; a nil prev is
// the empty state), the result for the proposer and the effects. Every
// successful entry, a no-op included, adds one to applied_entries.
//
// On refusal it returns prev itself, a result carrying the refusal's code,
// no effects and the *Error. A Batch is all or nothing: a refused member
// refuses the whole batch. Apply does not panic on any input; should a bug
// make it panic anyway, the panic is recovered into ErrInternal (the same on
// every replica, so replicas still agree) rather than stopping every node of
// the cluster at once.
func Apply(prev *metapb.State, e *metapb.Entry, now int64) (next *metapb.State, res *metapb.Result, effects []Effect, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = errorf(metapb.Code_CODE_INTERNAL, "apply %s: recovered from panic: %v", kindName(e), r)
			next, res, effects = prev, resultOf(err), nil
		}
	}()
	if err := validateEntry(e, false); err != nil {
		return prev, resultOf(err), nil, err
	}
	if n := proto.Size(e); n > MaxEntryBytes {
		err := errorf(metapb.Code_CODE_TOO_LARGE, "%s: entry is %d bytes, at most %d", kindName(e), n, MaxEntryBytes)
		return prev, resultOf(err), nil, err
	}
	st := &metapb.State{}
	if prev != nil {
		st = proto.Clone(prev).(*metapb.State)
	}
	a := &applier{st: st, now: now, res: &metapb.Result{}}
	if err := a.apply(e); err != nil {
		return prev, resultOf(err), nil, err
	}
	if !Bootstrapped(a.st) { // an empty batch on the empty state
		err := errorf(metapb.Code_CODE_NOT_BOOTSTRAPPED, "%s: the cluster is not bootstrapped", kindName(e))
		return prev, resultOf(err), nil, err
	}
	a.st.AppliedEntries++
	if n := proto.Size(a.st); n > MaxStateBytes {
		err := errorf(metapb.Code_CODE_TOO_LARGE, "%s: the state would be %d bytes, at most %d", kindName(e), n, MaxStateBytes)
		return prev, resultOf(err), nil, err
	}
	return a.st, a.res, a.effects, nil
}

// applier applies one entry (a batch's members in turn) to a private copy
// of the state; the copy is dropped if anything is refused.
type applier struct {
	st      *metapb.State
	now     int64
	res     *metapb.Result
	effects []Effect
}

func (a *applier) emit(e Effect) { a.effects = append(a.effects, e) }

func (a *applier) apply(e *metapb.Entry) error {
	switch e.GetKind().(type) {
	case *metapb.Entry_Bootstrap, *metapb.Entry_Batch: // a batch's members are checked one by one
	default:
		if !Bootstrapped(a.st) {
			return errorf(metapb.Code_CODE_NOT_BOOTSTRAPPED, "%s: the cluster is not bootstrapped", kindName(e))
		}
	}
	ensureMaps(a.st)
	switch k := e.GetKind().(type) {
	case *metapb.Entry_Bootstrap:
		return a.bootstrap(k.Bootstrap)
	case *metapb.Entry_CreateToken:
		return a.createToken(k.CreateToken)
	case *metapb.Entry_RevokeToken:
		return a.revokeToken(k.RevokeToken)
	case *metapb.Entry_BeginJoin:
		return a.beginJoin(k.BeginJoin)
	case *metapb.Entry_ActivateNode:
		return a.activateNode(k.ActivateNode.GetNodeId())
	case *metapb.Entry_SetNodeState:
		return a.setNodeState(k.SetNodeState)
	case *metapb.Entry_SetNodeAddrs:
		return a.setNodeAddrs(k.SetNodeAddrs)
	case *metapb.Entry_AddReplica:
		return a.addReplica(k.AddReplica)
	case *metapb.Entry_PromoteReplica:
		return a.promoteReplica(k.PromoteReplica)
	case *metapb.Entry_RemoveReplica:
		return a.removeReplica(k.RemoveReplica)
	case *metapb.Entry_SetLeaderHint:
		return a.setLeaderHint(k.SetLeaderHint)
	case *metapb.Entry_SetRoute:
		return a.setRoute(k.SetRoute)
	case *metapb.Entry_PutGhost:
		return a.putGhost(k.PutGhost)
	case *metapb.Entry_DeleteGhost:
		return a.deleteGhost(k.DeleteGhost)
	case *metapb.Entry_PutCheckpoint:
		return a.putCheckpoint(k.PutCheckpoint)
	case *metapb.Entry_DeleteCheckpoint:
		return a.deleteCheckpoint(k.DeleteCheckpoint)
	case *metapb.Entry_Batch:
		for i, c := range k.Batch.GetEntries() {
			if err := a.apply(c); err != nil {
				return wrap(err, "batch entry %d", i)
			}
		}
		return nil
	}
	return errorf(metapb.Code_CODE_INVALID_ARGUMENT, "unknown entry kind %T", e.GetKind())
}

// ensureMaps makes the state's maps writable (a decoded or cloned state has
// nil maps where they were empty).
func ensureMaps(st *metapb.State) {
	if st.Nodes == nil {
		st.Nodes = map[uint64]*metapb.Node{}
	}
	if st.Groups == nil {
		st.Groups = map[uint64]*metapb.Group{}
	}
	if st.Ghosts == nil {
		st.Ghosts = map[uint32]*metapb.Ghost{}
	}
	if st.Migrations == nil {
		st.Migrations = map[string]*metapb.Checkpoint{}
	}
	if st.Tokens == nil {
		st.Tokens = map[string]*metapb.Token{}
	}
}

// kindName names an entry's kind for messages ("begin join").
func kindName(e *metapb.Entry) string {
	switch e.GetKind().(type) {
	case *metapb.Entry_Bootstrap:
		return "bootstrap"
	case *metapb.Entry_CreateToken:
		return "create token"
	case *metapb.Entry_RevokeToken:
		return "revoke token"
	case *metapb.Entry_BeginJoin:
		return "begin join"
	case *metapb.Entry_ActivateNode:
		return "activate node"
	case *metapb.Entry_SetNodeState:
		return "set node state"
	case *metapb.Entry_SetNodeAddrs:
		return "set node addresses"
	case *metapb.Entry_AddReplica:
		return "add replica"
	case *metapb.Entry_PromoteReplica:
		return "promote replica"
	case *metapb.Entry_RemoveReplica:
		return "remove replica"
	case *metapb.Entry_SetLeaderHint:
		return "set leader hint"
	case *metapb.Entry_SetRoute:
		return "set route"
	case *metapb.Entry_PutGhost:
		return "put ghost"
	case *metapb.Entry_DeleteGhost:
		return "delete ghost"
	case *metapb.Entry_PutCheckpoint:
		return "put checkpoint"
	case *metapb.Entry_DeleteCheckpoint:
		return "delete checkpoint"
	case *metapb.Entry_Batch:
		return "batch"
	case nil:
		return "empty entry"
	}
	return fmt.Sprintf("%T", e.GetKind())
}
