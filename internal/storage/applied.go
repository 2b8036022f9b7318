package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

// ReplicaDesc places one replica of a group on a node.
type ReplicaDesc struct {
	Replica ids.ReplicaID
	Node    ids.NodeID
}

// AppliedState is what a group's replica has applied. It is written in the
// same Pebble batch as the state-machine changes of the entries it covers, so
// after a crash the state and the index agree: entries above Index are applied
// again, entries at or below it never are.
type AppliedState struct {
	// Index and Term identify the last applied entry.
	Index uint64
	Term  uint64
	// ConfState is the group's configuration as of Index.
	ConfState raftpb.ConfState
	// Replicas lists every replica in ConfState with the node hosting it.
	Replicas []ReplicaDesc
	// MaxReplicaID is the largest replica ID the group has ever had. A
	// replica added later must have a larger ID: IDs are never reused.
	MaxReplicaID ids.ReplicaID
}

// NodeOf returns the node hosting replica r, if known.
func (s *AppliedState) NodeOf(r ids.ReplicaID) (ids.NodeID, bool) {
	for _, d := range s.Replicas {
		if d.Replica == r {
			return d.Node, true
		}
	}
	return 0, false
}

// Clone returns a deep copy.
func (s *AppliedState) Clone() AppliedState {
	c := *s
	c.Replicas = slices.Clone(s.Replicas)
	c.ConfState = cloneConfState(s.ConfState)
	return c
}

func cloneConfState(cs raftpb.ConfState) raftpb.ConfState {
	return raftpb.ConfState{
		Voters:         slices.Clone(cs.Voters),
		Learners:       slices.Clone(cs.Learners),
		VotersOutgoing: slices.Clone(cs.VotersOutgoing),
		LearnersNext:   slices.Clone(cs.LearnersNext),
		AutoLeave:      cs.AutoLeave,
	}
}

const appliedStateVersion = 1

// maxReplicas bounds the replica list a decoder accepts.
const maxReplicas = 1024

// ErrCorrupt is wrapped by errors about stored records that fail validation.
var ErrCorrupt = errors.New("storage: corrupt record")

// EncodeAppliedState appends the stored form of s to dst.
func EncodeAppliedState(dst []byte, s *AppliedState) ([]byte, error) {
	if len(s.Replicas) > maxReplicas {
		return nil, fmt.Errorf("applied state with %d replicas exceeds %d", len(s.Replicas), maxReplicas)
	}
	dst = append(dst, appliedStateVersion)
	dst = binary.AppendUvarint(dst, s.Index)
	dst = binary.AppendUvarint(dst, s.Term)
	dst = binary.AppendUvarint(dst, uint64(s.MaxReplicaID))
	dst = binary.AppendUvarint(dst, uint64(len(s.Replicas)))
	for _, d := range s.Replicas {
		dst = binary.AppendUvarint(dst, uint64(d.Replica))
		dst = binary.AppendUvarint(dst, uint64(d.Node))
	}
	// Marshalled in place: this runs for every group at every apply.
	n := s.ConfState.Size()
	dst = slices.Grow(dst, n)
	if _, err := s.ConfState.MarshalToSizedBuffer(dst[len(dst) : len(dst)+n]); err != nil {
		return nil, fmt.Errorf("encode conf state: %w", err)
	}
	return dst[:len(dst)+n], nil
}

// DecodeAppliedState parses a record written by EncodeAppliedState.
func DecodeAppliedState(b []byte) (AppliedState, error) {
	var s AppliedState
	if len(b) == 0 || b[0] != appliedStateVersion {
		return s, fmt.Errorf("%w: applied state: unknown version", ErrCorrupt)
	}
	r := NewRecordReader(b[1:])
	s.Index = r.Uvarint()
	s.Term = r.Uvarint()
	s.MaxReplicaID = ids.ReplicaID(r.Uvarint())
	n := r.Uvarint()
	if r.Err() == nil && (n > maxReplicas || n > uint64(len(r.Rest()))/2) {
		r.Fail(fmt.Errorf("replica count %d", n))
	}
	if r.Err() == nil && n > 0 {
		s.Replicas = make([]ReplicaDesc, n)
		for i := range s.Replicas {
			s.Replicas[i] = ReplicaDesc{Replica: ids.ReplicaID(r.Uvarint()), Node: ids.NodeID(r.Uvarint())}
		}
	}
	if r.Err() != nil {
		return s, fmt.Errorf("%w: applied state: %v", ErrCorrupt, r.Err())
	}
	if err := s.ConfState.Unmarshal(r.Rest()); err != nil {
		return s, fmt.Errorf("%w: applied state conf state: %v", ErrCorrupt, err)
	}
	return s, nil
}
