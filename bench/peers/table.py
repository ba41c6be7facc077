"""Summarises a bench/peers/run.sh results file as Markdown: per scenario, each server and
protocol (the range over its runs), then each Concord figure as a ratio to the best peer's
(lower is better; below 1.0 Concord wins)."""
import json
import sys
from collections import defaultdict

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
cells = defaultdict(list)
for r in rows:
    cells[(r["scenario"], r["server"], r["load"]["protocol"])].append(r["load"])

FIGURES = [
    ("fan-out p50 ms", lambda l: l["fanout_p50_us"] / 1000),
    ("fan-out p99 ms", lambda l: l["fanout_p99_us"] / 1000),
    ("ack p99 ms", lambda l: l["ack_p99_us"] / 1000 if l["acked"] else None),
    ("CPU us/edit", lambda l: l["server_cpu_ms"] * 1000 / max(l["sent"], 1)),
    ("peak RSS MiB", lambda l: sum(l["server_peak_rss_kib"]) / 1024),
]


def values(loads, f):
    return [v for v in (f(l) for l in loads) if v is not None]


def fmt_range(vs):
    if not vs:
        return "-"
    lo, hi = min(vs), max(vs)
    return f"{lo:.2f}" if abs(hi - lo) < 0.005 else f"{lo:.2f}-{hi:.2f}"


for scenario in dict.fromkeys(r["scenario"] for r in rows):
    keys = [k for k in cells if k[0] == scenario]
    print(f"\n### {scenario} (clients x rooms @ edits/s per client)\n")
    print("| server (protocol) | " + " | ".join(n for n, _ in FIGURES) + " | deliveries |")
    print("|---|" + "---:|" * (len(FIGURES) + 1))
    for _, server, protocol in keys:
        loads = cells[(scenario, server, protocol)]
        got = sum(l["deliveries"] for l in loads)
        want = sum(l["deliveries_expected"] for l in loads)
        figs = " | ".join(fmt_range(values(loads, f)) for _, f in FIGURES)
        print(f"| {server} ({protocol}) | {figs} | {got}/{want} |")
    peers = [k for k in keys if not k[1].startswith("concord")]
    if not peers:
        continue
    print(f"\nConcord / best peer (median of runs; < 1.0 is better):\n")
    print("| Concord (protocol) | " + " | ".join(n for n, _ in FIGURES) + " |")
    print("|---|" + "---:|" * len(FIGURES))
    for _, server, protocol in keys:
        if not server.startswith("concord"):
            continue
        ratios = []
        for _, f in FIGURES:
            mine = sorted(values(cells[(scenario, server, protocol)], f))
            best = [sorted(values(cells[p], f)) for p in peers]
            best = [b[len(b) // 2] for b in best if b]
            if not mine or not best or min(best) == 0:
                ratios.append("-")
                continue
            ratios.append(f"{mine[len(mine) // 2] / min(best):.2f}")
        print(f"| {server} ({protocol}) | " + " | ".join(ratios) + " |")
