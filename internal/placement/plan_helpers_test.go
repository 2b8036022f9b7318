package placement

import (
	"fmt"

	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

// tb is what the helpers need of a *testing.T or a *rapid.T.
type tb interface {
	Helper()
	Fatalf(format string, args ...any)
}

const now = int64(1_000_000)

func apply(t tb, st *metapb.State, e *metapb.Entry) *metapb.State {
	t.Helper()
	next, _, _, err := meta.Apply(st, e, now)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	return next
}

// cluster bootstraps node 1 (zone zones[0]) with groups data groups and
// rf, then joins and activates one node per further zone entry.
func cluster(t tb, rf, groups uint32, zones ...string) *metapb.State {
	t.Helper()
	st := apply(t, nil, meta.NewBootstrap(
		&metapb.ClusterSettings{ClusterId: "c", VshardCount: 64, ReplicationFactor: rf},
		&metapb.Node{PeerAddr: "n1:1", Zone: zones[0]}, groups))
	for _, z := range zones[1:] {
		st = addNode(t, st, z)
	}
	return st
}

// addNode joins and activates a node in zone z.
func addNode(t tb, st *metapb.State, z string) *metapb.State {
	t.Helper()
	id := fmt.Sprint(st.GetNextNodeId())
	secret := meta.HashSecret("s" + id)
	st = apply(t, st, meta.NewCreateToken("t"+id, secret, now+1))
	next, res, _, err := meta.Apply(st, meta.NewBeginJoin("t"+id, secret, meta.HashKey([]byte(id)), "n"+id+":1", "", z), now)
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	return apply(t, next, meta.NewActivateNode(res.GetNodeId()))
}

// execute applies every change of a plan, as the metadata leader would
// once Raft made them.
func execute(t tb, st *metapb.State, changes []Change) *metapb.State {
	t.Helper()
	for _, c := range changes {
		next, _, _, err := meta.Apply(st, c.Entry(), now)
		if err != nil {
			t.Fatalf("%+v: %v", c, err)
		}
		st = next
	}
	return st
}

func always(uint64, uint64) bool { return true }

// converge runs Plan, then Rebalance when Plan has nothing, with every
// learner caught up, until both are empty; it fails after limit rounds.
func converge(t tb, st *metapb.State, limit int) (*metapb.State, int) {
	t.Helper()
	for round := range limit {
		ch := Plan(st, always)
		if len(ch) == 0 {
			ch = Rebalance(st, always)
		}
		if len(ch) == 0 {
			return st, round
		}
		st = execute(t, st, ch)
	}
	t.Fatalf("no convergence after %d rounds", limit)
	return st, limit
}

// loads returns every ACTIVE node's number of data replicas.
func loads(st *metapb.State) map[uint64]int {
	out := map[uint64]int{}
	for _, n := range meta.ActiveNodes(st) {
		out[n.GetId()] = 0
	}
	for _, gid := range meta.GroupIDs(st) {
		if gid == 0 {
			continue
		}
		for _, r := range st.GetGroups()[gid].GetReplicas() {
			out[r.GetNode()]++
		}
	}
	return out
}

func spread(m map[uint64]int, nodes []uint64) int {
	lo, hi := -1, -1
	for _, n := range nodes {
		c := m[n]
		if lo < 0 || c < lo {
			lo = c
		}
		if c > hi {
			hi = c
		}
	}
	return hi - lo
}
