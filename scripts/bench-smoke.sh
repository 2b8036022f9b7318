#!/usr/bin/env bash
# Bench smoke: build the binary, start a 3-node dev cluster on free ports
# (QUIC and API; it cannot collide with a dev cluster already running on the
# default ports), run a mixed workload at a fixed 200 ops/s for 5 s with
# `bench --check`, and stop the cluster with Ctrl-C (SIGINT). It fails if the
# cluster does not come up within 60 s, if any request fails, if the achieved
# rate is below 90% of 200 ops/s, or if dev does not stop cleanly. A
# correctness smoke, not a timing assertion: 200 ops/s is far below what the
# cluster sustains on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."

tmp="$(mktemp -d)"
dev_pid=""
cleanup() {
  if [ -n "$dev_pid" ] && kill -0 "$dev_pid" 2>/dev/null; then
    kill -KILL "$dev_pid" 2>/dev/null || true
    wait "$dev_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
  echo "bench smoke: $*" >&2
  echo "--- dev output:" >&2
  cat "$tmp/dev.log" >&2 || true
  exit 1
}

SECONDS=0
go build -o "$tmp/nodedb-cluster" ./cmd/nodedb-cluster
echo "bench smoke: built in ${SECONDS}s"
"$tmp/nodedb-cluster" dev --dir "$tmp/dev" --port-base 0 >"$tmp/dev.log" 2>&1 &
dev_pid=$!

# Ready when dev has written the API endpoints and says it is running (every
# group has its voters and a leader, and its self-check passed).
for ((i = 0; ; i++)); do
  kill -0 "$dev_pid" 2>/dev/null || fail "dev exited before it was ready"
  if [ -s "$tmp/dev/endpoints" ] && grep -q '^Running;' "$tmp/dev.log"; then
    break
  fi
  [ "$i" -lt 120 ] || fail "dev not ready after 60 s"
  sleep 0.5
done
endpoints="$(paste -sd, "$tmp/dev/endpoints")"
echo "bench smoke: dev cluster ready at ${SECONDS}s on $endpoints"

"$tmp/nodedb-cluster" status --endpoints "$endpoints" >/dev/null || fail "status failed"
"$tmp/nodedb-cluster" bench --endpoints "$endpoints" --workload mixed --keys 1000 \
  --rate 200 --clients 8 --duration 5s --warmup 1s --check || fail "bench --check failed"

kill -INT "$dev_pid"
for ((i = 0; ; i++)); do
  kill -0 "$dev_pid" 2>/dev/null || break
  [ "$i" -lt 60 ] || fail "dev did not stop within 30 s of SIGINT"
  sleep 0.5
done
status=0
wait "$dev_pid" || status=$?
dev_pid=""
[ "$status" -eq 0 ] || fail "dev exited with status $status after SIGINT"
echo "bench smoke: ok in ${SECONDS}s"
