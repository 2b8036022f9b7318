#!/bin/sh
# Regenerates meta.pb.go from meta.proto. CI does not run this: the
# generated file is committed. Needs only Go: buf and protoc-gen-go are built
# from source at pinned versions (no protoc). The buf module root is the
# parent directory (internal/meta/buf.yaml, buf.gen.yaml).
set -eu
cd "$(dirname "$0")/.."
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
GOBIN=$bin go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PATH=$bin:$PATH go run github.com/bufbuild/buf/cmd/buf@v1.75.0 generate
