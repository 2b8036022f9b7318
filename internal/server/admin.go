package server

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nodedb/nodedb-cluster/cluster"
	"github.com/nodedb/nodedb-cluster/internal/failpoint"
	"github.com/nodedb/nodedb-cluster/internal/ids"
	"github.com/nodedb/nodedb-cluster/internal/meta"
	"github.com/nodedb/nodedb-cluster/internal/meta/metapb"
)

// The admin endpoint is HTTP over a Unix socket in the data dir, created
// with mode 0600 inside a 0700 dir: whoever can use it owns the node's data
// anyway. It serves operators and tests until the public API exists:
//
//	GET    /v1/status          this node's view of its groups (JSON)
//	GET    /v1/cluster         the applied metadata state (ClusterStatus)
//	POST   /v1/tokens?ttl=1h   create a join token (TokenAnswer)
//	DELETE /v1/tokens/{id}     revoke a join token
//	GET    /v1/hash/{group}    the group's applied index and state hash here
//	PUT    /v1/kv/{key}        body = value; linearizable write via the leader
//	GET    /v1/kv/{key}        linearizable read via the leader
//	DELETE /v1/kv/{key}
//	GET    /metrics            Prometheus metrics of this node
//	       /v1/admin/...       the operator routes of AdminHandler
//	PUT    /v1/failpoints/{name}  body = action: arm a failpoint in this process
//	DELETE /v1/failpoints/{name}  disarm it (docs/failpoints.md)
type adminServer struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
}

// maxAdminValue bounds a request body before it is read.
const maxAdminValue = 1 << 20

func startAdmin(s *Server) (*adminServer, error) {
	path := AdminSocket(s.cfg.Dir)
	// A socket left by a killed process is in the way; nothing else should
	// be at this path.
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", s.handleStatus)
	mux.HandleFunc("GET /v1/cluster", s.handleCluster)
	mux.HandleFunc("POST /v1/tokens", s.handleCreateToken)
	mux.HandleFunc("DELETE /v1/tokens/{id}", s.handleRevokeToken)
	mux.HandleFunc("GET /v1/hash/{group}", s.handleHash)
	mux.HandleFunc("PUT /v1/kv/{key}", s.handlePut)
	mux.HandleFunc("GET /v1/kv/{key}", s.handleGet)
	mux.HandleFunc("DELETE /v1/kv/{key}", s.handleDelete)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{}))
	mux.Handle("/v1/admin/", s.AdminHandler())
	fp := &failpointRoutes{undo: map[string]func(){}}
	mux.HandleFunc("PUT /v1/failpoints/{name}", fp.enable)
	mux.HandleFunc("DELETE /v1/failpoints/{name}", fp.disable)
	HandleEmptyKey(mux)
	HandleUnrouted(mux)
	a := &adminServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, ln: ln, done: make(chan struct{})}
	go func() {
		defer close(a.done)
		a.srv.Serve(ln)
	}()
	return a, nil
}

func (a *adminServer) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := a.srv.Shutdown(ctx)
	<-a.done
	return err
}

// GroupStatus is one group in the status answer.
type GroupStatus struct {
	Group      uint64   `json:"group"`
	IsLeader   bool     `json:"is_leader"`
	LeaderNode uint64   `json:"leader_node"`
	Term       uint64   `json:"term"`
	Commit     uint64   `json:"commit"`
	Applied    uint64   `json:"applied"`
	Voters     []uint64 `json:"voters"`
}

// Status is a node's view of itself and its groups.
type Status struct {
	Node      uint64        `json:"node"`
	ClusterID string        `json:"cluster_id"`
	Listen    string        `json:"listen"`
	Groups    []GroupStatus `json:"groups"`
}

// Status reports this node's groups.
func (s *Server) Status() Status {
	st := Status{Node: uint64(s.id), ClusterID: s.clusterID, Listen: s.ep.Addr().String()}
	for _, g := range s.node.Groups() {
		gs, err := s.node.Status(g)
		if err != nil {
			continue
		}
		line := GroupStatus{Group: uint64(g), IsLeader: s.node.IsLeader(g), Term: gs.Term, Commit: gs.Commit, Applied: gs.Applied}
		if _, n, err := s.node.Leader(g); err == nil {
			line.LeaderNode = uint64(n)
		}
		for _, r := range gs.Config.Replicas {
			if slices.Contains(gs.Config.ConfState.Voters, uint64(r.Replica)) {
				line.Voters = append(line.Voters, uint64(r.Node))
			}
		}
		st.Groups = append(st.Groups, line)
	}
	return st
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.Status())
}

func (s *Server) handleCluster(w http.ResponseWriter, r *http.Request) {
	st, err := s.ClusterStatus()
	if err != nil {
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "unavailable", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// TokenAnswer is a new join token.
type TokenAnswer struct {
	Token   string    `json:"token"`
	Expires time.Time `json:"expires"`
}

func (s *Server) handleCreateToken(w http.ResponseWriter, r *http.Request) {
	ttl := time.Hour
	if v := r.URL.Query().Get("ttl"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			writeError(w, http.StatusBadRequest, "invalid_argument", "ttl: "+err.Error())
			return
		}
		ttl = d
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	tok, exp, err := s.CreateToken(ctx, ttl)
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, TokenAnswer{Token: tok, Expires: exp.UTC()})
	case errors.Is(err, ErrNoMetadata), errors.Is(err, ErrUnavailable), errors.Is(err, cluster.ErrOutcomeUnknown):
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "unavailable", err.Error())
	default:
		writeError(w, http.StatusBadRequest, "invalid_argument", err.Error())
	}
}

func (s *Server) handleRevokeToken(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	err := s.RevokeToken(ctx, r.PathValue("id"))
	var me *meta.Error
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, map[string]string{"revoked": r.PathValue("id")})
	case errors.As(err, &me) && me.Code == metapb.Code_CODE_UNKNOWN_TOKEN:
		writeError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.As(err, &me):
		writeError(w, http.StatusConflict, "conflict", err.Error())
	default:
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "unavailable", err.Error())
	}
}

// HashAnswer is a group's state hash on one node.
type HashAnswer struct {
	Applied uint64 `json:"applied"`
	Hash    string `json:"hash"`
}

func (s *Server) handleHash(w http.ResponseWriter, r *http.Request) {
	g, err := strconv.ParseUint(r.PathValue("group"), 10, 64)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_argument", "bad group")
		return
	}
	applied, h, err := s.node.StateHash(ids.GroupID(g))
	if err != nil {
		writeError(w, http.StatusNotFound, "not_found", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, HashAnswer{Applied: applied, Hash: hex.EncodeToString(h[:])})
}

// WriteAnswer is the answer to a successful put or delete.
type WriteAnswer struct {
	Version uint64 `json:"version"`
	VShard  uint32 `json:"vshard"`
}

// ReadAnswer is the answer to a get.
type ReadAnswer struct {
	Found   bool   `json:"found"`
	Value   string `json:"value"`
	Version uint64 `json:"version"`
}

func (s *Server) handlePut(w http.ResponseWriter, r *http.Request) {
	value, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAdminValue))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, CodeTooLarge, err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	res, err := s.KVPut(ctx, []byte(r.PathValue("key")), value, WriteOptions{})
	s.answerWrite(w, res, err)
}

func (s *Server) handleDelete(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	res, err := s.KVDelete(ctx, []byte(r.PathValue("key")), WriteOptions{})
	s.answerWrite(w, res, err)
}

func (s *Server) answerWrite(w http.ResponseWriter, res WriteResult, err error) {
	if err != nil {
		s.writeAPIError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, WriteAnswer{Version: res.Version, VShard: res.VShard})
}

func (s *Server) handleGet(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	g, err := s.KVGet(ctx, []byte(r.PathValue("key")), ReadOptions{})
	if err != nil {
		s.writeAPIError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ReadAnswer{Found: g.Found, Value: string(g.Value), Version: g.Version})
}

// writeAPIError answers a KV service error with its code (docs/api.md).
func (s *Server) writeAPIError(w http.ResponseWriter, err error) {
	ae := s.apiError(err)
	if ae.Retryable() {
		w.Header().Set("Retry-After", "1")
	}
	writeError(w, HTTPStatus(ae.Code), ae.Code, ae.Message)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]string{"code": code, "message": msg})
}

// failpointRoutes arm and disarm failpoints of the running process, as
// NODEDB_FAILPOINTS does at start: a crash test arms the next failpoint on
// live nodes without restarting them. Only the admin socket serves them
// (its user owns the process anyway); the client API does not.
type failpointRoutes struct {
	mu   sync.Mutex
	undo map[string]func()
}

func (f *failpointRoutes) enable(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 256))
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_argument", err.Error())
		return
	}
	undo, err := failpoint.Enable(name, string(b))
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_argument", err.Error())
		return
	}
	f.mu.Lock()
	if old := f.undo[name]; old != nil {
		old()
	}
	f.undo[name] = undo
	f.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]string{"failpoint": name, "action": string(b)})
}

func (f *failpointRoutes) disable(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	f.mu.Lock()
	undo := f.undo[name]
	delete(f.undo, name)
	f.mu.Unlock()
	if undo == nil {
		writeError(w, http.StatusNotFound, "not_found", "failpoint "+name+" was not armed here")
		return
	}
	undo()
	writeJSON(w, http.StatusOK, map[string]string{"failpoint": name, "action": ""})
}
