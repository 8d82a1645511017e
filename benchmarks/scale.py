"""The whole nightly on a generated shop log of a given size: what each step costs.

    .venv/bin/python benchmarks/scale.py --events 47000 --users 3000 --items 2400          # a minute
    .venv/bin/python benchmarks/scale.py --events 10000000 --users 1000000 --items 200000 --json scale-10m.json
    .venv/bin/python benchmarks/scale.py --events 2000000 --users 200000 --items 50000 --next-day 3   # + a warm night
    .venv/bin/python benchmarks/scale.py --events 10000000 --users 1000000 --items 200000 --warm-only --next-day 3
        # only the warm night, on the artifacts an earlier run of that size left in its --work directory

1. Generates the log with `recsys.data.synthetic.shop_log` (users with lognormal activity, one or two
   preferred categories and brand affinities, Zipf item popularity within categories, sessions of
   views, carts and purchases; a purchase is drawn from the user's taste, not from the session's views,
   so the held-out sessions are not already in the history) and a catalog CSV (category, brand, price,
   tags, description), in chunks of users that share the item popularity, so generation memory stays
   flat. The sessions per user are set so the log before the cut has about `--events` events.
2. `recsys init` on those files, as a new team would (the config is used as written).
3. `recsys nightly --json` in a child process: build_dataset, train (every model of nightly.models),
   evaluate, gate, index, batch_recommendations, publish, each step in a process of its own
   (`nightly.isolate_steps`). The nightly records each step's wall seconds, CPU seconds and its own
   peak resident memory (`recsys.progress.Meter`, in the step's process); this script adds the whole
   run's peak RSS (wait4: the largest of the nightly's processes), rows/s of the build, users/s of
   evaluation and batch, and per model its training time, share of the run and examples/s.
   The quality printed is the protocol `recsys init` writes (`last_session`: each user's last session
   held out, its purchases the targets).
4. With `--next-day D`: the next night, as a team's nightly sees it. The same users' log `D` days
   longer (the generator's draws do not depend on the cut: the first night's events are a prefix of
   the second's; 3 days are ~3% more events) goes through `recsys nightly` again on the same artifact
   root, so the dataset keeps yesterday's vocabulary and each model trains `model.warm_start_epochs`
   from yesterday's version (what `recsys init` writes). Printed: the warm night's steps as above and,
   per model, test recall@20 of both nights (each night's own test split: the users' last sessions
   move with the log) and the warm night's training time against the cold one's.

The reference for "how fast should this be" is the stage itself at another size (rates should stay
flat as the log grows) and the probe figures in docs/RESULTS.md. Say the machine's load beside any
figure you quote: `uptime` is printed first.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recsys.data.synthetic import shop_catalog, shop_log  # noqa: E402

RECSYS = os.path.join(os.path.dirname(sys.executable), "recsys")
STAGES = ("build_dataset", "train", "evaluate", "gate", "index", "batch_recommendations", "publish")
GENERATED = "generated.json"   # what `generate` wrote in a --work folder (sizes, seed's days, seconds)


# events before the cut per user and session: 4 views, 0.8 carts, 0.4 purchases, 85% of the days
EVENTS_PER_SESSION = 5.2 * 0.85


def generate(out: str, n_events: int, n_users: int, n_items: int, seed: int, chunk_users: int = 100_000,
             next_days: int = 0, next_only: bool = False) -> dict:
    """events.parquet (the log before the cut) and catalog.csv under `out`, and with `next_days`
    events-next.parquet (the same log `next_days` days longer); returns what was written.
    `next_only`: write only events-next.parquet, beside the files an earlier call wrote with the same
    sizes and seed (the draws do not depend on the cut, so its prefix is that events.parquet)."""
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    catalog = shop_catalog(n_items, seed=seed)
    if not next_only:
        catalog.to_csv(os.path.join(out, "catalog.csv"), index=False)
    path = os.path.join(out, "events.parquet")
    sessions = max(n_events / n_users / EVENTS_PER_SESSION, 1.0)
    writers, written = {}, {"events": 0, "next": 0}

    def write(name: str, frame) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if name not in writers:
            file = "events.parquet" if name == "events" else "events-next.parquet"
            writers[name] = pq.ParquetWriter(os.path.join(out, file), table.schema, compression="zstd")
        writers[name].write_table(table, row_group_size=1_000_000)
        written[name] += len(frame)

    for i, first in enumerate(range(0, n_users, chunk_users)):
        users = min(chunk_users, n_users - first)
        log = shop_log(users, catalog, seed=seed, users_seed=i, first_user=first, sessions_per_user_mean=sessions)
        if next_only:
            written["events"] += len(log.events)
        else:
            write("events", log.events)
        if next_days:
            longer = log.log["timestamp"] < log.cut + pd.Timedelta(days=next_days)
            write("next", log.log[longer.to_numpy()].reset_index(drop=True))
    for w in writers.values():
        w.close()
    return {"events": written["events"], "next_events": written["next"], "next_days": next_days,
            "users": n_users, "items": n_items, "seconds": round(time.perf_counter() - t0, 1),
            "bytes": os.path.getsize(path), "sessions_per_user": round(sessions, 2)}


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def generate_apart(*args, **kwargs) -> dict:
    """`generate` in a spawned process. This one stays small: a child's ru_maxrss starts from its
    parent's high-water mark (kept across fork and exec), so generating here (8 GB at 10M with the next
    day) was reported as the nightly's peak."""
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(generate, args, kwargs)


def run_child(argv: list[str], log_path: str) -> tuple[int, float, float, str]:
    """Run a command; returns (exit code, wall seconds, peak RSS MB of it and its children, stdout)."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss / 1024, stdout


def night(work: str, config: str, log_name: str, resume: bool = False) -> dict | None:
    """`recsys nightly --json` on `config` in a child process; prints and returns its figures (None:
    it failed, its log's tail printed). `resume`: finish the last unfinished run (`--resume`); its
    figures then cover the steps this process ran and, from the run's state, the ones before."""
    code, wall, peak, stdout = run_child([RECSYS, "nightly", "--config", config, "--json"] + (["--resume"] if resume else []),
                                         os.path.join(work, log_name))
    if code:
        print(f"nightly failed ({code}); its log: {os.path.join(work, log_name)}")
        with open(os.path.join(work, log_name)) as f:
            print("\n".join(f.read().splitlines()[-20:]))
        return None
    summary = json.loads(stdout)
    stages = {k: dict(v) for k, v in summary.get("stages", {}).items()}
    if resume:   # this process ran only the rest: the run's wall is its steps' (the run's state keeps them all)
        wall = sum(v["seconds"] for k, v in stages.items() if k in STAGES)
    # the nightly restarts its high-water mark per step (Meter), which wait4's figure then reflects:
    # the run's peak is the largest of the steps' and the child's
    peak = max([peak] + [s["peak_rss_mb"] for s in stages.values()])
    counts = summary.get("counts", {})
    for stage, key in (("evaluate", "evaluated_users"), ("batch_recommendations", "batch_users")):
        if stage in stages and counts.get(key):
            stages[stage]["users_per_second"] = round(counts[key] / max(stages[stage]["seconds"], 1e-9), 1)
    ds = summary.get("dataset_stats") or {}
    if "build_dataset" in stages and ds.get("rows_read"):
        stages["build_dataset"]["rows_per_second"] = round(ds["rows_read"] / max(stages["build_dataset"]["seconds"], 1e-9))
    models = {}
    root = os.path.join(work, "artifacts")
    for name, c in (summary.get("candidates") or {}).items():
        if name in ("production", "popularity_baseline") or not c.get("version"):
            continue
        manifest = read_json(os.path.join(root, "models", c["version"], "manifest.json"))
        t = manifest.get("training") or {}
        use = stages.get(f"train:{name}") or {}
        models[name] = {"train_seconds": use.get("seconds"), "peak_rss_mb": use.get("peak_rss_mb"),
                        "share_of_run": round(use.get("seconds", 0) / wall, 3) if use else None,
                        "examples_per_second": t.get("examples_per_second"),
                        "epochs": len(t["epochs"]) if isinstance(t.get("epochs"), list) else t.get("epochs"),
                        "best_epoch": t.get("best_epoch"),
                        # the selection fit's epochs when the version was refit (training is the refit's)
                        "selection_epochs": len((manifest.get("selection") or {}).get("epochs") or []) or None,
                        "warm_started_from": manifest.get("warm_started_from"),
                        "refit": "yes" if "refit" in manifest else
                                 "dropped" if manifest.get("refit_dropped") else "no"}
    result = {"train_interactions": ds.get("splits", {}).get("train", {}).get("interactions"),
              "total_seconds": round(wall, 1), "peak_rss_mb": round(peak, 1),
              "stages": stages, "counts": counts, "models": models, "published": summary.get("published"),
              "metrics": {k: v["metrics"] for k, v in (summary.get("candidates") or {}).items()}}
    print(f"nightly {wall:.1f}s{' (the sum of its steps: resumed)' if resume else ''}, peak RSS {peak:,.0f} MB")
    print(f"{'stage':<22} {'wall s':>8} {'cpu s':>8} {'peak MB':>9}  rate")
    for stage in STAGES:
        if stage in stages:
            s = stages[stage]
            # evaluate: users summed over the versions evaluated (each ranks its sample of test users)
            rate = (f"{s['users_per_second']:,.0f} users/s" if "users_per_second" in s
                    else f"{s['rows_per_second']:,.0f} rows/s" if "rows_per_second" in s else "")
            print(f"{stage:<22} {s['seconds']:>8.1f} {s['cpu_seconds']:>8.1f} {s['peak_rss_mb']:>9,.0f}  {rate}")
    print(f"{'model':<22} {'train s':>8} {'share':>8} {'peak MB':>9}  examples/s  epochs (best)  refit")
    for name, m in models.items():
        share = f"{100 * m['share_of_run']:.0f}%" if m["share_of_run"] is not None else ""
        epochs = f"{m['selection_epochs']} + {m['epochs']}" if m["selection_epochs"] else f"{m['epochs'] or ''}"
        warm = f"  warm from {m['warm_started_from']}" if m["warm_started_from"] else ""
        print(f"{name:<22} {m['train_seconds'] or 0:>8.1f} {share:>8} {m['peak_rss_mb'] or 0:>9,.0f}  "
              f"{m['examples_per_second'] or '':>10}  {epochs} ({m['best_epoch'] or ''})  {m['refit']}{warm}")
    for name, m in result["metrics"].items():
        print(f"  {name:<20} recall@20 {m.get('recall@20', float('nan')):.4f}  ndcg@20 {m.get('ndcg@20', float('nan')):.4f}")
    print(f"published: {result['published']}")
    return result


def next_night(work: str, config: str, gen: dict, days: int, first: dict | None) -> dict | None:
    """The warm night: `config` with the longer log as its source, on the same artifact root. Prints its
    figures and, per model, the cold night's (`first`, when this process ran it) beside them."""
    with open(config) as f:
        text = f.read()
    assert "\n  path: events.parquet\n" in text, "recsys init wrote another source path"
    config2 = os.path.join(work, "recsys-next.yaml")
    with open(config2, "w") as f:
        f.write(text.replace("\n  path: events.parquet\n", "\n  path: events-next.parquet\n"))
    print(f"\nnext night: {gen['next_events']:,} events (+{gen['next_events'] / gen['events'] - 1:.1%}, "
          f"{days} more days), warm-started")
    second = night(work, config2, "nightly-next.log")
    if second is None:
        return None
    if first:
        print(f"{'model':<22} {'cold s':>8} {'warm s':>8}  test recall@20 cold -> warm")
        for name, m in second["models"].items():
            cold = first["models"].get(name, {})
            r1 = first["metrics"].get(name, {}).get("recall@20", float("nan"))
            r2 = second["metrics"].get(name, {}).get("recall@20", float("nan"))
            print(f"{name:<22} {cold.get('train_seconds') or 0:>8.1f} {m['train_seconds'] or 0:>8.1f}  "
                  f"{r1:.4f} -> {r2:.4f} ({r2 / r1:.1%})")
    return {"events": gen["next_events"], "days": days, **second}


def warm_only(work: str, args, gen: dict | None) -> int:
    """--warm-only: the next night on an earlier cold run's artifacts (a 50M cold night is an hour)."""
    config = os.path.join(work, "recsys.yaml")
    if not args.next_day or gen is None or not os.path.exists(config) or \
            (gen["users"], gen["items"]) != (args.users, args.items):   # events: the target, not the count
        print(f"--warm-only needs --next-day and an earlier run of this size in {work} (generated.json, "
              f"recsys.yaml, artifacts/)")
        return 2
    if gen.get("next_days", 0) != args.next_day or not os.path.exists(os.path.join(work, "events-next.parquet")):
        more = generate_apart(work, args.events, args.users, args.items, args.seed, next_days=args.next_day,
                              next_only=True)
        if more["events"] != gen["events"]:   # another seed or generator: the first log is not a prefix
            print(f"the regenerated log has {more['events']:,} events before the cut, not {gen['events']:,}")
            return 1
        gen = {**gen, "next_events": more["next_events"], "next_days": args.next_day}
        write_json(os.path.join(work, GENERATED), gen)
        print(f"generated the next {args.next_day} days' log in {more['seconds']}s")
    second = next_night(work, config, gen, args.next_day, None)
    if second is None:
        return 1
    if args.json:
        write_json(args.json, {"events": gen["events"], "users": gen["users"], "items": gen["items"],
                               "next_day": second})
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--next-day", type=int, default=0, metavar="D",
                    help="then a warm nightly on the log D days longer (3: ~3%% more events)")
    ap.add_argument("--work", default="", help="working directory (default: /tmp/recsys-scale-<events>)")
    ap.add_argument("--json", default="", help="write the figures to this file")
    ap.add_argument("--reuse", action="store_true", help="keep generated files of the same size")
    ap.add_argument("--resume", action="store_true",
                    help="finish the first night's unfinished run in --work (nightly --resume) instead of starting over")
    ap.add_argument("--warm-only", action="store_true",
                    help="only the next night (--next-day D), warm-started from the versions an earlier run of the "
                         "same size left in --work; the longer log is generated if that run had none")
    args = ap.parse_args()
    work = os.path.abspath(args.work or f"/tmp/recsys-scale-{args.events}")
    print("load:", os.popen("uptime").read().strip())
    gen_marker = os.path.join(work, GENERATED)
    gen = read_json(gen_marker) if (args.reuse or args.warm_only) and os.path.exists(gen_marker) else None
    if args.warm_only:
        return warm_only(work, args, gen)
    if gen is None or gen.get("next_days", 0) != args.next_day:
        if os.path.exists(work):
            subprocess.run(["rm", "-rf", work], check=True)
        gen = generate_apart(work, args.events, args.users, args.items, args.seed, next_days=args.next_day)
        write_json(gen_marker, gen)
    print(f"generated {gen['events']:,} events ({gen['bytes'] / 1e6:.0f} MB Parquet), {gen['users']:,} users, "
          f"{gen['items']:,} items in {gen['seconds']}s -> {work}")
    config = os.path.join(work, "recsys.yaml")
    if args.resume:
        first = night(work, config, "nightly-resume.log", resume=True)
        if first is None:
            return 1
        if args.json:
            write_json(args.json, {"events": gen["events"], "users": gen["users"], "items": gen["items"],
                                   "resumed": True, **first})
        return 0
    subprocess.run(["rm", "-rf", os.path.join(work, "artifacts"), config], check=True)
    code, init_s, _, _ = run_child([RECSYS, "init", "--events", os.path.join(work, "events.parquet"),
                                    "--items", os.path.join(work, "catalog.csv"),
                                    "--out", config, "--root", "artifacts"],
                                   os.path.join(work, "init.log"))
    if code:
        with open(os.path.join(work, "init.log")) as f:
            print(f.read())
        return code
    print(f"init {init_s:.1f}s")
    first = night(work, config, "nightly.log")
    if first is None:
        return 1
    result = {"events": gen["events"], "users": gen["users"], "items": gen["items"],
              "init_seconds": round(init_s, 1), **first}
    if args.next_day:
        second = next_night(work, config, gen, args.next_day, first)
        if second is None:
            return 1
        result["next_day"] = second
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
