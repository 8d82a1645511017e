"""Latency of the real HTTP service under a fixed request rate, on a synthetic 1M-item model version.

What it does, in one run:

1. Synthesizes an "mf" model version (benchmarks/synthetic_version.py) with the product's own writer
   (recsys.version.write_parts, given an `MF` model holding the arrays), in the layout of
   recsys/version.py: --items item IDs x 64-dim embeddings from a Gaussian mixture (one cluster per
   500 items, centres ~ N(0, I/64), per-cluster noise --spread x U(0.5, 1.5) relative to the centre norm,
   L2-normalised), --users user embeddings from the same mixture (each user in one cluster),
   seen.npz with 10-30 (mean 20) items per user, 80 % of them from the user's own cluster, popularity
   counts with a Zipf shape. No SavedModel: an "mf" version folds a history in by least squares
   (recsys/models/embedding.py fold_in), which is the request-time path of POST /v1/recommendations.
   Builds its index with recsys.jobs.index_version and the default config (ScaNN at 1M items,
   brute force below index.brute_force_below = 50,000) and publishes it (recsys.registry.publish).
2. Baseline, same run: Engine.load(root) in this process, then Engine.recommend (random known users,
   k=10) and Engine.recommend_for_history (5-20 random items of one cluster, k=10) one call at a time;
   p50/p99 per call. The HTTP service runs exactly these calls, so HTTP p50 - engine p50 is the cost of
   the web stack (uvicorn, FastAPI, JSON).
3. Starts the service as users do, `recsys serve --root ROOT --host 127.0.0.1 --port P --workers N`
   (a subprocess; --workers 1 by default), and waits for GET /readyz.
4. Open-loop load, per endpoint and per offered rate (--rates, requests/s): requests are *scheduled* at
   fixed intervals (1/rate) for --duration seconds, whatever the responses do (no coordinated omission:
   a slow response never delays the next request). The generator is benchmarks/loadgen.py, run as a
   separate small process per rate (the standard library and numpy, no model): asyncio, raw HTTP/1.1
   keep-alive sockets, one request in flight per connection, a new connection when all are busy (up to
   --max-connections). Latency = time from writing the request to the last byte of the response;
   a request that had to open a connection or wait for one counts from its scheduled time instead.
   Reports, per rate: achieved requests/s (2xx responses / elapsed), p50 / p90 / p99 / max latency,
   errors, connections used, the server's CPU (utime + stime of the server process tree over the run:
   cores, and microseconds per answered request, so 1e6 / that is the rate one core can sustain), the
   generator's own CPU per request and "gen late", the p99 of how late the generator wrote requests
   against their schedule (large values mean the generator itself was starved and the load came in
   bursts). Endpoints: GET /v1/users/{random known user}/recommendations?k=10 and
   POST /v1/recommendations {"history": [5-20 random items of one cluster], "k": 10}. After each
   endpoint's table: the highest offered rate with p99 <= 10 ms, no errors and achieved >= 95 % of
   offered.
5. With --swap-every S: user lookups at --swap-rate for --swap-duration seconds while a thread
   publishes the version and a copy of it under another name in turn every S seconds (the service polls
   CURRENT every 0.25 s then); p50 / p90 / p99 / max, errors and the GETs resent after the server closed
   an idle connection.
6. If `wrk` is on PATH (Debian package `wrk`): a closed-loop saturation check with a cheap C client
   (wrk -t1 -c --wrk-connections, Lua scripts cycling the same request mix for both endpoints):
   the service's maximum throughput and wrk's latency percentiles at that concurrency. wrk 4 has no
   fixed-rate mode, so the open-loop table above comes from the Python generator.
7. Whether the goal holds: p99 <= 10 ms at 1,000 requests/s for user lookups (when 1000 is one of
   --rates).

The load generator shares the machine's cores with the server; its CPU use is printed so it can be
accounted for. Both are starved when other jobs run: the 1-minute load average is printed at the start,
per endpoint and at the end; on a busy machine compare "srv us/req" rather than latencies.

    .venv/bin/python benchmarks/serving_latency.py --smoke              # 50k items, 2 short rates, < 1 min
    .venv/bin/python benchmarks/serving_latency.py                      # 1M items, 250..2000 rps
    .venv/bin/python benchmarks/serving_latency.py --root /tmp/svbench --workers 2 --rates 1000,1500
        (--root keeps the version and reuses it on the next run with the same data parameters and
         index settings; building the 1M-item index takes 1-3 minutes)
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pickle
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

from loadgen import http_requests, pct, wrk_run
from synthetic_version import make_histories, make_users, prepare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# recsys, scipy and (through ScaNN) TensorFlow are imported where used (synthetic_version.prepare,
# engine_baseline, swap_under_load); the load generator (loadgen.py) is a separate, small process.

GOAL_P99_MS = 10.0
GOAL_RATE = 1000
HOST = "127.0.0.1"
LOADGEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loadgen.py")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spread", type=float, default=0.5,
                    help="within-cluster noise relative to the centre norm (larger: harder for the index)")
    ap.add_argument("--rates", default="250,500,1000,1500,2000", help="offered requests/s, comma-separated")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of load per rate")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    ap.add_argument("--endpoints", default="user,history")
    ap.add_argument("--root", default="", help="keep the version here and reuse it (default: a temp dir)")
    ap.add_argument("--baseline-calls", type=int, default=2000, help="in-process Engine calls per endpoint")
    ap.add_argument("--profile", action="store_true", help="cProfile the in-process Engine calls")
    ap.add_argument("--max-connections", type=int, default=256)
    ap.add_argument("--warm-connections", type=int, default=16)
    ap.add_argument("--wrk-connections", type=int, default=8, help="0 skips the wrk saturation check")
    ap.add_argument("--wrk-duration", type=float, default=8.0)
    ap.add_argument("--smoke", action="store_true", help="50k items, 5k users, 2 rates x 2 s")
    ap.add_argument("--json", default="", help="write all figures here")
    ap.add_argument("--swap-every", type=float, default=0.0,
                    help="also measure user lookups at --swap-rate while CURRENT alternates between two "
                         "versions every this many seconds (the service polls CURRENT every 0.25 s)")
    ap.add_argument("--swap-rate", type=float, default=500.0)
    ap.add_argument("--swap-duration", type=float, default=30.0)
    args = ap.parse_args(argv)
    if args.smoke:
        args.items, args.users, args.duration = 50_000, 5_000, 2.0
        args.rates, args.baseline_calls, args.wrk_duration = "100,300", 300, 1.0
    return args


# --------------------------------------------------------------------------------------------------
# In-process baseline
# --------------------------------------------------------------------------------------------------

def _time_calls(fn, n: int) -> dict:
    """fn(i) for 200 warm-up calls, then n timed calls one at a time."""
    for i in range(min(200, n)):
        fn(i + 10_000)
    lat = np.empty(n)
    pc = time.perf_counter
    for i in range(n):
        t = pc()
        fn(i)
        lat[i] = pc() - t
    return {"calls": n, "p50_ms": round(pct(lat, 50), 3), "p99_ms": round(pct(lat, 99), 3),
            "mean_ms": round(float(lat.mean()) * 1e3, 3)}


def _profile_calls(fn, n: int, name: str) -> None:
    prof = cProfile.Profile()
    prof.enable()
    for i in range(n):
        fn(i)
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(18)
    print(f"\ncProfile of {n} Engine calls ({name}), by own time:")
    print("\n".join(s.getvalue().splitlines()[6:30]))


def engine_baseline(root: str, users: list[str], histories: list[list[str]], n: int, profile: bool) -> dict:
    """Step 2: Engine.load(root) here, then n calls of each endpoint's Engine method, one at a time."""
    from recsys.engine import Engine
    t = time.perf_counter()
    engine = Engine.load(root)
    load_s = time.perf_counter() - t
    print(f"Engine.load: {load_s:.1f}s ({engine.index.kind} index over {engine.n_items:,} items)")
    out = {"load_s": round(load_s, 2)}
    calls = {"user": lambda i: engine.recommend(users[i % len(users)], 10),
             "history": lambda i: engine.recommend_for_history(histories[i % len(histories)], k=10)}
    for name, fn in calls.items():
        out[name] = _time_calls(fn, n)
        if profile:
            _profile_calls(fn, n, name)
    # The engine (a whole version in memory) is released with this frame, before the server loads its
    # own copy. (No `del engine` here: the calls above close over that name.)
    return out


def print_engine_baseline(base: dict, endpoints: list[str]) -> None:
    for name in endpoints:
        b = base[name]
        print(f"  Engine.{'recommend' if name == 'user' else 'recommend_for_history'}: "
              f"p50 {b['p50_ms']:.3f} ms  p99 {b['p99_ms']:.3f} ms  ({b['calls']} calls)")


# --------------------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(root: str, port: int, workers: int, timeout: float, poll_seconds: float = 10.0):
    """`recsys serve` in its own session; (process, log file name) once GET /readyz answers 200."""
    cmd = [os.path.join(os.path.dirname(sys.executable), "recsys"), "serve", "--root", root, "--host", HOST,
           "--port", str(port), "--workers", str(workers), "--poll-seconds", str(poll_seconds)]
    if not os.path.exists(cmd[0]):
        cmd = [sys.executable, "-m", "recsys.cli"] + cmd[1:]
    print("starting:", " ".join(cmd), flush=True)
    log = tempfile.NamedTemporaryFile(prefix="serving-latency-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    t = time.perf_counter()
    while time.perf_counter() - t < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; log: {log.name}\n" + open(log.name).read()[-3000:])
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    print(f"ready in {time.perf_counter() - t:.1f}s: {r.read().decode()}", flush=True)
                    return proc, log.name
        except OSError:
            pass
        time.sleep(0.25)
    stop_server(proc)
    raise SystemExit(f"server not ready after {timeout}s; log: {log.name}")


def stop_server(proc) -> None:
    """SIGTERM to the server's process group (supervisor and workers); SIGKILL after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def serving(root: str, port: int, workers: int, poll_seconds: float):
    """Step 3: the service, running while the block runs; its log is deleted once it has stopped
    (a server that does not get ready is left with its log, whose name the error gives)."""
    proc, logname = start_server(root, port, workers, timeout=300, poll_seconds=poll_seconds)
    try:
        yield proc
    finally:
        stop_server(proc)
        os.unlink(logname)


# --------------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------------

def request_file(reqdir: str, endpoint: str, users, histories, port: int) -> str:
    """The endpoint's raw requests, pickled for the load generator (written once per run)."""
    path = os.path.join(reqdir, f"{endpoint}.pickle")
    if not os.path.exists(path):
        with open(path, "wb") as fh:
            pickle.dump(http_requests(endpoint, users, histories, HOST, port), fh)
    return path


def run_rate(proc, port: int, reqfile: str, rate: float, duration: float, max_conns: int, warm_conns: int) -> dict:
    """One open-loop run of benchmarks/loadgen.py in a fresh process; its figures, with the CPU of
    the server's process tree over the run."""
    cmd = [sys.executable, LOADGEN, reqfile, "--host", HOST, "--port", str(port), "--rate", str(rate),
           "--duration", str(duration), "--max-connections", str(max_conns), "--warm-connections", str(warm_conns),
           "--server-pid", str(proc.pid)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"load generator failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return json.loads(lines[-1])


def best_rate(rows: list[dict]) -> float | None:
    """The highest offered rate with p99 <= GOAL_P99_MS, no errors and >= 95 % of it achieved."""
    good = [r["offered_rps"] for r in rows
            if r["p99_ms"] <= GOAL_P99_MS and r["errors"] == 0 and r["achieved_rps"] >= 0.95 * r["offered_rps"]]
    return max(good) if good else None


def open_loop(proc, port: int, endpoint: str, reqfile: str, rates: list[float], args) -> dict:
    """Step 4 for one endpoint: a warm-up run (not reported), then one run per rate; prints the table
    and the best rate."""
    run_rate(proc, port, reqfile, min(rates), 0.5 if args.smoke else 2.0, args.max_connections,
             args.warm_connections)
    label = ("GET /v1/users/{id}/recommendations?k=10" if endpoint == "user"
             else "POST /v1/recommendations (5-20 history items, k=10)")
    print(f"\n### {label}  (open loop, {args.duration:g} s per rate, load avg "
          f"{os.getloadavg()[0]:.2f})")
    print(f"{'offered/s':>10}{'achieved/s':>11}{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}{'max ms':>8}"
          f"{'errors':>7}{'conns':>6}{'srv cores':>10}{'srv us/req':>11}{'gen us/req':>11}{'gen late':>9}")
    rows = []
    for rate in rates:
        r = run_rate(proc, port, reqfile, rate, args.duration, args.max_connections, args.warm_connections)
        rows.append(r)
        print(f"{r['offered_rps']:>10g}{r['achieved_rps']:>11.1f}{r['p50_ms']:>8.2f}{r['p90_ms']:>8.2f}"
              f"{r['p99_ms']:>8.2f}{(r['max_ms'] or float('nan')):>8.1f}{r['errors']:>7}{r['connections']:>6}"
              f"{r['server_cores']:>10.2f}{r['server_us_per_req']:>11}{r['gen_us_per_req']:>11.0f}"
              f"{r['sched_late_p99_ms']:>9.2f}", flush=True)
    best = best_rate(rows)
    print(f"highest offered rate with p99 <= {GOAL_P99_MS:g} ms (no errors, >= 95 % achieved): "
          f"{best if best is not None else 'none'}")
    return {"rows": rows, "best_rate_p99_le_10ms": best}


def swap_under_load(root: str, version: str, proc, port: int, reqfile: str, args) -> dict:
    """Step 5: user lookups at --swap-rate while a thread publishes versions A and B in turn every
    --swap-every seconds (B is a copy of A under another name: the service loads it as a new version)."""
    import threading
    from recsys import registry, version as version_mod
    other = f"{version}-b"
    if not os.path.exists(version_mod.version_dir(root, other)):
        shutil.copytree(version_mod.version_dir(root, version), version_mod.version_dir(root, other))
    stop, swaps = threading.Event(), []

    def swapper():
        target = other
        while not stop.wait(args.swap_every):
            registry.publish(root, target, reason="serving_latency swap")
            swaps.append(time.time())
            target = version if target == other else other
    t = threading.Thread(target=swapper, daemon=True)
    t.start()
    try:
        r = run_rate(proc, port, reqfile, args.swap_rate, args.swap_duration, args.max_connections,
                     args.warm_connections)
    finally:
        stop.set()
        t.join()
        registry.publish(root, version, reason="serving_latency swap: back")
    r["swaps"] = len(swaps)
    ok = r["p99_ms"] <= GOAL_P99_MS and r["errors"] == 0 and r["achieved_rps"] >= 0.95 * args.swap_rate
    print(f"\n### swap under load: GET user lookups at {args.swap_rate:g}/s for {args.swap_duration:g} s, "
          f"CURRENT swapped {len(swaps)} times (every {args.swap_every:g} s)")
    print(f"  achieved {r['achieved_rps']:.1f}/s  p50 {r['p50_ms']:.2f} ms  p90 {r['p90_ms']:.2f} ms  "
          f"p99 {r['p99_ms']:.2f} ms  max {(r['max_ms'] or float('nan')):.1f} ms  errors {r['errors']} "
          f"(retried after the server closed an idle connection: {r.get('retried', 0)})  "
          f"-> goal (p99 <= {GOAL_P99_MS:g} ms, 0 errors): {'MET' if ok else 'NOT MET'}")
    r["goal_met"] = ok
    return r


def wrk_saturation(port: int, endpoints: list[str], users, histories, args) -> dict:
    """Step 6: wrk closed loop per endpoint (the caller checks that wrk is on PATH)."""
    print(f"\n## wrk closed loop (saturation): -t1 -c{args.wrk_connections} -d{args.wrk_duration:g}s")
    out = {}
    with tempfile.TemporaryDirectory(prefix="serving-latency-wrk-", ignore_cleanup_errors=True) as wrk_dir:
        for name in endpoints:
            r = wrk_run(HOST, port, name, users, histories, args.wrk_connections, args.wrk_duration, wrk_dir)
            if r:
                out[name] = r
                print(f"  {name:<8} {r['rps']:>8.1f} req/s  p50 {r['p50_ms']:.2f} ms  p90 {r['p90_ms']:.2f} ms  "
                      f"p99 {r['p99_ms']:.2f} ms  max {r['max_ms']:.1f} ms  errors {r['errors']}")
    return out


def goal_verdict(user_rows: list[dict], workers: int) -> bool | None:
    """Step 7: p99 <= GOAL_P99_MS, no errors and >= 95 % achieved at GOAL_RATE user lookups/s; None
    when GOAL_RATE was not among the rates."""
    at_goal = [r for r in user_rows if r["offered_rps"] == GOAL_RATE]
    if not at_goal:
        return None
    r = at_goal[0]
    ok = r["p99_ms"] <= GOAL_P99_MS and r["errors"] == 0 and r["achieved_rps"] >= 0.95 * GOAL_RATE
    print(f"\ngoal (user lookups: p99 <= {GOAL_P99_MS:g} ms at {GOAL_RATE} req/s, {os.cpu_count()} CPUs, "
          f"{workers} worker(s)): {'MET' if ok else 'NOT MET'} -- p99 {r['p99_ms']:.2f} ms, "
          f"achieved {r['achieved_rps']:.0f} req/s")
    return ok


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    args = parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r]
    endpoints = [e for e in args.endpoints.split(",") if e]
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (1 min); "
          f"python {sys.version.split()[0]}")
    result: dict = {"args": vars(args), "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}
    with contextlib.ExitStack() as cleanup:
        root = args.root
        if root:
            os.makedirs(root, exist_ok=True)
        else:
            root = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="serving-latency-",
                                                                     ignore_cleanup_errors=True))
        # 1. the version
        version, data = prepare(root, args)
        os.sync()  # the version's files are written: no disk writeback in the middle of the measurements
        users = make_users(args.users, 20_000, args.seed)
        histories = make_histories(data, 5_000, args.seed)
        del data

        # 2. in-process baseline
        print("\n## in-process engine (one call at a time, this process)")
        result["engine"] = engine_baseline(root, users, histories, args.baseline_calls, args.profile)
        print_engine_baseline(result["engine"], endpoints)

        # 3. the service
        port = free_port()
        print(f"\n## HTTP service: {args.workers} worker(s)")
        proc = cleanup.enter_context(serving(root, port, args.workers, 0.25 if args.swap_every else 10.0))
        reqdir = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="serving-latency-requests-",
                                                                 ignore_cleanup_errors=True))

        # 4. open loop, per endpoint and rate
        result["http"] = {name: open_loop(proc, port, name, request_file(reqdir, name, users, histories, port),
                                          rates, args)
                          for name in endpoints}

        # 5. hot swaps under load
        if args.swap_every:
            result["swap"] = swap_under_load(root, version, proc, port,
                                             request_file(reqdir, "user", users, histories, port), args)

        # 6. closed-loop saturation
        if args.wrk_connections and shutil.which("wrk"):
            result["wrk"] = wrk_saturation(port, endpoints, users, histories, args)
        elif args.wrk_connections:
            print("\n(wrk not found: skipping the closed-loop saturation check; apt-get install wrk)")

        # 7. the goal
        ok = goal_verdict(result["http"].get("user", {}).get("rows", []), args.workers)
        if ok is not None:
            result["goal_met"] = ok
        result["loadavg_end"] = os.getloadavg()
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
