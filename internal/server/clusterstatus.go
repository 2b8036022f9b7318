package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/jointoken"
	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"github.com/nodedb/nodedb-cluster/internal/migrate"
	"github.com/nodedb/nodedb-cluster/internal/transport"
)

// ClusterStatus is the applied metadata state as `status --json` prints it
// (and, with the client API, GET /v1/cluster). The field names are fixed so
// scripts can rely on them; secrets (the CA key, token hashes) never appear.
type ClusterStatus struct {
	ClusterID         string          `json:"cluster_id"`
	VShardCount       int             `json:"vshard_count"`
	ReplicationFactor int             `json:"replication_factor"`
	RoutingVersion    uint64          `json:"routing_version"`
	Nodes             []NodeInfo      `json:"nodes"`
	Groups            []GroupInfo     `json:"groups"`
	VShards           []VShardInfo    `json:"vshards"`
	Migrations        []MigrationInfo `json:"migrations"`
	// Node is the node that answered, MetaLeader the metadata leader it
	// knows, AppliedEntries how many metadata entries its state reflects.
	// Transport is that node's peer transport ("quic" or "tcp"), which every
	// node of the cluster shares.
	Node           uint64      `json:"node"`
	Transport      string      `json:"transport"`
	MetaLeader     uint64      `json:"meta_leader"`
	AppliedEntries uint64      `json:"applied_entries"`
	Tokens         []TokenInfo `json:"tokens"`
}

// NodeInfo is one node.
type NodeInfo struct {
	ID       uint64 `json:"id"`
	State    string `json:"state"`
	Liveness string `json:"liveness"`
	PeerAddr string `json:"peer_addr"`
	APIAddr  string `json:"api_addr"`
	Zone     string `json:"zone"`
}

// GroupInfo is one Raft group (group 0 is the metadata group).
type GroupInfo struct {
	ID       uint64   `json:"id"`
	Voters   []uint64 `json:"voters"`
	Learners []uint64 `json:"learners"`
	Leader   uint64   `json:"leader"`
	VShards  int      `json:"vshards"`
}

// VShardInfo is one vShard's route.
type VShardInfo struct {
	ID    uint32 `json:"id"`
	Group uint64 `json:"group"`
	Epoch uint64 `json:"epoch"`
}

// MigrationInfo is one in-flight migration. A row that does not verify
// (meta.VerifyCheckpoint: checksum mismatch, a field out of range, stored
// under another id) is quarantined: nothing acts on it and it holds no
// group until an operator deletes it; Error says why. Group is the data
// group a sound row holds (0: none).
type MigrationInfo struct {
	ID          string  `json:"id"`
	Kind        string  `json:"kind"`
	Phase       string  `json:"phase"`
	Attempt     uint32  `json:"attempt"`
	AgeSeconds  float64 `json:"age_seconds"`
	Group       uint64  `json:"group,omitempty"`
	Quarantined bool    `json:"quarantined"`
	Error       string  `json:"error,omitempty"`

	// A replica move's payload: From's voter moves to To; Learner is the
	// replica on To once allocated; LastError the last failure of the
	// current phase (or why it aborts); ElapsedSeconds the time since the
	// move started (AgeSeconds is the time since the row's last write).
	From           uint64  `json:"from,omitempty"`
	To             uint64  `json:"to,omitempty"`
	Learner        uint64  `json:"learner,omitempty"`
	LastError      string  `json:"last_error,omitempty"`
	ElapsedSeconds float64 `json:"elapsed_seconds,omitempty"`
	// LearnerLag is how many entries the learner's match index is behind
	// the leader's commit index, when the leader could be asked (only in
	// the migrations listing, not in the cluster status).
	LearnerLag *uint64 `json:"learner_lag,omitempty"`
}

// TokenInfo is a join token, without its secret.
type TokenInfo struct {
	ID      string    `json:"id"`
	State   string    `json:"state"`
	Expires time.Time `json:"expires"`
	Node    uint64    `json:"node,omitempty"`
}

// ErrNoMetadata is returned while this node has no metadata state yet.
var ErrNoMetadata = errors.New("no metadata state on this node yet")

// ClusterStatus reports the applied metadata state as this node has it.
func (s *Server) ClusterStatus() (ClusterStatus, error) {
	st := s.view.get()
	if st == nil {
		return ClusterStatus{}, ErrNoMetadata
	}
	set := st.GetSettings()
	out := ClusterStatus{
		ClusterID:         set.GetClusterId(),
		VShardCount:       int(set.GetVshardCount()),
		ReplicationFactor: int(set.GetReplicationFactor()),
		RoutingVersion:    st.GetRoutingVersion(),
		Node:              uint64(s.id),
		Transport:         s.cfg.Transport,
		AppliedEntries:    st.GetAppliedEntries(),
		Nodes:             []NodeInfo{},
		Groups:            []GroupInfo{},
		VShards:           []VShardInfo{},
		Migrations:        []MigrationInfo{},
		Tokens:            []TokenInfo{},
	}
	if _, n, err := s.node.Leader(MetaGroup); err == nil {
		out.MetaLeader = uint64(n)
	}
	for _, id := range sortedKeys(st.GetNodes()) {
		n := st.GetNodes()[id]
		out.Nodes = append(out.Nodes, NodeInfo{
			ID: id, State: meta.NodeStateName(n.GetState()), Liveness: s.liveness(ids.NodeID(id)),
			PeerAddr: n.GetPeerAddr(), APIAddr: n.GetApiAddr(), Zone: n.GetZone(),
		})
	}
	perGroup := map[uint64]int{}
	for v, r := range st.GetRouting() {
		out.VShards = append(out.VShards, VShardInfo{ID: uint32(v), Group: r.GetGroup(), Epoch: r.GetEpoch()})
		perGroup[r.GetGroup()]++
	}
	for _, id := range sortedKeys(st.GetGroups()) {
		g := st.GetGroups()[id]
		gi := GroupInfo{ID: id, Voters: []uint64{}, Learners: []uint64{}, Leader: g.GetLeaderHint(), VShards: perGroup[id]}
		if _, n, err := s.node.Leader(ids.GroupID(id)); err == nil && n != 0 {
			gi.Leader = uint64(n)
		}
		for _, r := range g.GetReplicas() {
			if r.GetRole() == metapb.Role_ROLE_VOTER {
				gi.Voters = append(gi.Voters, r.GetNode())
			} else {
				gi.Learners = append(gi.Learners, r.GetNode())
			}
		}
		slices.Sort(gi.Voters)
		slices.Sort(gi.Learners)
		out.Groups = append(out.Groups, gi)
	}
	now := time.Now()
	out.Migrations = migrationInfos(st, now)
	for _, id := range sortedKeys(st.GetTokens()) {
		t := st.GetTokens()[id]
		out.Tokens = append(out.Tokens, TokenInfo{
			ID: id, State: tokenStateName(t, now), Expires: time.Unix(0, t.GetExpiresUnixNanos()).UTC(), Node: t.GetNodeId(),
		})
	}
	return out, nil
}

// liveness is this node's hint about another node: alive while the
// transport holds a connection to it. Failure detection (SWIM) refines it
// later; the metadata state, not liveness, decides membership.
func (s *Server) liveness(n ids.NodeID) string {
	if n == s.id {
		return "alive"
	}
	switch s.ep.PeerState(n) {
	case transport.PeerConnected:
		return "alive"
	case transport.PeerBackoff:
		return "suspect"
	}
	return "unknown"
}

// CreateToken registers a single-use join token valid for ttl and returns
// it in its text form.
func (s *Server) CreateToken(ctx context.Context, ttl time.Duration) (string, time.Time, error) {
	if ttl <= 0 || ttl > 7*24*time.Hour {
		return "", time.Time{}, fmt.Errorf("token TTL must be between 1s and 168h, got %s", ttl)
	}
	st := s.view.get()
	if st == nil {
		return "", time.Time{}, ErrNoMetadata
	}
	ca, err := caOf(st.GetSettings())
	if err != nil {
		return "", time.Time{}, err
	}
	tok, err := jointoken.New(ca.PublicKeyHash())
	if err != nil {
		return "", time.Time{}, err
	}
	expires := time.Now().Add(ttl)
	if _, err := s.proposeMeta(ctx, meta.NewCreateToken(tok.ID(), tok.SecretHash(), expires.UnixNano())); err != nil {
		return "", time.Time{}, fmt.Errorf("register token: %w", err)
	}
	return tok.String(), expires, nil
}

// RevokeToken revokes a join token by ID: a node that has not been admitted
// with it yet cannot be.
func (s *Server) RevokeToken(ctx context.Context, id string) error {
	_, err := s.proposeMeta(ctx, meta.NewRevokeToken(id))
	return err
}

// migrationInfos lists st's migration rows by id, marking the quarantined
// ones; ages are relative to now.
func migrationInfos(st *metaState, now time.Time) []MigrationInfo {
	out := []MigrationInfo{}
	for _, id := range sortedKeys(st.GetMigrations()) {
		out = append(out, migrationInfo(id, st.GetMigrations()[id], now))
	}
	return out
}

// migrationInfo describes row m, stored under id.
func migrationInfo(id string, m *metapb.Checkpoint, now time.Time) MigrationInfo {
	mi := MigrationInfo{
		ID: id, Kind: migrationKindName(m.GetKind()), Phase: m.GetPhase(), Attempt: m.GetAttempt(),
		AgeSeconds: now.Sub(time.Unix(0, m.GetTimestampUnixNanos())).Seconds(),
	}
	if err := meta.VerifyCheckpoint(id, m); err != nil {
		mi.Quarantined, mi.Error = true, err.Error()
	} else {
		mi.Group = m.GetFenceGroup()
	}
	if m.GetKind() == metapb.MigrationKind_MIGRATION_KIND_REPLICA_MOVE && !mi.Quarantined {
		if _, mv, err := migrate.ParseRow(m); err != nil {
			mi.Quarantined, mi.Error = true, err.Error()
		} else {
			mi.Group, mi.From, mi.To, mi.Learner, mi.LastError = mv.Group, mv.From, mv.To, mv.Learner, mv.LastError
			mi.ElapsedSeconds = now.Sub(mv.Started()).Seconds()
		}
	}
	return mi
}

func migrationKindName(k metapb.MigrationKind) string {
	switch k {
	case metapb.MigrationKind_MIGRATION_KIND_REPLICA_MOVE:
		return "replica_move"
	case metapb.MigrationKind_MIGRATION_KIND_VSHARD_MOVE:
		return "vshard_move"
	}
	return "unknown"
}

func tokenStateName(t *metapb.Token, now time.Time) string {
	switch t.GetState() {
	case metapb.TokenState_TOKEN_STATE_REGISTERED:
		if now.UnixNano() > t.GetExpiresUnixNanos() {
			return "expired"
		}
		return "registered"
	case metapb.TokenState_TOKEN_STATE_IN_FLIGHT:
		return "in_flight"
	case metapb.TokenState_TOKEN_STATE_CONSUMED:
		return "consumed"
	case metapb.TokenState_TOKEN_STATE_REVOKED:
		return "revoked"
	}
	return "unknown"
}
