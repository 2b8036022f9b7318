package storage

import (
	"encoding/binary"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// LocalReplica names a replica stored on this node.
type LocalReplica struct {
	Group   ids.GroupID
	Replica ids.ReplicaID
}

// LocalReplicas lists every replica whose record is stored on this node.
func (e *Engine) LocalReplicas() ([]LocalReplica, error) {
	var out []LocalReplica
	start := []byte{prefixReplica}
	err := ScanRange(e.db, start, prefixEnd(start), func(k, v []byte) error {
		if len(k) != 9 || len(v) != 8 {
			return fmt.Errorf("%w: replica record %x", ErrCorrupt, k)
		}
		out = append(out, LocalReplica{
			Group:   ids.GroupID(binary.BigEndian.Uint64(k[1:])),
			Replica: ids.ReplicaID(binary.BigEndian.Uint64(v)),
		})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list local replicas: %w", err)
	}
	return out, nil
}

// Tombstone returns the smallest replica ID group g may still have on this
// node (0 if no replica of g was ever destroyed here).
func (e *Engine) Tombstone(g ids.GroupID) (ids.ReplicaID, error) {
	v, ok, err := getCopy(e.db, tombstoneKey(g))
	if err != nil || !ok {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: tombstone of %s", ErrCorrupt, g)
	}
	return ids.ReplicaID(binary.BigEndian.Uint64(v)), nil
}

// WriteReplicaRecord stages the record that replica r of group g lives here.
func WriteReplicaRecord(b *pebble.Batch, g ids.GroupID, r ids.ReplicaID) error {
	return b.Set(replicaKey(g), binary.BigEndian.AppendUint64(nil, uint64(r)), nil)
}

// WriteBootstrap stages the initial state of a replica that is one of a new
// group's founding members: a log that starts empty after (index, term), a
// hard state committed to index, and the applied state st (whose Index and
// Term must equal index and term). Every founding member writes identical
// state, so no entry is needed to agree on the initial configuration, and any
// replica added later starts from a snapshot because the log begins after
// index.
func WriteBootstrap(b *pebble.Batch, g ids.GroupID, r ids.ReplicaID, st *AppliedState) error {
	if err := WriteReplicaRecord(b, g, r); err != nil {
		return err
	}
	if err := WriteAppliedState(b, g, st); err != nil {
		return err
	}
	hs := raftpb.HardState{Term: st.Term, Commit: st.Index}
	v, err := hs.Marshal()
	if err != nil {
		return fmt.Errorf("encode hard state: %w", err)
	}
	if err := b.Set(hardStateKey(g), v, nil); err != nil {
		return err
	}
	return b.Set(truncatedKey(g), truncatedValue(st.Index, st.Term), nil)
}

// WriteAppliedState stages group g's applied state.
func WriteAppliedState(b *pebble.Batch, g ids.GroupID, st *AppliedState) error {
	_, err := AppendAppliedState(b, g, st, nil)
	return err
}

// AppendAppliedState stages group g's applied state like WriteAppliedState,
// building its key and value in scratch (the batch copies them), and
// returns scratch for reuse: the apply path writes one per group per batch.
func AppendAppliedState(b *pebble.Batch, g ids.GroupID, st *AppliedState, scratch []byte) ([]byte, error) {
	buf := appendAppliedKey(scratch[:0], g)
	k := len(buf)
	buf, err := EncodeAppliedState(buf, st)
	if err != nil {
		return scratch, fmt.Errorf("group %s: %w", g, err)
	}
	return buf, b.Set(buf[:k], buf[k:], nil)
}

// WriteReplicaDestroy stages the removal of everything this node stores for
// group g and a tombstone that refuses any replica ID below next from now on.
func WriteReplicaDestroy(b *pebble.Batch, g ids.GroupID, next ids.ReplicaID) error {
	start, end := raftRange(g)
	if err := b.DeleteRange(start, end, nil); err != nil {
		return err
	}
	sp := GroupStatePrefix(g)
	if err := b.DeleteRange(sp, prefixEnd(sp), nil); err != nil {
		return err
	}
	if err := b.Delete(appliedKey(g), nil); err != nil {
		return err
	}
	if err := b.Delete(replicaKey(g), nil); err != nil {
		return err
	}
	return b.Set(tombstoneKey(g), binary.BigEndian.AppendUint64(nil, uint64(next)), nil)
}

// WriteClearGroupState stages the removal of all replicated state of group g
// (before a snapshot's state is written in the same batch).
func WriteClearGroupState(b *pebble.Batch, g ids.GroupID) error {
	sp := GroupStatePrefix(g)
	return b.DeleteRange(sp, prefixEnd(sp), nil)
}
