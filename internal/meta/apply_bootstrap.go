package meta

import (
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"google.golang.org/protobuf/proto"
)

// FounderNode is the id of the node that bootstraps a cluster.
const FounderNode = 1

// bootstrap creates the cluster: node 1 ACTIVE, the metadata group 0 and
// data groups 1..groups each with node 1 as founding voter replica 1, and
// every vShard routed at epoch 1, contiguously and evenly: vShard v belongs
// to group 1 + v*groups/V.
//
// Bootstrapping is retried by a founder that crashed before it learned the
// outcome, so a second Bootstrap of the same cluster id is a no-op; one with
// another cluster id means two clusters met, and is refused.
func (a *applier) bootstrap(b *metapb.Bootstrap) error {
	want := b.GetSettings().GetClusterId()
	if Bootstrapped(a.st) {
		if have := a.st.GetSettings().GetClusterId(); have != want {
			return errorf(metapb.Code_CODE_CLUSTER_MISMATCH, "bootstrap: the state belongs to cluster %q, not %q", have, want)
		}
		return nil
	}
	groups := b.GetGroups()
	set := proto.Clone(b.GetSettings()).(*metapb.ClusterSettings)
	set.InitialGroups = groups
	if set.MetaVotersMax == 0 {
		set.MetaVotersMax = DefaultMetaVotersMax
	}
	fn := b.GetFirstNode()
	st := &metapb.State{
		FormatVersion:  FormatVersion,
		AppliedEntries: a.st.GetAppliedEntries(),
		Settings:       set,
		Nodes: map[uint64]*metapb.Node{FounderNode: {
			Id:              FounderNode,
			PeerAddr:        fn.GetPeerAddr(),
			ApiAddr:         fn.GetApiAddr(),
			Zone:            fn.GetZone(),
			State:           metapb.NodeState_NODE_STATE_ACTIVE,
			JoinedUnixNanos: a.now,
		}},
		NextNodeId:     FounderNode + 1,
		Groups:         make(map[uint64]*metapb.Group, groups+1),
		NextGroupId:    uint64(groups) + 1,
		Routing:        make([]*metapb.VShardRoute, set.GetVshardCount()),
		RoutingVersion: 1,
	}
	for g := range uint64(groups) + 1 {
		st.Groups[g] = &metapb.Group{
			Id:            g,
			Replicas:      []*metapb.Replica{{Id: 1, Node: FounderNode, Role: metapb.Role_ROLE_VOTER, Founder: true}},
			NextReplicaId: 2,
			LeaderHint:    FounderNode,
		}
	}
	v := uint64(set.GetVshardCount())
	for vs := range st.Routing {
		st.Routing[vs] = &metapb.VShardRoute{Group: 1 + uint64(vs)*uint64(groups)/v, Epoch: 1}
	}
	a.st = st
	ensureMaps(a.st)
	a.emit(ClusterCreated{ClusterID: want, Groups: groups, VShards: set.GetVshardCount()})
	a.emit(NodeAdded{Node: FounderNode, State: metapb.NodeState_NODE_STATE_ACTIVE})
	return nil
}
