"""Load generators for the HTTP service (benchmarks/serving_latency.py runs them): open loop and wrk.

Open loop (`OpenLoop`, and this file as a program): requests are *scheduled* at fixed intervals
(1/rate) for a duration, whatever the responses do (no coordinated omission: a slow response never
delays the next request). asyncio, raw HTTP/1.1 keep-alive sockets, one request in flight per
connection, --warm-connections opened before the clock starts and a new connection when all are busy
(up to --max-connections). Latency = time from writing the request to the last byte of the response;
a request that had to open a connection or wait for one counts from its scheduled time instead. A GET
whose idle keep-alive connection the server closed before answering (what a server does with idle
connections when it shuts down, e.g. old workers retiring after a hot swap) is resent once on another
connection, as HTTP clients do (RFC 9112 9.3.1), its latency still counted from the first send.

Run it as its own small process, so that the generator neither shares an interpreter (and a GIL) with
anything else nor carries a model: it imports the standard library and numpy only.

    python benchmarks/loadgen.py REQUESTS.pickle --port P --rate R --duration S \\
        [--host 127.0.0.1] [--max-connections 256] [--warm-connections 16] [--server-pid PID]

REQUESTS.pickle holds a list of raw HTTP/1.1 requests (bytes, `http_requests` makes them), sent in
turn. It prints one JSON line: offered_rps, sent, ok (2xx), achieved_rps (2xx / elapsed), p50_ms /
p90_ms / p99_ms / max_ms of the 2xx latencies, errors (non-2xx, connection failures and answers still
missing 10 s after the last send), retried, statuses, connections, the generator's own CPU
(gen_cpu_s, gen_us_per_req) and sched_late_p99_ms, the p99 of how late requests were written against
their schedule (large values: the generator was starved and the load came in bursts). With
--server-pid, also server_cores and server_us_per_req: utime + stime of that process and its
descendants (uvicorn --workers N forks children) over the run, per second of it and per 2xx answer.

Closed loop (`wrk_run`): when `wrk` is on PATH (Debian package `wrk`), `wrk -t1 -cN` with a Lua script
cycling the same request mix: the service's maximum throughput and wrk's latency percentiles at that
concurrency. wrk 4 has no fixed-rate mode, hence the open-loop generator above.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time

import numpy as np

HOST = "127.0.0.1"


def pct(lat_s, q) -> float:
    """The q-th percentile of latencies in seconds, in milliseconds (nan when there are none)."""
    return float(np.percentile(lat_s, q)) * 1e3 if len(lat_s) else float("nan")


def http_requests(endpoint: str, users: list[str], histories: list[list[str]], host: str,
                  port: int) -> list[bytes]:
    """Raw requests: GET /v1/users/{id}/recommendations?k=10 per user (endpoint "user"), else
    POST /v1/recommendations {"history": h, "k": 10} per history."""
    head = f"Host: {host}:{port}\r\n"
    if endpoint == "user":
        return [f"GET /v1/users/{u}/recommendations?k=10 HTTP/1.1\r\n{head}\r\n".encode() for u in users]
    out = []
    for h in histories:
        body = json.dumps({"history": h, "k": 10}).encode()
        out.append(f"POST /v1/recommendations HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return out


# --------------------------------------------------------------------------------------------------
# Open loop (asyncio, raw HTTP/1.1 keep-alive)
# --------------------------------------------------------------------------------------------------

class _Conn(asyncio.Protocol):
    def __init__(self, gen: "OpenLoop"):
        self.gen, self.transport, self.buf = gen, None, bytearray()
        self.t_start = None
        self.alive = True

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, req: bytes, t_start: float):
        self.t_start, self.req = t_start, req
        self.transport.write(req)

    def data_received(self, data):
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        i = head.find(b"content-length:")
        length = 0
        if i >= 0:
            j = head.find(b"\r\n", i)
            length = int(head[i + 15:j if j >= 0 else len(head)])
        if len(self.buf) < end + 4 + length:
            return
        status = int(head[9:12])
        del self.buf[:end + 4 + length]
        t0, self.t_start = self.t_start, None
        self.gen.done(self, status, t0)

    def connection_lost(self, exc):
        self.alive = False
        if self.t_start is not None:
            t0, self.t_start = self.t_start, None
            if not self.buf:
                # Closed by the server before any byte of the answer: what a server does with an idle
                # keep-alive connection when it shuts down (a hot swap retires the old workers). HTTP
                # clients resend an idempotent request in that case (RFC 9112 9.3.1); so does this one,
                # once, on another connection, its latency still counted from the first send.
                self.gen.retry(self, self.req, t0)
                return
            self.gen.done(self, 0, t0)


class OpenLoop:
    """One open-loop run: `requests` in turn at `rate` per second for `duration` seconds."""

    def __init__(self, host: str, port: int, requests: list[bytes], rate: float, duration: float,
                 max_conns: int, warm_conns: int):
        self.host, self.port, self.requests, self.rate, self.duration = host, port, requests, rate, duration
        self.max_conns, self.warm_conns = max_conns, warm_conns
        self.idle: list[_Conn] = []
        self.n_conns = 0
        self.waiting: collections.deque = collections.deque()
        self.lat: list[float] = []
        self.errors = 0
        self.retried = 0
        self.statuses: collections.Counter = collections.Counter()
        self.outstanding = 0
        self.t_last = 0.0
        self.late = []   # send time - scheduled time (generator health)

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        self.n_conns += 1
        _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
        return conn

    def done(self, conn: _Conn, status: int, t0: float):
        now = time.perf_counter()
        self.outstanding -= 1
        self.statuses[status] += 1
        if 200 <= status < 300:
            self.lat.append(now - t0)
            self.t_last = now
        else:
            self.errors += 1
        if not conn.alive:
            self.n_conns -= 1
            return
        if self.waiting:
            req, due = self.waiting.popleft()
            conn.send(req, due)  # it waited for a connection: latency counts from its scheduled time
        else:
            self.idle.append(conn)

    async def _send_new(self, req: bytes, due: float):
        try:
            conn = await self._connect()
        except OSError:
            self.n_conns -= 1
            self.outstanding -= 1
            self.errors += 1
            self.statuses[0] += 1
            return
        conn.send(req, due)

    def retry(self, conn: "_Conn", req: bytes, t0: float):
        self.retried += 1
        self.n_conns -= 1
        self.outstanding -= 1
        self._dispatch(req, t0, t0)   # latency from the first send

    def _dispatch(self, req: bytes, due: float, now: float):
        self.outstanding += 1
        while self.idle:
            conn = self.idle.pop()
            if conn.alive:
                self.late.append(now - due)
                conn.send(req, now)
                return
            self.n_conns -= 1
        if self.n_conns < self.max_conns:
            asyncio.ensure_future(self._send_new(req, due))
        else:
            self.waiting.append((req, due))

    async def run(self) -> dict:
        conns = await asyncio.gather(*[self._connect() for _ in range(self.warm_conns)])
        self.idle.extend(conns)
        n = int(round(self.rate * self.duration))
        interval = 1.0 / self.rate
        cpu0 = time.process_time()
        pc = time.perf_counter
        t0 = pc() + 0.01
        i = 0
        while i < n:
            now = pc()
            while i < n and t0 + i * interval <= now:
                self._dispatch(self.requests[i % len(self.requests)], t0 + i * interval, now)
                i += 1
            if i < n:
                await asyncio.sleep(max(0.0, t0 + i * interval - pc()))
        deadline = pc() + 10.0
        while self.outstanding > 0 and pc() < deadline:
            await asyncio.sleep(0.005)
        gen_cpu = time.process_time() - cpu0
        elapsed = max(self.t_last, t0 + self.duration) - t0
        timeouts = self.outstanding
        for c in self.idle:
            c.transport.close()
        lat = np.asarray(self.lat)
        late = np.asarray(self.late) if self.late else np.zeros(1)
        return {"offered_rps": self.rate, "sent": n, "ok": int(len(lat)),
                "achieved_rps": round(len(lat) / elapsed, 1),
                "p50_ms": round(pct(lat, 50), 2), "p90_ms": round(pct(lat, 90), 2),
                "p99_ms": round(pct(lat, 99), 2), "max_ms": round(float(lat.max()) * 1e3, 2) if len(lat) else None,
                "errors": int(self.errors + timeouts), "retried": self.retried,
                "statuses": {str(k): v for k, v in self.statuses.items()},
                "connections": self.n_conns, "gen_cpu_s": round(gen_cpu, 2),
                "gen_us_per_req": round(gen_cpu / max(n, 1) * 1e6, 1),
                "sched_late_p99_ms": round(float(np.percentile(late, 99)) * 1e3, 2)}


def tree_cpu(pid: int) -> float:
    """utime + stime (s) of pid and its descendants (uvicorn --workers N forks children), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    children: dict = collections.defaultdict(list)
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as fh:
                    f = fh.read().rsplit(")", 1)[1].split()
                children[int(f[1])].append(int(p))
            except OSError:
                continue
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / tick
        except OSError:
            pass
        todo.extend(children.get(p, []))
    return total


def loadgen_main(argv: list[str] | None = None) -> int:
    """One open-loop run in this (fresh, small) process; its figures as one JSON line on stdout."""
    ap = argparse.ArgumentParser(description="one open-loop run against an HTTP server (see the module docstring)")
    ap.add_argument("requests", help="pickle of a list of raw HTTP/1.1 requests (bytes), sent in turn")
    ap.add_argument("--host", default=HOST)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rate", type=float, required=True, help="offered requests/s")
    ap.add_argument("--duration", type=float, required=True, help="seconds of scheduled requests")
    ap.add_argument("--max-connections", type=int, default=256)
    ap.add_argument("--warm-connections", type=int, default=16, help="opened before the clock starts")
    ap.add_argument("--server-pid", type=int, default=0,
                    help="also report the CPU of this process and its descendants over the run")
    args = ap.parse_args(argv)
    with open(args.requests, "rb") as fh:
        reqs = pickle.load(fh)
    gc.collect()
    gc.freeze()
    c0, w0 = (tree_cpu(args.server_pid) if args.server_pid else 0.0), time.perf_counter()
    res = asyncio.run(OpenLoop(args.host, args.port, reqs, args.rate, args.duration, args.max_connections,
                               args.warm_connections).run())
    if args.server_pid:
        cpu = tree_cpu(args.server_pid) - c0
        res["server_cores"] = round(cpu / (time.perf_counter() - w0), 2)
        res["server_us_per_req"] = round(cpu / max(res["ok"], 1) * 1e6)
    print(json.dumps(res))
    return 0


# --------------------------------------------------------------------------------------------------
# wrk (closed loop, saturation)
# --------------------------------------------------------------------------------------------------

def _lua_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrk_run(host: str, port: int, endpoint: str, users, histories, conns: int, duration: float,
            workdir: str) -> dict | None:
    """`wrk -t1 -c<conns>` for `duration` s cycling the first 5000 users (endpoint "user") or histories;
    None when wrk is not on PATH or fails."""
    wrk = shutil.which("wrk")
    if not wrk:
        return None
    if endpoint == "user":
        items = ",\n".join(_lua_string(f"/v1/users/{u}/recommendations?k=10") for u in users[:5000])
        body = ("local paths = {\n" + items + "\n}\nlocal reqs = {}\n"
                "init = function(args)\n  for i, p in ipairs(paths) do reqs[i] = wrk.format('GET', p) end\nend\n")
    else:
        items = ",\n".join(_lua_string(json.dumps({"history": h, "k": 10})) for h in histories[:5000])
        body = ("local bodies = {\n" + items + "\n}\nlocal reqs = {}\n"
                "init = function(args)\n  for i, b in ipairs(bodies) do\n"
                "    reqs[i] = wrk.format('POST', '/v1/recommendations', {['Content-Type'] = 'application/json'}, b)\n"
                "  end\nend\n")
    body += ("local n = 0\nrequest = function()\n  n = n % #reqs + 1\n  return reqs[n]\nend\n"
             "done = function(summary, latency, requests)\n"
             "  io.write(string.format('JSON {\"requests\": %d, \"errors_status\": %d, \"errors_other\": %d, "
             "\"p50_us\": %d, \"p90_us\": %d, \"p99_us\": %d, \"max_us\": %d, \"duration_us\": %d}\\n', "
             "summary.requests, summary.errors.status, summary.errors.connect + summary.errors.read + "
             "summary.errors.write + summary.errors.timeout, latency:percentile(50), latency:percentile(90), "
             "latency:percentile(99), latency.max, summary.duration))\nend\n")
    script = os.path.join(workdir, f"wrk_{endpoint}.lua")
    with open(script, "w") as fh:
        fh.write(body)
    cmd = [wrk, "-t1", f"-c{conns}", f"-d{max(1, int(duration))}s", "-s", script, f"http://{host}:{port}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("JSON ")), None)
    if line is None:
        print("wrk failed:", out.stdout[-500:], out.stderr[-500:])
        return None
    r = json.loads(line[5:])
    return {"connections": conns, "rps": round(r["requests"] / (r["duration_us"] / 1e6), 1),
            "p50_ms": r["p50_us"] / 1e3, "p90_ms": r["p90_us"] / 1e3, "p99_ms": r["p99_us"] / 1e3,
            "max_ms": r["max_us"] / 1e3, "errors": r["errors_status"] + r["errors_other"]}


if __name__ == "__main__":
    sys.exit(loadgen_main())
