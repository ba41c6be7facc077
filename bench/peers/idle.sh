#!/usr/bin/env bash
# What an idle connection costs in memory: Concord beside its peers (loopback).
#
#   bash bench/peers/idle.sh [clients, default 5000] [rooms, default 500] [seconds, default 10] [runs, default 2]
#
# The clients join their rooms (empty documents), then send nothing. The server's RSS is read
# from /proc before they connect and at the end of the window, all still connected; the figure
# is (end - before) / clients, rooms included, and its ratio to each peer's. Each server runs
# pinned to CPU 0 and concord-load to CPU 1. Servers: Concord (SQLite) over JSON, y-websocket
# and Hocuspocus; @y/websocket-server 0.1.1 and Hocuspocus 4.7 (in memory), installed by npm
# from bench/peers/package.json. One JSON line per run goes to
# bench/peers/results/idle-<date>.jsonl, a Markdown table to stdout. A run where any client
# failed to join is reported and left out of the table. Only the PIDs started here are killed.
set -euo pipefail
cd "$(dirname "$0")/../.."
clients=${1:-5000}; rooms=${2:-500}; secs=${3:-10}; runs=${4:-2}
source bench/peers/common.sh
cargo build --release --quiet -p concord-server --bin concord --bin concord-load
mkdir -p "$peers/results"
out=$peers/results/idle-$(date -u +%Y%m%dT%H%M%SZ).jsonl

# TARGETS="concord:json y-websocket-server:y-websocket" runs only those.
read -r -a targets <<<"${TARGETS:-concord:json concord:y-websocket concord:hocuspocus y-websocket-server:y-websocket hocuspocus:hocuspocus}"
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
echo "== $(date -u +%FT%TZ), $(nproc) cores, $clients clients over $rooms rooms, ${secs}s, $runs runs -> $out"
for target in "${targets[@]}"; do
  server=${target%%:*}; protocol=${target##*:}
  for run in $(seq "$runs"); do
    port=$(free_port)
    start_server "$server" "$port"
    before=$(rss_kib "$pid")
    peer=(); [ "$server" != concord ] && peer=(--peer)
    line=$("${pin_load[@]}" "$bin/concord-load" --url "ws://127.0.0.1:$port" --server-pid "$pid" \
      --clients "$clients" --rooms "$rooms" --rate 0 --secs "$secs" \
      --protocol "$protocol" --prefix "idle-$run" --json "${peer[@]}" 2>/dev/null || true)
    stop_server
    if [ -z "$line" ]; then echo "run failed: $server $protocol" >&2; continue; fi
    echo "{\"server\":\"$server\",\"run\":$run,\"rss_before_kib\":$before,\"load\":$line}" | tee -a "$out" | cut -c1-160
  done
done
python3 - "$out" <<'PY'
import json, sys
from collections import defaultdict
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
per = defaultdict(list)
for r in rows:
    l = r["load"]
    key = (r["server"], l["protocol"])
    if l["errors"]:
        print(f"(left out: {key} run {r['run']}: {l['errors']} clients failed to join)")
        continue
    per[key].append(((l["server_end_rss_kib"][0] - r["rss_before_kib"]) * 1024 / l["clients"] / 1000,
                     r["rss_before_kib"] / 1024, l["server_end_rss_kib"][0] / 1024))
print(f"\n| server | protocol | RSS before | RSS with the clients | KB per idle connection |")
print("|---|---|---:|---:|---:|")
med = {}
for (server, proto), vs in sorted(per.items()):
    vs.sort(); med[(server, proto)] = vs[len(vs) // 2][0]
    kb = f"{vs[0][0]:.1f}" if len(vs) == 1 else f"{vs[0][0]:.1f}-{vs[-1][0]:.1f}"
    print(f"| {server} | {proto} | {vs[0][1]:.1f} MiB | {vs[-1][2]:.1f} MiB | {kb} |")
peers = {k: v for k, v in med.items() if k[0] != "concord"}
for (server, proto), v in sorted(med.items()):
    if server == "concord" and peers:
        print(f"- Concord {proto}: " + ", ".join(f"{v / p:.2f}x {ps} ({pp})" for (ps, pp), p in sorted(peers.items()) if p > 0))
PY
