#!/usr/bin/env bash
# Builds the two servers the comparison runs into DIR (default: bin/ beside
# this script):
#   DIR/etcd            etcd v3.7.3, built from the Go module proxy
#   DIR/nodedb-cluster  this repository's binary
# A binary that already exists is not rebuilt (delete it to rebuild;
# FORCE=1 rebuilds both).
#
# `go install go.etcd.io/etcd/server/v3@v3.7.3` is refused because that
# module's go.mod has replace directives, so the etcd server is built from a
# throwaway module that requires it.
set -euo pipefail

ETCD_VERSION=${ETCD_VERSION:-v3.7.3}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
dir=${1:-$here/bin}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

if [[ "${FORCE:-}" == 1 ]]; then
	rm -f "$dir/etcd" "$dir/nodedb-cluster"
fi

if [[ ! -x "$dir/etcd" ]]; then
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	echo "building etcd $ETCD_VERSION in $tmp" >&2
	(
		cd "$tmp"
		cat >go.mod <<MOD
module etcdbuild

go 1.26
MOD
		cat >tools.go <<'SRC'
//go:build tools

package etcdbuild

import _ "go.etcd.io/etcd/server/v3"
SRC
		go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
		go mod tidy
		go build -trimpath -o "$dir/etcd" go.etcd.io/etcd/server/v3
	)
	"$dir/etcd" --version >&2
else
	echo "etcd: $dir/etcd exists, not rebuilt" >&2
fi

if [[ ! -x "$dir/nodedb-cluster" ]]; then
	echo "building nodedb-cluster" >&2
	(cd "$root" && go build -o "$dir/nodedb-cluster" ./cmd/nodedb-cluster)
else
	echo "nodedb-cluster: $dir/nodedb-cluster exists, not rebuilt" >&2
fi
