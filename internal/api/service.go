// Package api serves the client API of one node on its --api address: REST
// for curl and scripts (docs/api.md) and the gRPC/Connect service
// nodedb.kv.v1.KV, both over the same typed key-value service.
package api

import (
	"context"
	"net/http"

	"github.com/nodedb/nodedb-cluster/internal/kv"
	"github.com/nodedb/nodedb-cluster/internal/server"
)

// Service is what the API serves: *server.Server implements it. Every error
// it returns is a *server.APIError.
type Service interface {
	KVPut(ctx context.Context, key, value []byte, o server.WriteOptions) (server.WriteResult, error)
	KVDelete(ctx context.Context, key []byte, o server.WriteOptions) (server.WriteResult, error)
	KVBatch(ctx context.Context, ops []kv.Op, o server.WriteOptions) ([]server.WriteResult, error)
	KVGet(ctx context.Context, key []byte, o server.ReadOptions) (server.GetResult, error)
	KVScan(ctx context.Context, prefix []byte, cursor string, limit int, o server.ReadOptions) (server.ScanPage, error)
	ClusterStatus() (server.ClusterStatus, error)
	// Ready reports whether the node serves: nil, or why not.
	Ready() error
	Limits() kv.Limits
	// AdminHandler serves the operator routes under /v1/admin/.
	AdminHandler() http.Handler
}

var _ Service = (*server.Server)(nil)
