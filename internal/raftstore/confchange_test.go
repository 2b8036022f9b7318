package raftstore

import (
	"testing"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/nodedb/nodedb-cluster/internal/storage"
)

func TestValidateConfChange(t *testing.T) {
	base := storage.AppliedState{
		ConfState:    raftpb.ConfState{Voters: []uint64{1, 2, 3}},
		Replicas:     []storage.ReplicaDesc{{Replica: 1, Node: 1}, {Replica: 2, Node: 2}, {Replica: 3, Node: 3}},
		MaxReplicaID: 3,
	}
	joint := base.Clone()
	joint.ConfState = raftpb.ConfState{Voters: []uint64{1, 2, 4}, VotersOutgoing: []uint64{1, 2, 3}}
	joint.Replicas = append(joint.Replicas, storage.ReplicaDesc{Replica: 4, Node: 4})
	joint.MaxReplicaID = 4

	single := func(typ raftpb.ConfChangeType, id uint64) raftpb.ConfChangeV2 {
		return raftpb.ConfChangeV2{Changes: []raftpb.ConfChangeSingle{{Type: typ, NodeID: id}}}
	}
	for _, tc := range []struct {
		name  string
		st    storage.AppliedState
		cc    raftpb.ConfChangeV2
		added []replicaPlacement
		ok    bool
	}{
		{"add learner with a node", base, single(raftpb.ConfChangeAddLearnerNode, 4), []replicaPlacement{{4, 4}}, true},
		{"add learner without a node", base, single(raftpb.ConfChangeAddLearnerNode, 4), nil, false},
		{"demote a member to learner", base, single(raftpb.ConfChangeAddLearnerNode, 2), nil, true},
		{"promote a member", base, single(raftpb.ConfChangeAddNode, 3), nil, true},
		{"reuse of a removed replica ID", storage.AppliedState{
			ConfState: raftpb.ConfState{Voters: []uint64{1, 2}}, Replicas: base.Replicas[:2], MaxReplicaID: 3,
		}, single(raftpb.ConfChangeAddLearnerNode, 3), []replicaPlacement{{3, 3}}, false},
		{"second replica on a node", base, single(raftpb.ConfChangeAddLearnerNode, 4), []replicaPlacement{{4, 2}}, false},
		{"zero node", base, single(raftpb.ConfChangeAddLearnerNode, 4), []replicaPlacement{{4, 0}}, false},
		{"remove every voter", base, raftpb.ConfChangeV2{Transition: raftpb.ConfChangeTransitionJointExplicit, Changes: []raftpb.ConfChangeSingle{
			{Type: raftpb.ConfChangeRemoveNode, NodeID: 1}, {Type: raftpb.ConfChangeRemoveNode, NodeID: 2}, {Type: raftpb.ConfChangeRemoveNode, NodeID: 3},
		}}, nil, false},
		{"leave joint when not joint", base, raftpb.ConfChangeV2{}, nil, false},
		{"leave joint", joint, raftpb.ConfChangeV2{}, nil, true},
		{"enter joint while joint", joint, raftpb.ConfChangeV2{Changes: []raftpb.ConfChangeSingle{
			{Type: raftpb.ConfChangeRemoveNode, NodeID: 1}, {Type: raftpb.ConfChangeAddNode, NodeID: 5},
		}}, []replicaPlacement{{5, 5}}, false},
		{"update node unsupported", base, single(raftpb.ConfChangeUpdateNode, 1), nil, false},
	} {
		err := validateConfChange(&tc.st, tc.cc, tc.added)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err=%v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}
