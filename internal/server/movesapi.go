package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/nodedb/nodedb-cluster/internal/failpoint"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
	"github.com/nodedb/nodedb-cluster/internal/migrate"
)

// MoveRequest asks to move group Group's voter on node From to node To.
type MoveRequest struct {
	Group uint64 `json:"group"`
	From  uint64 `json:"from"`
	To    uint64 `json:"to"`
}

// MoveReplica starts moving a replica (the move's first checkpoint row)
// and returns the row; the metadata leader's coordinator carries it out.
// Refusals are *APIError: conflict (a move or a learner addition in flight
// for the group, the target not active or already holding a replica),
// not_found (no such group, node, or voter on From), invalid_argument.
func (s *Server) MoveReplica(ctx context.Context, req MoveRequest) (MigrationInfo, error) {
	st, err := s.freshView(ctx)
	if err != nil {
		return MigrationInfo{}, err
	}
	m, err := migrate.NewReplicaMove(st, req.Group, req.From, req.To, time.Now())
	if err != nil {
		return MigrationInfo{}, moveAPIError(err)
	}
	id := migrate.MoveID(m)
	if err := failpoint.Inject("move.before-checkpoint-add_learner"); err != nil {
		return MigrationInfo{}, err
	}
	if _, err := s.proposeMeta(ctx, migrate.StartEntry(m)); err != nil {
		return MigrationInfo{}, moveAPIError(fmt.Errorf("start move %s: %w", id, err))
	}
	if err := failpoint.Inject("move.after-checkpoint-add_learner"); err != nil {
		return MigrationInfo{}, err
	}
	s.moves.metrics.started.Inc()
	s.log.Info("replica move started", "migration", id, "group", m.Group, "from", m.From, "to", m.To)
	s.awaitRow(ctx, id, func(c *metapb.Checkpoint) bool { return c != nil })
	return s.migrationOr(ctx, id, migrate.StartEntry(m).GetPutCheckpoint().GetCheckpoint())
}

// Migrations lists the migration rows of the applied metadata state, with
// the learner lag of moves catching up as their group's leader reports it.
func (s *Server) Migrations(ctx context.Context) ([]MigrationInfo, error) {
	st, err := s.freshView(ctx)
	if err != nil {
		return nil, err
	}
	out := migrationInfos(st, time.Now())
	for i := range out {
		s.addLag(ctx, st, &out[i])
	}
	return out, nil
}

// Migration returns one migration row (not_found if there is none).
func (s *Server) Migration(ctx context.Context, id string) (MigrationInfo, error) {
	st, err := s.freshView(ctx)
	if err != nil {
		return MigrationInfo{}, err
	}
	row, ok := st.GetMigrations()[id]
	if !ok {
		return MigrationInfo{}, apiErrorf(CodeNotFound, "no migration %q (a finished move's row is deleted)", id)
	}
	mi := migrationInfo(id, row, time.Now())
	s.addLag(ctx, st, &mi)
	return mi, nil
}

// migrationOr is Migration, or, if the row is already gone (the move ran
// to its end before the answer), the row this node wrote, as it was.
func (s *Server) migrationOr(ctx context.Context, id string, wrote *metapb.Checkpoint) (MigrationInfo, error) {
	mi, err := s.Migration(ctx, id)
	if isNotFound(err) {
		return migrationInfo(id, wrote, time.Now()), nil
	}
	return mi, err
}

func isNotFound(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Code == CodeNotFound
}

// addLag fills in the learner lag of a replica move that has a learner.
func (s *Server) addLag(ctx context.Context, st *metaState, mi *MigrationInfo) {
	if mi.Learner == 0 || mi.Phase == migrate.PhaseComplete.String() {
		return
	}
	g := st.GetGroups()[mi.Group]
	if g == nil {
		return
	}
	o, err := s.observe(ctx, ids.GroupID(mi.Group), g)
	if err != nil {
		return
	}
	p, ok := o.Progress[ids.ReplicaID(mi.Learner)]
	if !ok {
		return
	}
	lag := uint64(0)
	if o.Commit > p.Match {
		lag = o.Commit - p.Match
	}
	mi.LearnerLag = &lag
}

// AbortMigration aborts a replica move before its point of no return: its
// row goes to aborting and the coordinator undoes it (compensations). A
// quarantined row (it cannot be trusted, so nothing acts on it) is deleted
// instead. Refusals: not_found, conflict (the move is past its point of no
// return, or complete), unavailable (its group cannot be observed now, so
// whether it passed the point of no return is unknown).
func (s *Server) AbortMigration(ctx context.Context, id string) (MigrationInfo, error) {
	// The coordinator may write the row between this node's read and the
	// abort (the abort is conditional on the row it read): read again.
	for range 3 {
		mi, err := s.abortMigration(ctx, id)
		var me *meta.Error
		if !errors.As(err, &me) || me.Code != metapb.Code_CODE_CHECKPOINT_CONFLICT {
			return mi, moveAPIError(err)
		}
	}
	mi, err := s.abortMigration(ctx, id)
	return mi, moveAPIError(err)
}

func (s *Server) abortMigration(ctx context.Context, id string) (MigrationInfo, error) {
	st, err := s.freshView(ctx)
	if err != nil {
		return MigrationInfo{}, err
	}
	var row *metapb.Checkpoint
	for _, r := range migrate.Rows(st) {
		if r.GetId() == id {
			row = r
		}
	}
	if row == nil {
		return MigrationInfo{}, apiErrorf(CodeNotFound, "no migration %q", id)
	}
	phase, m, err := migrate.ParseRow(row)
	if err != nil {
		if row.GetKind() != metapb.MigrationKind_MIGRATION_KIND_REPLICA_MOVE && meta.VerifyCheckpoint(id, st.GetMigrations()[id]) == nil {
			return MigrationInfo{}, apiErrorf(CodeInvalidArgument, "migration %q is a %s: only replica moves abort here", id, migrationKindName(row.GetKind()))
		}
		if _, err := s.proposeMeta(ctx, meta.NewDeleteCheckpoint(id)); err != nil {
			return MigrationInfo{}, fmt.Errorf("delete quarantined row %q: %w", id, err)
		}
		s.log.Warn("quarantined migration row deleted by an operator", "migration", id)
		return MigrationInfo{ID: id, Quarantined: true, Phase: "deleted", Error: err.Error()}, nil
	}
	switch phase {
	case migrate.PhaseComplete:
		return MigrationInfo{}, apiErrorf(CodeConflict, "migration %q is complete: there is nothing to abort", id)
	case migrate.PhaseAborting:
		return s.Migration(ctx, id)
	}
	g := st.GetGroups()[m.Group]
	if g == nil {
		return MigrationInfo{}, apiErrorf(CodeConflict, "migration %q: group %d no longer exists", id, m.Group)
	}
	o, err := s.observe(ctx, ids.GroupID(m.Group), g)
	if err != nil {
		return MigrationInfo{}, apiErrorf(CodeUnavailable, "cannot observe group %d to tell whether the move passed its point of no return: %v", m.Group, err)
	}
	v := groupView(st, m.Group, o)
	switch {
	case v.ConfChangePending:
		return MigrationInfo{}, apiErrorf(CodeUnavailable, "group %d is applying a configuration change: ask again in a moment", m.Group)
	case migrate.PastNoReturn(m, v):
		return MigrationInfo{}, apiErrorf(CodeConflict, "migration %q is past its point of no return (Raft replaced the outgoing voter): it can only complete", id)
	}
	step := migrate.Step{Kind: migrate.StepAbort, From: phase, Move: m, Reason: "aborted by an operator"}
	e := step.Entry(id, row.GetAttempt())
	if err := failpoint.Inject("move.before-checkpoint-aborting"); err != nil {
		return MigrationInfo{}, err
	}
	if _, err := s.proposeMeta(ctx, e); err != nil {
		return MigrationInfo{}, fmt.Errorf("abort %s: %w", id, err)
	}
	if err := failpoint.Inject("move.after-checkpoint-aborting"); err != nil {
		return MigrationInfo{}, err
	}
	s.log.Warn("replica move aborted by an operator", "migration", id, "phase", phase)
	s.awaitRow(ctx, id, func(c *metapb.Checkpoint) bool { return c.GetPhase() != phase.String() })
	return s.migrationOr(ctx, id, e.GetPutCheckpoint().GetCheckpoint())
}

// awaitRow waits until this node's applied metadata state shows row id as
// done wants (nil: no row), or ctx ends: a write proposed through another
// node commits before this node applies it, and the answer should show it.
func (s *Server) awaitRow(ctx context.Context, id string, done func(*metapb.Checkpoint) bool) {
	for !done(s.view.get().GetMigrations()[id]) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// freshView returns the metadata state after a linearizable read of the
// metadata group (ReadIndex: this replica has applied everything committed
// before the call). The operator routes answer from it: a node that just
// restarted or lags must not report a move's row as gone (`--wait` would
// take the move as ended) nor decide a request from an older state. A node
// without a replica of the metadata group answers from the state it last
// fetched from a peer.
func (s *Server) freshView(ctx context.Context) (*metaState, error) {
	if slices.Contains(s.node.Groups(), MetaGroup) {
		if _, err := s.node.ReadIndex(ctx, MetaGroup); err != nil {
			return nil, apiErrorf(CodeUnavailable, "read the metadata: %v", err)
		}
	}
	st := s.view.get()
	if st == nil {
		return nil, ErrNoMetadata
	}
	return st, nil
}

// moveAPIError maps a refusal of a move request or of its metadata write
// to the API's codes.
func moveAPIError(err error) error {
	var (
		ce *migrate.ConflictError
		me *migrate.Error
		xe *meta.Error
	)
	switch {
	case errors.As(err, &ce):
		e := apiErrorf(CodeConflict, "%v", err)
		if ce.ID != "" {
			e.Hint = map[string]any{"migration": ce.ID}
		}
		return e
	case errors.As(err, &me):
		return &APIError{Code: codeOfMeta(me.Code), Message: err.Error()}
	case errors.As(err, &xe):
		return &APIError{Code: codeOfMeta(xe.Code), Message: err.Error()}
	}
	return err
}

// codeOfMeta is the API code of a metadata refusal.
func codeOfMeta(c metapb.Code) string {
	switch c {
	case metapb.Code_CODE_UNKNOWN_GROUP, metapb.Code_CODE_UNKNOWN_NODE, metapb.Code_CODE_UNKNOWN_REPLICA:
		return CodeNotFound
	case metapb.Code_CODE_CONFLICT, metapb.Code_CODE_CHECKPOINT_CONFLICT, metapb.Code_CODE_NODE_NOT_ACTIVE, metapb.Code_CODE_REPLICA_EXISTS:
		return CodeConflict
	}
	return CodeInvalidArgument
}

// maxAdminRequest bounds an admin request body before it is read.
const maxAdminRequest = 64 << 10

// AdminHandler serves the operator routes under /v1/admin/, on the admin
// socket and on the client API alike (docs/api.md):
//
//	POST /v1/admin/replica-moves          {"group":G,"from":N,"to":M} → MigrationInfo
//	GET  /v1/admin/migrations             → {"migrations":[MigrationInfo...]}
//	GET  /v1/admin/migrations/{id}        → MigrationInfo
//	POST /v1/admin/migrations/{id}/abort  → MigrationInfo
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/admin/replica-moves", func(w http.ResponseWriter, r *http.Request) {
		var req MoveRequest
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAdminRequest))
		if err == nil {
			err = json.Unmarshal(body, &req)
		}
		if err != nil {
			s.writeAPIError(w, apiErrorf(CodeInvalidArgument, "move request: %v", err))
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		mi, err := s.MoveReplica(ctx, req)
		s.answerAdmin(w, mi, err)
	})
	mux.HandleFunc("GET /v1/admin/migrations", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		ms, err := s.Migrations(ctx)
		s.answerAdmin(w, MigrationList{Migrations: ms}, err)
	})
	mux.HandleFunc("GET /v1/admin/migrations/{id}", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		mi, err := s.Migration(ctx, r.PathValue("id"))
		s.answerAdmin(w, mi, err)
	})
	mux.HandleFunc("POST /v1/admin/migrations/{id}/abort", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		mi, err := s.AbortMigration(ctx, r.PathValue("id"))
		s.answerAdmin(w, mi, err)
	})
	HandleUnrouted(mux)
	return mux
}

// MigrationList is GET /v1/admin/migrations' answer.
type MigrationList struct {
	Migrations []MigrationInfo `json:"migrations"`
}

func (s *Server) answerAdmin(w http.ResponseWriter, v any, err error) {
	if err != nil {
		s.writeAPIError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}
