package server

import (
	"errors"
	"sync/atomic"

	"github.com/nodedb/nodedb-cluster/cluster"
	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

type metaState = metapb.State

// metaView is this node's copy of the applied metadata state: the one truth
// every routing and placement decision on this node reads. It is replaced,
// never modified: readers may keep a state as long as they like.
//
// The metadata state machine hands over each new state as it applies it; a
// snapshot installed under it does not go through Apply, so the control loop
// also reloads the state from the replica when the applied index moved.
type metaView struct {
	cur atomic.Pointer[metaState]
}

// get returns the current state, or nil before this node has one.
func (v *metaView) get() *metaState { return v.cur.Load() }

// set installs st unless the view already holds a newer state.
func (v *metaView) set(st *metaState) {
	for {
		old := v.cur.Load()
		if old != nil && old.GetAppliedEntries() > st.GetAppliedEntries() {
			return
		}
		if v.cur.CompareAndSwap(old, st) {
			return
		}
	}
}

// load reads the state from this node's replica of the metadata group, if it
// has one.
func (v *metaView) load(n *cluster.Node) error {
	b, err := n.ReadLocal(MetaGroup, 0, nil)
	if errors.Is(err, cluster.ErrGroupNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	st, err := meta.DecodeState(b)
	if err != nil {
		return err
	}
	if st.GetSettings().GetClusterId() == "" {
		return nil
	}
	// The count of applied entries only grows along the log, so a state
	// read from the replica never goes back behind one already seen.
	v.set(st)
	return nil
}
