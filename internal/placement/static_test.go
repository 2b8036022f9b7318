package placement

import (
	"testing"

	"github.com/nodedb/nodedb-cluster/internal/ids"
)

func TestStaticSpreadsReplicas(t *testing.T) {
	layout, err := Static(16, 5, 3)
	if err != nil {
		t.Fatal(err)
	}
	perNode := map[ids.NodeID]int{}
	for g, reps := range layout {
		seen := map[ids.NodeID]bool{}
		for _, r := range reps {
			if seen[r.Node] {
				t.Fatalf("group %d has two replicas on %s", g+1, r.Node)
			}
			seen[r.Node] = true
			perNode[r.Node]++
		}
		if len(reps) != 3 {
			t.Fatalf("group %d has %d replicas", g+1, len(reps))
		}
	}
	for n, c := range perNode {
		if c == 16 {
			t.Fatalf("%s holds every group", n)
		}
		if c < 9 || c > 10 {
			t.Fatalf("%s holds %d replicas; want an even spread of 48 over 5 nodes", n, c)
		}
	}
	if _, err := Static(4, 2, 3); err == nil {
		t.Fatal("rf above the node count accepted")
	}
}

func TestVShardGroupCoversEveryGroup(t *testing.T) {
	for _, tc := range []struct{ vshards, groups int }{{1024, 16}, {64, 4}, {1024, 64}, {16, 3}, {16, 5}, {16, 16}} {
		seen := map[ids.GroupID]int{}
		for vs := range uint32(tc.vshards) {
			g := VShardGroup(vs, tc.vshards, tc.groups)
			if g < 1 || int(g) > tc.groups {
				t.Fatalf("%+v: vshard %d -> group %d", tc, vs, g)
			}
			seen[g]++
		}
		if len(seen) != tc.groups {
			t.Fatalf("%+v: only %d groups own vShards", tc, len(seen))
		}
	}
}
