package server

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/nodedb/nodedb-cluster/cluster"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"github.com/nodedb/nodedb-cluster/internal/placement"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// RPC methods of the control plane.
const (
	rpcGroupStatus = "group.status" // this node's view of a group (JSON)
	// rpcGroupStatuses is group.status for many groups in one call: the
	// request is a count and that many group IDs (uvarints), the answer a
	// JSON array of the statuses in the same order, null for a group this
	// node does not hold.
	rpcGroupStatuses = "group.statuses"
	rpcGroupChange   = "group.change"   // change a group's membership (leader only)
	rpcTransfer      = "group.transfer" // move a group's leadership (leader only)
	rpcMetaState     = "meta.state"     // the sender's applied metadata state
)

// catchUpMaxLag is how far behind the leader's commit index a learner's
// match index may be for it to be promoted: a learner promoted while far
// behind would make the group wait for it (or lose its quorum).
const catchUpMaxLag = 64

// transferRequest is a group.transfer request.
type transferRequest struct {
	Group ids.GroupID   `json:"group"`
	To    ids.ReplicaID `json:"to"`
}

// changeRequest is a group.change request.
type changeRequest struct {
	Group   ids.GroupID             `json:"group"`
	Changes []cluster.ReplicaChange `json:"changes"`
}

func (s *Server) registerControlRPCs() {
	s.ep.Handle(rpcGroupStatus, func(ctx context.Context, from ids.NodeID, b []byte) ([]byte, error) {
		g, n := binary.Uvarint(b)
		if n <= 0 || n != len(b) {
			return nil, &transport.RPCError{Code: codeInvalid, Message: "malformed group"}
		}
		st, err := s.node.Status(ids.GroupID(g))
		if err != nil {
			return nil, toRPCError(err)
		}
		return json.Marshal(st)
	})
	s.ep.Handle(rpcGroupStatuses, func(ctx context.Context, from ids.NodeID, b []byte) ([]byte, error) {
		groups, err := decodeGroupList(b)
		if err != nil {
			return nil, err
		}
		out := make([]*cluster.GroupStatus, len(groups))
		for i, g := range groups {
			if st, err := s.node.Status(g); err == nil {
				out[i] = &st
			}
		}
		return json.Marshal(out)
	})
	s.ep.Handle(rpcGroupChange, func(ctx context.Context, from ids.NodeID, b []byte) ([]byte, error) {
		var req changeRequest
		if err := json.Unmarshal(b, &req); err != nil || len(req.Changes) == 0 || len(req.Changes) > 8 {
			return nil, &transport.RPCError{Code: codeInvalid, Message: "malformed change request"}
		}
		return nil, toRPCError(s.node.ChangeReplicas(ctx, req.Group, req.Changes))
	})
	s.ep.Handle(rpcTransfer, func(ctx context.Context, from ids.NodeID, b []byte) ([]byte, error) {
		var req transferRequest
		if err := json.Unmarshal(b, &req); err != nil || req.To == 0 {
			return nil, &transport.RPCError{Code: codeInvalid, Message: "malformed transfer request"}
		}
		return nil, toRPCError(s.node.TransferLeadership(ctx, req.Group, req.To))
	})
	s.ep.Handle(rpcPing, func(context.Context, ids.NodeID, []byte) ([]byte, error) { return nil, nil })
	s.ep.Handle(rpcMetaState, func(ctx context.Context, from ids.NodeID, b []byte) ([]byte, error) {
		st := s.view.get()
		if st == nil {
			return nil, &transport.RPCError{Code: codeUnavailable, Message: "no metadata here yet"}
		}
		return meta.EncodeState(st)
	})
}

// controlLoop keeps this node in line with the metadata state: it refreshes
// the view, hands peer addresses to the transport, creates the replicas
// placed here, asks to be activated after a join, and, on the metadata
// leader, drives placement. Everything it does is level-triggered: after a
// crash at any point, the next pass picks up where the state says.
func (s *Server) controlLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.ControlInterval)
	defer t.Stop()
	activated := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.kick:
		}
		if err := s.refreshView(ctx); err != nil {
			s.log.Debug("refresh metadata", "err", err)
		}
		st := s.view.get()
		if st == nil {
			continue
		}
		s.syncPeers(st)
		s.reconcileReplicas(st)
		s.destroyRemoved(st)
		if !activated {
			activated = s.activate(ctx, st)
		} else {
			s.announceAddrs(ctx, st)
		}
		if s.node.IsLeader(MetaGroup) {
			obs := s.observeAll(ctx, st)
			s.moves.pass(ctx, st, obs)
			s.place(ctx, st, obs)
		}
	}
}

// refreshView reloads the metadata state from the local replica, or, while
// this node has none (it just joined), fetches it from a peer.
func (s *Server) refreshView(ctx context.Context) error {
	if slices.Contains(s.node.Groups(), MetaGroup) {
		return s.view.load(s.node)
	}
	s.peersMu.Lock()
	var peers []ids.NodeID
	for n := range s.peers {
		peers = append(peers, n)
	}
	s.peersMu.Unlock()
	var errs []error
	for _, n := range peers {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		b, err := s.ep.Call(cctx, n, rpcMetaState, nil)
		cancel()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		st, err := meta.DecodeState(b)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.view.set(st)
		return nil
	}
	return errors.Join(errs...)
}

// syncPeers gives the transport every node's address.
func (s *Server) syncPeers(st *metaState) {
	s.peersMu.Lock()
	defer s.peersMu.Unlock()
	for id, n := range st.GetNodes() {
		nid := ids.NodeID(id)
		if nid == s.id || n.GetPeerAddr() == "" || s.peers[nid] == n.GetPeerAddr() {
			continue
		}
		s.peers[nid] = n.GetPeerAddr()
		s.ep.SetPeer(nid, n.GetPeerAddr())
	}
}

// reconcileReplicas creates this node's replicas that the metadata state
// places here: founders of a group bootstrap it, later members start empty
// and receive a snapshot from the leader once it adds them.
func (s *Server) reconcileReplicas(st *metaState) {
	held := map[ids.GroupID]bool{}
	for _, g := range s.node.Groups() {
		held[g] = true
	}
	for _, gid := range sortedKeys(st.GetGroups()) {
		g := st.GetGroups()[gid]
		for _, r := range g.GetReplicas() {
			if ids.NodeID(r.GetNode()) != s.id || held[ids.GroupID(gid)] {
				continue
			}
			var err error
			if r.GetFounder() {
				var founders []cluster.Replica
				for _, f := range g.GetReplicas() {
					if f.GetFounder() {
						founders = append(founders, cluster.Replica{Replica: ids.ReplicaID(f.GetId()), Node: ids.NodeID(f.GetNode())})
					}
				}
				err = s.node.BootstrapGroup(ids.GroupID(gid), ids.ReplicaID(r.GetId()), founders)
			} else {
				err = s.node.CreateReplica(ids.GroupID(gid), ids.ReplicaID(r.GetId()))
			}
			switch {
			case err == nil:
				s.log.Info("replica created", "group", gid, "replica", r.GetId(), "founder", r.GetFounder())
			case errors.Is(err, cluster.ErrReplicaExists):
			default:
				s.log.Warn("create replica", "group", gid, "replica", r.GetId(), "err", err)
			}
		}
	}
}

// destroyRemoved deletes this node's replicas of groups the metadata state
// no longer places here, and those it replaced by a newer replica of the
// same group here (a voter moved away and back: the old replica ID was
// removed, the new one cannot be created while the old one holds the
// group's place on this node). The state records a removal only after Raft
// committed it, so the group no longer counts on this replica.
func (s *Server) destroyRemoved(st *metaState) {
	if !slices.Contains(s.node.Groups(), MetaGroup) {
		return // a node without its own metadata replica acts on nothing it fetched
	}
	for _, g := range s.node.Groups() {
		grp := st.GetGroups()[uint64(g)]
		if r := meta.ReplicaOnNode(grp, uint64(s.id)); grp == nil || r != nil && !s.staleReplica(g, r.GetId()) {
			continue
		}
		if err := s.node.DestroyReplica(g); err != nil {
			s.log.Warn("destroy removed replica", "group", g, "err", err)
			continue
		}
		s.log.Info("replica destroyed", "group", g)
	}
}

// staleReplica reports whether this node's replica of g is not replica
// want, the one the metadata state places here.
func (s *Server) staleReplica(g ids.GroupID, want uint64) bool {
	st, err := s.node.Status(g)
	return err == nil && st.Replica != 0 && uint64(st.Replica) != want
}

// activate asks the metadata leader to mark this node active after it
// joined; it reports whether nothing is left to do.
func (s *Server) activate(ctx context.Context, st *metaState) bool {
	me := st.GetNodes()[uint64(s.id)]
	if me == nil || me.GetState() != metapb.NodeState_NODE_STATE_JOINING {
		return me != nil
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := s.proposeMeta(cctx, meta.NewActivateNode(uint64(s.id))); err != nil {
		s.log.Info("activation pending", "err", err)
		return false
	}
	s.log.Info("node active")
	s.poke()
	return true
}

// announceAddrs records this node's addresses in the metadata when they
// changed (a restart with a new --listen, --advertise or --api).
func (s *Server) announceAddrs(ctx context.Context, st *metaState) {
	me := st.GetNodes()[uint64(s.id)]
	if me == nil || me.GetState() != metapb.NodeState_NODE_STATE_ACTIVE {
		return
	}
	if me.GetPeerAddr() == s.advertise() && me.GetApiAddr() == s.cfg.API {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := s.proposeMeta(cctx, meta.NewSetNodeAddrs(uint64(s.id), s.advertise(), s.cfg.API)); err != nil {
		s.log.Info("announce new addresses", "err", err)
		return
	}
	s.log.Info("addresses announced", "peer_addr", s.advertise(), "api_addr", s.cfg.API)
}

// place runs on the metadata leader, given every group's leader status
// (obs): it records leader hints, makes each group's Raft membership match the
// metadata state, and applies the placement plan (learners added where
// replicas are missing, promoted once caught up). Groups a migration holds
// are left alone (heldGroups).
func (s *Server) place(ctx context.Context, st *metaState, obs map[uint64]*cluster.GroupStatus) {
	held := heldGroups(st)
	changed := false
	var hints []*metapb.Entry
	for _, gid := range sortedKeys(st.GetGroups()) {
		g, o := st.GetGroups()[gid], obs[gid]
		if o == nil {
			continue
		}
		if uint64(o.LeaderNode) != g.GetLeaderHint() && o.LeaderNode != 0 {
			hints = append(hints, meta.NewSetLeaderHint(gid, uint64(o.LeaderNode)))
		}
		if skipHeld(s.log, held, gid, "membership sync") {
			continue
		}
		if did, err := s.syncMembership(ctx, ids.GroupID(gid), g, o); err != nil {
			s.log.Info("sync group membership", "group", gid, "err", err)
		} else if did {
			changed = true
		}
	}
	if len(hints) > 0 {
		if _, err := s.proposeMetaWithin(ctx, meta.NewBatch(hints...)); err != nil {
			s.log.Debug("record leader hints", "err", err)
		}
	}
	isCaughtUp := func(g, r uint64) bool { return caughtUp(obs[g], ids.ReplicaID(r)) }
	plan := placementChanges(s.log, st, held, isCaughtUp)
	if len(plan) == 0 && !changed {
		// Placement is settled: spread the leaderships.
		leaders := map[uint64]uint64{}
		for g, o := range obs {
			leaders[g] = uint64(o.LeaderNode)
		}
		for _, m := range leaderMoves(s.log, st, held, leaders) {
			if err := s.transferTo(ctx, obs[m.Group], ids.GroupID(m.Group), ids.ReplicaID(m.ToReplica)); err != nil {
				s.log.Info("balance leaders", "group", m.Group, "to", m.To, "err", err)
				continue
			}
			s.log.Info("leadership balanced", "group", m.Group, "from", m.From, "to", m.To)
		}
	}
	for _, c := range plan {
		o := obs[c.Group]
		if o == nil && c.Kind != placement.AddLearner {
			continue
		}
		var err error
		switch c.Kind {
		case placement.AddLearner:
			_, err = s.proposeMetaWithin(ctx, c.Entry())
		case placement.Promote:
			err = s.changeReplicas(ctx, o, ids.GroupID(c.Group), cluster.ReplicaChange{Op: cluster.AddVoter, Replica: ids.ReplicaID(c.Replica), Node: ids.NodeID(c.Node)})
			if err == nil {
				_, err = s.proposeMetaWithin(ctx, c.Entry())
			}
		case placement.Replace:
			if o.LeaderNode == ids.NodeID(c.ReplacesNode) {
				// The leader is leaving: hand leadership to a voter that
				// stays first, then replace on a later pass.
				err = s.transferAway(ctx, o, ids.GroupID(c.Group), ids.ReplicaID(c.Replaces))
				break
			}
			// Joint consensus: the learner becomes a voter and the outgoing
			// voter leaves in one configuration change.
			err = s.changeReplicas(ctx, o, ids.GroupID(c.Group),
				cluster.ReplicaChange{Op: cluster.AddVoter, Replica: ids.ReplicaID(c.Replica), Node: ids.NodeID(c.Node)},
				cluster.ReplicaChange{Op: cluster.RemoveReplica, Replica: ids.ReplicaID(c.Replaces)})
			if err == nil {
				_, err = s.proposeMetaWithin(ctx, c.Entry())
			}
		}
		if err != nil {
			s.log.Info("placement step", "group", c.Group, "change", c.Kind, "node", c.Node, "err", err)
			continue
		}
		s.log.Info("placement step", "group", c.Group, "change", c.Kind, "node", c.Node, "replica", c.Replica)
		changed = true
	}
	if changed {
		s.poke()
	}
}

// heldGroups maps every group a migration holds to the id of the migration
// holding it: meta.GroupFence over the whole state at once (sound rows
// only, the lowest id first should two rows ever name one group).
//
// The control loop leaves a held group alone: no placement change, no
// rebalancing move, no leadership transfer, no membership repair, until
// the migration ends or is aborted and its row releases the group. The
// migration changes the group's Raft configuration and its metadata record
// in its own order; a repair in between would fight it (re-adding a learner
// an abort just removed), and a Promote or Replace would change Raft before
// the metadata group refuses its record (CONFLICT), leaving the two
// disagreeing.
func heldGroups(st *metaState) map[uint64]string {
	out := map[uint64]string{}
	for _, id := range sortedKeys(st.GetMigrations()) {
		c := st.GetMigrations()[id]
		g := c.GetFenceGroup()
		if g == 0 {
			continue
		}
		if _, ok := out[g]; ok {
			continue
		}
		if meta.VerifyCheckpoint(id, c) == nil {
			out[g] = id
		}
	}
	return out
}

// skipHeld reports whether group g is held by a migration (held is
// heldGroups' answer), logging that what is skipped for it.
func skipHeld(log *slog.Logger, held map[uint64]string, g uint64, what string) bool {
	mid, ok := held[g]
	if ok {
		log.Debug("group held by a migration: skipped", "group", g, "migration", mid, "action", what)
	}
	return ok
}

// placementChanges is this pass's placement: placement.Plan's changes, or,
// when Plan has none, placement.Rebalance's, without those of groups a
// migration holds. The planners see the whole state, so the loads they
// balance count held groups' replicas (and Rebalance, which plans nothing
// while Plan has a change for any group, waits for a held group that needs
// repair); only their changes to held groups are dropped.
func placementChanges(log *slog.Logger, st *metaState, held map[uint64]string, caughtUp func(g, r uint64) bool) []placement.Change {
	keep := func(plan []placement.Change) []placement.Change {
		return slices.DeleteFunc(plan, func(c placement.Change) bool {
			return skipHeld(log, held, c.Group, "placement "+c.Kind.String())
		})
	}
	plan := keep(placement.Plan(st, caughtUp))
	if len(plan) == 0 {
		plan = keep(placement.Rebalance(st, caughtUp))
	}
	return plan
}

// leaderMoves is placement.BalanceLeaders over the groups no migration
// holds: held groups are left out of leaders, as groups without a known
// leader are, so their leaderships neither move nor count.
func leaderMoves(log *slog.Logger, st *metaState, held map[uint64]string, leaders map[uint64]uint64) []placement.LeaderMove {
	free := make(map[uint64]uint64, len(leaders))
	for _, g := range sortedKeys(leaders) {
		if !skipHeld(log, held, g, "leader balance") {
			free[g] = leaders[g]
		}
	}
	return placement.BalanceLeaders(st, free)
}

// syncMembership makes one step towards g's Raft configuration matching
// the metadata state, repairing a change interrupted between its Raft step
// and its metadata record (the Raft step always comes first for promotions
// and removals, the metadata record first for additions):
//
//   - a learner the state lists that Raft has as a voter, while a voter the
//     state lists is gone from Raft: a replacement; record it;
//   - a learner that Raft has as a voter: a promotion; record it;
//   - a replica the state lists that Raft lacks: add it to Raft as a learner;
//   - a voter in the state that Raft has as a learner: promote it in Raft.
func (s *Server) syncMembership(ctx context.Context, gid ids.GroupID, g *metapb.Group, o *cluster.GroupStatus) (bool, error) {
	cs := o.Config.ConfState
	var promoted, missing []*metapb.Replica
	for _, r := range g.GetReplicas() {
		id := r.GetId()
		switch voter, learner := slices.Contains(cs.Voters, id), slices.Contains(cs.Learners, id); {
		case voter && r.GetRole() == metapb.Role_ROLE_LEARNER:
			promoted = append(promoted, r)
		case !voter && !learner:
			missing = append(missing, r)
		}
	}
	if len(promoted) > 0 {
		var es []*metapb.Entry
		for _, r := range promoted {
			es = append(es, meta.NewPromoteReplica(uint64(gid), r.GetId()))
		}
		for _, r := range missing {
			if r.GetRole() == metapb.Role_ROLE_VOTER {
				es = append(es, meta.NewRemoveReplica(uint64(gid), r.GetId()))
			}
		}
		_, err := s.proposeMetaWithin(ctx, meta.NewBatch(es...))
		return true, err
	}
	for _, r := range missing {
		return true, s.changeReplicas(ctx, o, gid, cluster.ReplicaChange{Op: cluster.AddLearner, Replica: ids.ReplicaID(r.GetId()), Node: ids.NodeID(r.GetNode())})
	}
	for _, r := range g.GetReplicas() {
		if r.GetRole() == metapb.Role_ROLE_VOTER && slices.Contains(cs.Learners, r.GetId()) {
			return true, s.changeReplicas(ctx, o, gid, cluster.ReplicaChange{Op: cluster.AddVoter, Replica: ids.ReplicaID(r.GetId()), Node: ids.NodeID(r.GetNode())})
		}
	}
	return false, nil
}

// transferAway moves g's leadership to a voter other than leaving.
func (s *Server) transferAway(ctx context.Context, o *cluster.GroupStatus, g ids.GroupID, leaving ids.ReplicaID) error {
	var to ids.ReplicaID
	for _, v := range o.Config.ConfState.Voters {
		if p, ok := o.Progress[ids.ReplicaID(v)]; ok && ids.ReplicaID(v) != leaving && p.RecentActive && p.State == "replicate" {
			to = ids.ReplicaID(v)
			break
		}
	}
	if to == 0 {
		return fmt.Errorf("group %d: no voter to take over leadership", g)
	}
	return s.transferTo(ctx, o, g, to)
}

// transferTo moves g's leadership to replica to, on the leader o names.
func (s *Server) transferTo(ctx context.Context, o *cluster.GroupStatus, g ids.GroupID, to ids.ReplicaID) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if o.LeaderNode == s.id {
		return s.node.TransferLeadership(ctx, g, to)
	}
	b, err := json.Marshal(transferRequest{Group: g, To: to})
	if err != nil {
		return err
	}
	_, err = s.ep.Call(ctx, o.LeaderNode, rpcTransfer, b)
	return err
}

// caughtUp reports whether learner r of a group is close enough to the
// leader's commit index to become a voter, from the leader's Raft progress.
func caughtUp(o *cluster.GroupStatus, r ids.ReplicaID) bool {
	if o == nil {
		return false
	}
	p, ok := o.Progress[r]
	return ok && p.Learner && p.State == "replicate" && p.Match+catchUpMaxLag >= o.Commit
}

// changeReplicas changes a group's membership on its leader, here or over
// QUIC.
func (s *Server) changeReplicas(ctx context.Context, o *cluster.GroupStatus, g ids.GroupID, ch ...cluster.ReplicaChange) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if o.LeaderNode == s.id {
		return s.node.ChangeReplicas(ctx, g, ch)
	}
	b, err := json.Marshal(changeRequest{Group: g, Changes: ch})
	if err != nil {
		return err
	}
	_, err = s.ep.Call(ctx, o.LeaderNode, rpcGroupChange, b)
	return err
}

// observeAll returns the leader's status of every group that has a leader
// it could reach, keyed by group. It runs on every control pass of the
// metadata leader, idle or not, so it asks each node once for the status
// of every group that node is believed to lead (group.statuses) rather
// than once per group: with many groups the per-group calls were most of
// an idle cluster's traffic once the groups themselves went quiet. A group
// whose believed leader does not confirm, and a node that does not answer
// the batch (one that predates it, say), fall back to observe.
func (s *Server) observeAll(ctx context.Context, st *metaState) map[uint64]*cluster.GroupStatus {
	return s.observeAllVia(ctx, s.ep, st)
}

// observeAllVia is observeAll calling peers through c.
func (s *Server) observeAllVia(ctx context.Context, c transport.Caller, st *metaState) map[uint64]*cluster.GroupStatus {
	var mu sync.Mutex
	out := map[uint64]*cluster.GroupStatus{}
	byNode := map[ids.NodeID][]ids.GroupID{}
	var rest []uint64
	for gid, g := range st.GetGroups() {
		local, err := s.node.Status(ids.GroupID(gid))
		switch {
		case err == nil && local.State == "leader":
			out[gid] = &local
		case err == nil && local.LeaderNode != 0 && local.LeaderNode != s.id:
			byNode[local.LeaderNode] = append(byNode[local.LeaderNode], ids.GroupID(gid))
		case g.GetLeaderHint() != 0 && ids.NodeID(g.GetLeaderHint()) != s.id:
			n := ids.NodeID(g.GetLeaderHint())
			byNode[n] = append(byNode[n], ids.GroupID(gid))
		default:
			rest = append(rest, gid)
		}
	}
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for n, groups := range byNode {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			sts, err := s.remoteStatuses(ctx, c, n, groups)
			mu.Lock()
			defer mu.Unlock()
			for i, g := range groups {
				if err == nil && sts[i] != nil && sts[i].State == "leader" {
					out[uint64(g)] = sts[i]
				} else {
					rest = append(rest, uint64(g))
				}
			}
		}()
	}
	wg.Wait()
	groups := st.GetGroups()
	for _, gid := range rest {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			o, err := s.observeVia(ctx, c, ids.GroupID(gid), groups[gid])
			if err != nil {
				return
			}
			mu.Lock()
			out[gid] = o
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// remoteStatuses asks node n for its status of each of groups (nil where it
// holds none), in one call.
func (s *Server) remoteStatuses(ctx context.Context, c transport.Caller, n ids.NodeID, groups []ids.GroupID) ([]*cluster.GroupStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	b, err := c.Call(ctx, n, rpcGroupStatuses, encodeGroupList(groups))
	if err != nil {
		return nil, err
	}
	var sts []*cluster.GroupStatus
	if err := json.Unmarshal(b, &sts); err != nil {
		return nil, fmt.Errorf("group statuses from node %d: %w", n, err)
	}
	if len(sts) != len(groups) {
		return nil, fmt.Errorf("group statuses from node %d: %d answers to %d groups", n, len(sts), len(groups))
	}
	return sts, nil
}

// encodeGroupList encodes a group.statuses request.
func encodeGroupList(groups []ids.GroupID) []byte {
	b := binary.AppendUvarint(nil, uint64(len(groups)))
	for _, g := range groups {
		b = binary.AppendUvarint(b, uint64(g))
	}
	return b
}

// decodeGroupList decodes a group.statuses request; the count is bounded by
// the bytes that follow it (a group ID takes at least one) before anything
// is allocated.
func decodeGroupList(b []byte) ([]ids.GroupID, error) {
	bad := &transport.RPCError{Code: codeInvalid, Message: "malformed group list"}
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return nil, bad
	}
	b = b[k:]
	groups := make([]ids.GroupID, 0, n)
	for range n {
		g, k := binary.Uvarint(b)
		if k <= 0 {
			return nil, bad
		}
		groups = append(groups, ids.GroupID(g))
		b = b[k:]
	}
	if len(b) != 0 {
		return nil, bad
	}
	return groups, nil
}

// observe finds group g's leader and returns its status.
func (s *Server) observe(ctx context.Context, gid ids.GroupID, g *metapb.Group) (*cluster.GroupStatus, error) {
	return s.observeVia(ctx, s.ep, gid, g)
}

// observeVia is observe calling peers through c.
func (s *Server) observeVia(ctx context.Context, c transport.Caller, gid ids.GroupID, g *metapb.Group) (*cluster.GroupStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var candidates []ids.NodeID
	if st, err := s.node.Status(gid); err == nil {
		if st.State == "leader" {
			return &st, nil
		}
		if st.LeaderNode != 0 {
			candidates = append(candidates, st.LeaderNode)
		}
	}
	if h := ids.NodeID(g.GetLeaderHint()); h != 0 {
		candidates = append(candidates, h)
	}
	for _, r := range g.GetReplicas() {
		candidates = append(candidates, ids.NodeID(r.GetNode()))
	}
	tried := map[ids.NodeID]bool{s.id: true}
	for len(candidates) > 0 {
		n := candidates[0]
		candidates = candidates[1:]
		if tried[n] {
			continue
		}
		tried[n] = true
		st, err := s.remoteStatus(ctx, c, n, gid)
		if err != nil {
			continue
		}
		if st.State == "leader" {
			return st, nil
		}
		if st.LeaderNode != 0 && !tried[st.LeaderNode] {
			candidates = append([]ids.NodeID{st.LeaderNode}, candidates...)
		}
	}
	return nil, fmt.Errorf("group %d: no leader reachable", gid)
}

func (s *Server) remoteStatus(ctx context.Context, c transport.Caller, n ids.NodeID, g ids.GroupID) (*cluster.GroupStatus, error) {
	b, err := c.Call(ctx, n, rpcGroupStatus, binary.AppendUvarint(nil, uint64(g)))
	if err != nil {
		return nil, err
	}
	st := &cluster.GroupStatus{}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("group %d status from node %d: %w", g, n, err)
	}
	return st, nil
}

// controlStepTimeout bounds each metadata proposal of the control loop, so
// that one stuck step cannot stall every later pass.
const controlStepTimeout = 5 * time.Second

// proposeMetaWithin is proposeMeta bounded by controlStepTimeout.
func (s *Server) proposeMetaWithin(ctx context.Context, e *metapb.Entry) (*metapb.Result, error) {
	ctx, cancel := context.WithTimeout(ctx, controlStepTimeout)
	defer cancel()
	return s.proposeMeta(ctx, e)
}

// sortedKeys returns m's keys in order, for deterministic passes.
func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K { return slices.Sorted(maps.Keys(m)) }
