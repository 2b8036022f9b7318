package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// AdminClient talks to a node's admin socket.
type AdminClient struct {
	c *http.Client
}

// AdminError is an error answer of the admin endpoint.
type AdminError struct {
	Status  int
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *AdminError) Error() string {
	return fmt.Sprintf("admin: %d %s: %s", e.Status, e.Code, e.Message)
}

// NewAdminClient returns a client of the node whose data dir is dir.
func NewAdminClient(dir string) *AdminClient {
	return &AdminClient{c: &http.Client{Transport: AdminTransport(dir)}}
}

// AdminTransport is an HTTP transport that reaches the admin socket of the
// node whose data dir is dir, whatever host a request's URL names.
func AdminTransport(dir string) http.RoundTripper {
	sock := AdminSocket(dir)
	return &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true,
	}
}

func (a *AdminClient) do(ctx context.Context, method, path string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://admin"+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := a.c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		e := &AdminError{Status: resp.StatusCode}
		if json.Unmarshal(b, e) != nil {
			e.Message = string(b)
		}
		return e
	}
	return json.Unmarshal(b, out)
}

// Status returns the node's status.
func (a *AdminClient) Status(ctx context.Context) (Status, error) {
	var st Status
	return st, a.do(ctx, http.MethodGet, "/v1/status", nil, &st)
}

// Cluster returns the applied metadata state as the node has it.
func (a *AdminClient) Cluster(ctx context.Context) (ClusterStatus, error) {
	var st ClusterStatus
	return st, a.do(ctx, http.MethodGet, "/v1/cluster", nil, &st)
}

// CreateToken creates a join token valid for ttl.
func (a *AdminClient) CreateToken(ctx context.Context, ttl time.Duration) (TokenAnswer, error) {
	var t TokenAnswer
	return t, a.do(ctx, http.MethodPost, "/v1/tokens?ttl="+url.QueryEscape(ttl.String()), nil, &t)
}

// RevokeToken revokes the join token with this ID.
func (a *AdminClient) RevokeToken(ctx context.Context, id string) error {
	var out map[string]string
	return a.do(ctx, http.MethodDelete, "/v1/tokens/"+url.PathEscape(id), nil, &out)
}

// Put writes key.
func (a *AdminClient) Put(ctx context.Context, key string, value []byte) (WriteAnswer, error) {
	var w WriteAnswer
	return w, a.do(ctx, http.MethodPut, "/v1/kv/"+url.PathEscape(key), value, &w)
}

// Get reads key linearizably.
func (a *AdminClient) Get(ctx context.Context, key string) (ReadAnswer, error) {
	var r ReadAnswer
	return r, a.do(ctx, http.MethodGet, "/v1/kv/"+url.PathEscape(key), nil, &r)
}

// Delete deletes key.
func (a *AdminClient) Delete(ctx context.Context, key string) (WriteAnswer, error) {
	var w WriteAnswer
	return w, a.do(ctx, http.MethodDelete, "/v1/kv/"+url.PathEscape(key), nil, &w)
}

// Hash returns group g's applied index and state hash on the node.
func (a *AdminClient) Hash(ctx context.Context, g uint64) (HashAnswer, error) {
	var h HashAnswer
	return h, a.do(ctx, http.MethodGet, "/v1/hash/"+strconv.FormatUint(g, 10), nil, &h)
}

// ArmFailpoint arms failpoint name with action in the node's process.
func (a *AdminClient) ArmFailpoint(ctx context.Context, name, action string) error {
	var out map[string]string
	return a.do(ctx, http.MethodPut, "/v1/failpoints/"+url.PathEscape(name), []byte(action), &out)
}

// DisarmFailpoint undoes ArmFailpoint.
func (a *AdminClient) DisarmFailpoint(ctx context.Context, name string) error {
	var out map[string]string
	return a.do(ctx, http.MethodDelete, "/v1/failpoints/"+url.PathEscape(name), nil, &out)
}

// Migrations lists the migrations in flight.
func (a *AdminClient) Migrations(ctx context.Context) ([]MigrationInfo, error) {
	var out MigrationList
	err := a.do(ctx, http.MethodGet, "/v1/admin/migrations", nil, &out)
	return out.Migrations, err
}

// MoveReplica starts a replica move.
func (a *AdminClient) MoveReplica(ctx context.Context, req MoveRequest) (MigrationInfo, error) {
	var out MigrationInfo
	b, err := json.Marshal(req)
	if err != nil {
		return out, err
	}
	return out, a.do(ctx, http.MethodPost, "/v1/admin/replica-moves", b, &out)
}

// AbortMigration aborts a replica move (or deletes a quarantined row).
func (a *AdminClient) AbortMigration(ctx context.Context, id string) (MigrationInfo, error) {
	var out MigrationInfo
	return out, a.do(ctx, http.MethodPost, "/v1/admin/migrations/"+url.PathEscape(id)+"/abort", nil, &out)
}
