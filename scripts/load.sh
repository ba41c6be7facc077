#!/usr/bin/env bash
# Load run on this machine (loopback only): starts concord instances, runs concord-load against
# them, stops them. Usage:
#   [PROTOCOL=json|y-websocket|hocuspocus] scripts/load.sh sqlite|postgres|redis [clients] [rooms] [rate per client] [seconds]
# `redis` runs two instances on the local Postgres and Redis. Results go to stdout. All clients
# come from 127.0.0.1, so the per-IP connection limit is lifted for the run.
set -euo pipefail
cd "$(dirname "$0")/.."
protocol=${PROTOCOL:-json}; mode=${1:-sqlite}; clients=${2:-1000}; rooms=${3:-100}; rate=${4:-10}; secs=${5:-20}
bin=${CONCORD_TARGET:-target}/release
cargo build --release --quiet -p concord-server --bin concord --bin concord-load

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start() { # start <port> [env...]
  local port=$1; shift
  env HOST=127.0.0.1 PORT="$port" RUST_LOG=warn IP_CONNECT_BURST=1000000 IP_CONNECT_PER_SEC=1000000 "$@" "$bin/concord" >"$work/server-$port.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.1; done
  echo "server on $port did not start" >&2; cat "$work/server-$port.log" >&2; exit 1
}

urls=(); pidargs=()
case "$mode" in
  sqlite)
    p=$(free_port); start "$p" DATABASE_URL="sqlite://$work/load.db"; urls+=(--url "ws://127.0.0.1:$p") ;;
  postgres)
    p=$(free_port); start "$p" DATABASE_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432/test}"; urls+=(--url "ws://127.0.0.1:$p") ;;
  redis)
    for _ in 1 2; do
      p=$(free_port); start "$p" DATABASE_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432/test}" REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
      urls+=(--url "ws://127.0.0.1:$p")
    done ;;
  *) echo "usage: $0 sqlite|postgres|redis [clients] [rooms] [rate] [secs]" >&2; exit 2 ;;
esac
for p in "${pids[@]}"; do pidargs+=(--server-pid "$p"); done
echo "== $mode, $protocol: $clients clients, $rooms rooms, $rate edits/s per client, ${secs}s ($(nproc) cores, $(date -u +%FT%TZ))"
"$bin/concord-load" "${urls[@]}" "${pidargs[@]}" --clients "$clients" --rooms "$rooms" --rate "$rate" --secs "$secs" --protocol "$protocol" --prefix "load-$mode-$protocol-$$"
