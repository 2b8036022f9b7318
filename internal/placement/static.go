package placement

import (
	"fmt"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/storage"
)

// Static returns the founding replicas of groups 1..groups on nodes
// 1..nodes: group g has rf replicas (IDs 1..rf) on rf consecutive nodes
// starting at node ((g-1) mod nodes)+1, so replicas and leadership spread
// evenly and no node holds every group once nodes > rf.
func Static(groups, nodes, rf int) ([][]storage.ReplicaDesc, error) {
	if groups < 1 || nodes < 1 || rf < 1 || rf > nodes {
		return nil, fmt.Errorf("placement: invalid shape: %d groups, %d nodes, rf %d", groups, nodes, rf)
	}
	out := make([][]storage.ReplicaDesc, groups)
	for g := range groups {
		for i := range rf {
			out[g] = append(out[g], storage.ReplicaDesc{
				Replica: ids.ReplicaID(i + 1),
				Node:    ids.NodeID((g+i)%nodes + 1),
			})
		}
	}
	return out, nil
}

// VShardGroup returns the group owning vShard vs when vshards vShards are
// spread over groups in contiguous, nearly equal ranges.
func VShardGroup(vs uint32, vshards, groups int) ids.GroupID {
	return ids.GroupID(uint64(vs)*uint64(groups)/uint64(vshards) + 1)
}
