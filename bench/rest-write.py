"""What one REST write costs in a large room: median and p99 latency, server CPU per request.

    python3 bench/rest-write.py <concord binary> [writes, default 400] [characters, default 100000]

Starts the binary on a free loopback port with a fresh SQLite store (server pinned to CPU 0,
this client to CPU 1 where there are two), fills room `bench` with `characters` characters
through `POST /api/rooms/bench/edits`, then sends `writes` one-character edits one after the
other, each answered once durable. Server CPU is its utime + stime from /proc over the timed
writes, divided by their number. Run it for two binaries in the same session to compare them.
"""

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

binary = sys.argv[1]
writes = int(sys.argv[2]) if len(sys.argv) > 2 else 400
chars = int(sys.argv[3]) if len(sys.argv) > 3 else 100_000

if (os.cpu_count() or 1) >= 2:
    os.sched_setaffinity(0, {1})
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
port = sock.getsockname()[1]
sock.close()
work = tempfile.mkdtemp()
env = dict(os.environ, HOST="127.0.0.1", PORT=str(port), RUST_LOG="warn",
           DATABASE_URL=f"sqlite://{work}/bench.db", ROOM_IDLE_SECS="3600")
pin = ["taskset", "-c", "0"] if (os.cpu_count() or 1) >= 2 else []
server = subprocess.Popen(pin + [binary], env=env, stdout=subprocess.DEVNULL)
ticks = os.sysconf("SC_CLK_TCK")


def cpu_seconds():
    with open(f"/proc/{server.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks


try:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def edit(index, text, base):
        body = json.dumps({"base_seq": base, "edits": [{"index": index, "insert": text}]})
        conn.request("POST", "/api/rooms/bench/edits", body, {"Content-Type": "application/json"})
        reply = conn.getresponse()
        data = reply.read()
        if reply.status != 200:
            raise SystemExit(f"write failed: {reply.status} {data[:200]!r}")
        return json.loads(data)["seq"]

    seq, size = 0, 0
    while size < chars:
        n = min(8_000, chars - size)
        seq = edit(size, "abcdefghij" * (n // 10), seq)
        size += n // 10 * 10
    for i in range(20):  # warm up
        seq = edit(i * 97 % size, "w", seq)
    times = []
    before = cpu_seconds()
    for i in range(writes):
        start = time.perf_counter()
        seq = edit(i * 7919 % size, "x", seq)
        times.append(time.perf_counter() - start)
    cpu = cpu_seconds() - before
    times.sort()
    print(json.dumps({
        "binary": binary, "characters": size, "writes": writes,
        "median_ms": round(statistics.median(times) * 1000, 3),
        "p99_ms": round(times[int(len(times) * 0.99) - 1] * 1000, 3),
        "server_cpu_ms_per_write": round(cpu / writes * 1000, 3),
    }))
finally:
    server.terminate()
    server.wait()
    subprocess.run(["rm", "-rf", work])
