#!/bin/sh
# Regenerates kv/v1/kv.pb.go and kv/v1/kvv1connect/kv.connect.go from
# kv/v1/kv.proto. CI does not run this: the generated files are committed.
# Needs only Go: buf, protoc-gen-go and protoc-gen-connect-go are built from
# source at pinned versions (no protoc). The buf module root is this
# directory (api/buf.yaml, api/buf.gen.yaml).
set -eu
cd "$(dirname "$0")"
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
GOBIN=$bin go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
GOBIN=$bin go install connectrpc.com/connect/cmd/protoc-gen-connect-go@v1.21.1
PATH=$bin:$PATH go run github.com/bufbuild/buf/cmd/buf@v1.75.0 generate
