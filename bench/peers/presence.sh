#!/usr/bin/env bash
# What relaying presence costs: Concord beside its peers, under one load generator (loopback).
#
#   bash bench/peers/presence.sh [seconds per run, default 20] [runs per cell, default 2]
#
# 500 clients that send nothing but their presence (JSON) or awareness (y-websocket,
# Hocuspocus), once a second each, with a name, a color and a cursor, in 1 room and in 5 rooms
# of 100. Each server runs pinned to CPU 0 and concord-load to CPU 1 (taskset), one at a time;
# the figure is the server's CPU time (utime + stime from /proc/<pid>/stat) over the fixed
# window after all clients connected, and its ratio to each peer's:
#   - Concord (SQLite) over JSON, y-websocket and Hocuspocus (presence coalesced per 50 ms);
#   - @y/websocket-server 0.1.1 (y-websocket) and Hocuspocus 4.7 (in memory), as installed by
#     bench/peers/run.sh's package.json (npm install here, idempotent).
# One JSON line per run goes to bench/peers/results/presence-<date>.jsonl; a Markdown table to
# stdout (what docs/benchmarks.md quotes). Only the PIDs started here are killed.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-20}; runs=${2:-2}
source bench/peers/common.sh
cargo build --release --quiet -p concord-server --bin concord --bin concord-load
mkdir -p "$peers/results"
out=$peers/results/presence-$(date -u +%Y%m%dT%H%M%SZ).jsonl

scenarios=("500x1 500 1" "500x5 500 5")
targets=(
  "concord:json" "concord:y-websocket" "concord:hocuspocus"
  "y-websocket-server:y-websocket" "hocuspocus:hocuspocus"
)
echo "== $(date -u +%FT%TZ), $(nproc) cores, ${secs}s per run, $runs runs per cell -> $out"
for scenario in "${scenarios[@]}"; do
  read -r sname clients rooms <<<"$scenario"
  for target in "${targets[@]}"; do
    server=${target%%:*}; protocol=${target##*:}
    for run in $(seq "$runs"); do
      port=$(free_port)
      start_server "$server" "$port"
      peer=(); [ "$server" != concord ] && peer=(--peer)
      line=$("${pin_load[@]}" "$bin/concord-load" --url "ws://127.0.0.1:$port" --server-pid "$pid" \
        --clients "$clients" --rooms "$rooms" --rate 0 --presence 1 --secs "$secs" \
        --protocol "$protocol" --prefix "presence-$run" --json "${peer[@]}" || true)
      stop_server
      if [ -z "$line" ]; then echo "run failed: $server $protocol $sname" >&2; continue; fi
      echo "{\"scenario\":\"$sname\",\"server\":\"$server\",\"run\":$run,\"load\":$line}" | tee -a "$out" | cut -c1-160
    done
  done
done
python3 - "$out" <<'PY'
import json, sys
from collections import defaultdict
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cpu = defaultdict(list)
info = {}
for r in rows:
    l = r["load"]
    key = (r["scenario"], r["server"], l["protocol"])
    cpu[key].append(l["server_cpu_ms"] / l["secs"] / 10)  # % of one core
    info.setdefault(key, []).append(l)
for scenario in sorted({k[0] for k in cpu}):
    print(f"\n{scenario}: server CPU, % of one core (range over runs); ratio = Concord / peer (median)")
    print("| server | protocol | CPU % of a core | presence sent | messages received | entries received |")
    print("|---|---|---:|---:|---:|---:|")
    med = {}
    for (s, server, proto), vs in sorted(cpu.items()):
        if s != scenario:
            continue
        vs = sorted(vs); med[(server, proto)] = vs[len(vs) // 2]
        ls = info[(s, server, proto)]
        rng = f"{vs[0]:.1f}" if vs[0] == vs[-1] else f"{vs[0]:.1f}-{vs[-1]:.1f}"
        print(f"| {server} | {proto} | {rng} | {ls[0]['presence_sent']:,} | {ls[0]['presence_received']:,} | {ls[0]['presence_entries']:,} |")
    peers = {k: v for k, v in med.items() if k[0] != "concord"}
    for (server, proto), v in sorted(med.items()):
        if server != "concord":
            continue
        ratios = ", ".join(f"{v / p:.2f}x {ps} ({pp})" for (ps, pp), p in sorted(peers.items()) if p > 0)
        print(f"- Concord {proto}: {ratios}")
PY
