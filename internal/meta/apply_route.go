package meta

import (
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"google.golang.org/protobuf/proto"
)

// setRoute moves a vShard to a data group (or re-fences it in place). The
// epoch must be exactly the current one plus one: the cutover that proposes
// it read the current epoch, so any other value means another move got
// there first, and applying it would lose that move. Every route change
// bumps routing_version.
func (a *applier) setRoute(x *metapb.SetRoute) error {
	vs, gid := x.GetVshard(), x.GetGroup()
	if err := a.checkVShard("set route", vs); err != nil {
		return err
	}
	if a.st.Groups[gid] == nil {
		return errorf(metapb.Code_CODE_UNKNOWN_GROUP, "set route of vShard %d: no group %d", vs, gid)
	}
	cur := a.st.Routing[vs]
	if want := cur.GetEpoch() + 1; x.GetEpoch() != want {
		return errorf(metapb.Code_CODE_BAD_EPOCH, "set route of vShard %d: epoch %d, the next epoch is %d", vs, x.GetEpoch(), want)
	}
	a.st.Routing[vs] = &metapb.VShardRoute{Group: gid, Epoch: x.GetEpoch()}
	a.st.RoutingVersion++
	a.emit(RouteChanged{VShard: vs, Group: gid, Epoch: x.GetEpoch(), FromGroup: cur.GetGroup(), RoutingVersion: a.st.RoutingVersion})
	return nil
}

// putGhost records the stub a vShard's old group keeps after the vShard
// left: where it went and until when to redirect. Putting the same stub is
// a no-op.
func (a *applier) putGhost(x *metapb.PutGhost) error {
	vs, gh := x.GetVshard(), x.GetGhost()
	if err := a.checkVShard("put ghost", vs); err != nil {
		return err
	}
	if a.st.Groups[gh.GetNewGroup()] == nil {
		return errorf(metapb.Code_CODE_UNKNOWN_GROUP, "put ghost of vShard %d: no group %d", vs, gh.GetNewGroup())
	}
	if old := a.st.Ghosts[vs]; old != nil && proto.Equal(old, gh) {
		return nil
	}
	a.st.Ghosts[vs] = &metapb.Ghost{NewGroup: gh.GetNewGroup(), NewEpoch: gh.GetNewEpoch(), ExpiresUnixNanos: gh.GetExpiresUnixNanos()}
	a.emit(GhostChanged{VShard: vs})
	return nil
}

// deleteGhost removes a ghost stub (the sweeper, after the grace period);
// an absent stub is a no-op.
func (a *applier) deleteGhost(x *metapb.DeleteGhost) error {
	vs := x.GetVshard()
	if _, ok := a.st.Ghosts[vs]; !ok {
		return nil
	}
	delete(a.st.Ghosts, vs)
	a.emit(GhostChanged{VShard: vs, Deleted: true})
	return nil
}

func (a *applier) checkVShard(what string, vs uint32) error {
	v := a.st.GetSettings().GetVshardCount()
	if vs >= v || int(vs) >= len(a.st.Routing) {
		return errorf(metapb.Code_CODE_OUT_OF_RANGE, "%s: vShard %d, the cluster has %d", what, vs, v)
	}
	return nil
}
