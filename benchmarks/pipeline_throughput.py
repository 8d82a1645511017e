"""End-to-end throughput of the dataset pipeline against a pandas-only baseline.

Generates synthetic interaction CSVs (user_id,item_id,rating,timestamp; power-law item popularity,
a few percent dirty rows and exact duplicates), then for each size runs, each in a fresh subprocess:

  beam-in_memory         pipelines.build_dataset.run on the DirectRunner (in-process FnApiRunner)
  beam-multi_processing  the same with direct_running_mode=multi_processing, direct_num_workers=2
  pandas                 the same transformations written in plain pandas (below): read the whole
                         CSV, same validation rules, drop_duplicates, positives, iterative k-core,
                         temporal split, vocabularies, Parquet per split

and prints rows/s (rows read / wall-clock seconds, end to end including writing the output) and the
ratio beam/pandas. The pandas baseline's counts are checked against the pipeline's stats.json, so the
two really do the same work. See benchmarks/README.md.

    .venv/bin/python benchmarks/pipeline_throughput.py                 # 1M and 5M rows
    .venv/bin/python benchmarks/pipeline_throughput.py --smoke         # 50k rows, quick check
    .venv/bin/python benchmarks/pipeline_throughput.py --sizes 1000000 --variants beam-in_memory,pandas
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

VARIANTS = ("beam-in_memory", "beam-multi_processing", "pandas")
GOAL_ROWS_PER_S = 500_000
HEADER = "user_id,item_id,rating,timestamp"
RATINGS = np.array(["0.5", "1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0", "4.5", "5.0"])
RATING_P = np.array([0.02, 0.04, 0.03, 0.08, 0.06, 0.17, 0.14, 0.22, 0.10, 0.14])


# --------------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------------

# Dirty-row kinds: how a good line (u, i, r, t) is damaged. The last kind stays valid (padded IDs are
# trimmed by validation) but exercises the trimming on both sides.
DIRTY = {
    "missing_user": lambda u, i, r, t: f",{i},{r},{t}",
    "missing_item": lambda u, i, r, t: f"{u},,{r},{t}",
    "long_id": lambda u, i, r, t: f"{u}{'x' * 300},{i},{r},{t}",
    "control_chars": lambda u, i, r, t: f"{u},{i}\x07,{r},{t}",
    "missing_timestamp": lambda u, i, r, t: f"{u},{i},{r},",
    "bad_timestamp": lambda u, i, r, t: f"{u},{i},{r},yesterday",
    "ms_timestamp": lambda u, i, r, t: f"{u},{i},{r},{t}000",
    "bad_rating": lambda u, i, r, t: f"{u},{i},n/a,{t}",
    "rating_out_of_range": lambda u, i, r, t: f"{u},{i},7.5,{t}",
    "extra_column": lambda u, i, r, t: f"{u},{i},{r},{t},web",
    "short_row": lambda u, i, r, t: f"{u},{i},{r}",
    "padded_ids": lambda u, i, r, t: f" {u} ,{i} ,{r},{t}",
}


def generate(path: str, n_rows: int, seed: int = 0, dirty_fraction: float = 0.03,
             duplicate_fraction: float = 0.02) -> dict:
    """Write about `n_rows` data lines (originals + duplicates) to `path`; returns what was generated."""
    rng = np.random.default_rng(seed)
    n_dup = int(n_rows * duplicate_fraction)
    n = n_rows - n_dup
    n_items = max(200, n // 100)
    n_users = max(200, n // 60)
    # Power-law item popularity (Zipf, s=1.05) and a milder skew of user activity.
    item_p = 1.0 / np.arange(1, n_items + 1) ** 1.05
    user_p = 1.0 / np.arange(1, n_users + 1) ** 0.6
    items = rng.permutation(n_items)[rng.choice(n_items, n, p=item_p / item_p.sum())]
    users = rng.permutation(n_users)[rng.choice(n_users, n, p=user_p / user_p.sum())]
    ts = np.sort(rng.integers(1_500_000_000, 1_500_000_000 + 3 * 365 * 86400, n))  # a log: time order
    rating_idx = rng.choice(len(RATINGS), n, p=RATING_P)

    cols = [pc.cast(pa.array(users + 1), pa.string()),
            pc.binary_join_element_wise("i", pc.cast(pa.array(items * 7 + 1000), pa.string()), ""),
            pa.DictionaryArray.from_arrays(pa.array(rating_idx.astype(np.int32)), pa.array(RATINGS))
            .cast(pa.string()),
            pc.cast(pa.array(ts), pa.string())]
    lines = pc.binary_join_element_wise(*cols, ",").to_pylist()

    kinds = list(DIRTY)
    dirty_rows = rng.choice(n, int(n * dirty_fraction), replace=False)
    dirty_kind = rng.integers(0, len(kinds), len(dirty_rows))
    for row, k in zip(dirty_rows.tolist(), dirty_kind.tolist()):
        lines[row] = DIRTY[kinds[k]](*lines[row].split(","))

    # Exact duplicates (client retries): a copy lands a little after its original.
    dup_src = rng.choice(n, n_dup)
    order = np.argsort(np.concatenate([np.arange(n, dtype=np.float64),
                                       dup_src + rng.uniform(0.5, 50.0, n_dup)]), kind="stable")
    src = np.concatenate([np.arange(n), dup_src])[order]
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(HEADER + "\n")
        fh.write("\n".join([lines[k] for k in src.tolist()]))
        fh.write("\n")
    return {"rows": n_rows, "bytes": os.path.getsize(path), "users": n_users, "items": n_items,
            "dirty": {k: int((dirty_kind == j).sum()) for j, k in enumerate(kinds)}, "duplicates": n_dup}


def dataset_config(csv_path: str, root: str, variant: str, shuffle_buckets: int | None = None,
                   block_size_mb: int | None = None) -> dict:
    """The pipeline config for the synthetic CSV (defaults everywhere else: what a user gets)."""
    runner = {"name": "DirectRunner"}
    if variant == "beam-multi_processing":
        runner["options"] = {"direct_running_mode": "multi_processing", "direct_num_workers": 2}
    if shuffle_buckets:
        runner["shuffle_buckets"] = shuffle_buckets
    if block_size_mb:
        runner["block_size_mb"] = block_size_mb
    return {
        "source": {"path": csv_path, "format": "csv", "delimiter": ",", "header": True,
                   "columns": {"user": "user_id", "item": "item_id", "value": "rating", "timestamp": "timestamp"},
                   "timestamp_unit": "s", "items_path": "", "items_format": "none"},
        "feedback": {"mode": "rating", "min_rating": 3.5, "rating_range": [0.5, 5.0]},
        "split": {"strategy": "temporal", "test_fraction": 0.1, "validation_fraction": 0.1},
        "runner": runner,
        "artifacts": {"root": root},
    }


# --------------------------------------------------------------------------------------------------
# The pandas-only baseline: the same transformations, the way one would write them in a notebook.
# --------------------------------------------------------------------------------------------------

MAX_TS = 4102444800  # timestamps must fall in [1970, 2100)
CONTROL_CHARS = r"[\x00-\x1f\x7f]"


def pandas_build(csv_path: str, out_dir: str, cfg) -> dict:
    """Build the dataset with pandas alone; returns stats with the pipeline's stats.json keys.

    One deliberate difference: pandas fills a row with too few fields with empty strings, so such a
    row is rejected for its first empty field (e.g. missing_timestamp) instead of wrong_column_count.
    Totals are the same.
    """
    s, fb, fl, sp = cfg.source, cfg.feedback, cfg.filters, cfg.split
    c = s.columns
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False, on_bad_lines="warn")
    too_many = sorted(int(m) for w in caught for m in re.findall(r"Skipping line (\d+)", str(w.message)))
    rows_read = len(raw) + len(too_many)
    line = np.setdiff1d(np.arange(2, rows_read + 2), too_many)  # line 1 is the header

    df = pd.DataFrame({
        "user": raw[c.user].str.strip(),
        "item": raw[c.item].str.strip(),
        "timestamp": np.floor(pd.to_numeric(raw[c.timestamp], errors="coerce")),
        "value": pd.to_numeric(raw[c.value], errors="coerce"),
    })
    # First rule that applies wins (same order as recsys.data.ingest.validate).
    lo, hi = fb.rating_range
    rules = {
        "missing_user_id": df["user"] == "",
        "missing_item_id": df["item"] == "",
        "id_too_long": (df["user"].str.len() > s.max_id_length) | (df["item"].str.len() > s.max_id_length),
        "control_characters": df["user"].str.contains(CONTROL_CHARS) | df["item"].str.contains(CONTROL_CHARS),
        "missing_timestamp": raw[c.timestamp].str.strip() == "",
        "bad_timestamp": df["timestamp"].isna() | (df["timestamp"] < 0) | (df["timestamp"] >= MAX_TS),
        "bad_rating": df["value"].isna(),
        "rating_out_of_range": (df["value"] < lo) | (df["value"] > hi),
    }
    reason = pd.Series(np.select(list(rules.values()), list(rules), default=""), index=df.index)
    bad = reason != ""

    # Dead letters: source, line, reason, raw text.
    rejected = pd.DataFrame({"source": csv_path, "line": line[bad.to_numpy()], "reason": reason[bad],
                             "raw": raw.loc[bad, c.user].str.cat(
                                 raw.loc[bad, [c.item, c.value, c.timestamp]], sep=",")})
    rejected = pd.concat([rejected, pd.DataFrame({"source": csv_path, "line": too_many,
                                                  "reason": "wrong_column_count", "raw": ""})])
    os.makedirs(os.path.join(out_dir, "rejected"), exist_ok=True)
    rejected.sort_values("line").to_json(os.path.join(out_dir, "rejected", "part-0.jsonl"),
                                         orient="records", lines=True)

    valid = df[~bad].astype({"timestamp": np.int64, "value": np.float32})
    valid["weight"] = (valid["value"] >= fb.min_rating).astype(np.float32)
    deduped = valid.drop_duplicates(["user", "item", "timestamp", "value"])
    positives = deduped[deduped["weight"] > 0]

    # Iterative k-core: drop rare items, then light users, until nothing changes.
    kept = positives
    while True:
        before = len(kept)
        kept = kept[kept.groupby("item")["item"].transform("size") >= fl.min_item_interactions]
        kept = kept[kept.groupby("user")["user"].transform("size") >= fl.min_user_interactions]
        if len(kept) == before:
            break

    # Global temporal split: the newest test_fraction is test, the validation_fraction before it validation.
    ts = np.sort(kept["timestamp"].to_numpy())
    n_test = max(1, int(round(len(ts) * sp.test_fraction)))
    n_val = int(round(len(ts) * sp.validation_fraction))
    test_start = int(ts[len(ts) - n_test])
    val_start = int(ts[max(0, len(ts) - n_test - n_val)]) if n_val else test_start
    kept = kept.assign(split=np.select([kept["timestamp"] >= test_start, kept["timestamp"] >= val_start],
                                       ["test", "validation"], default="train"))

    train = kept[kept["split"] == "train"]
    users = pd.Index(np.sort(train["user"].unique()))
    items = pd.Index(np.sort(train["item"].unique()))
    kept = kept.assign(user_idx=users.get_indexer(kept["user"]).astype(np.int32),
                       item_idx=items.get_indexer(kept["item"]).astype(np.int32))

    stats = {"rows_read": rows_read, "accepted": int((~bad).sum()), "rejected": int(bad.sum()) + len(too_many),
             "duplicates_removed": len(valid) - len(deduped), "not_positive": len(deduped) - len(positives),
             "positives": len(positives), "kcore_removed": len(positives) - len(kept), "interactions": len(kept),
             "vocab": {"users": len(users), "items": len(items)}, "splits": {}}
    columns = ["user", "item", "user_idx", "item_idx", "timestamp", "value", "weight"]
    for split in ("train", "validation", "test"):
        part = kept[kept["split"] == split]
        unknown = part["item_idx"] < 0  # held-out items never seen in training cannot be ranked
        part = part[~unknown].sort_values(["user", "timestamp", "item"])
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        part[columns].to_parquet(os.path.join(out_dir, split, "part-0.parquet"), index=False, compression="zstd")
        stats["splits"][split] = {"interactions": len(part), "users": part["user"].nunique(),
                                  "items": part["item"].nunique(), "dropped_unknown_item": int(unknown.sum()),
                                  "new_users": part.loc[part["user_idx"] < 0, "user"].nunique()}
    os.makedirs(os.path.join(out_dir, "vocab"), exist_ok=True)
    pd.Series(users).to_csv(os.path.join(out_dir, "vocab", "users.txt"), index=False, header=False)
    pd.Series(items).to_csv(os.path.join(out_dir, "vocab", "items.txt"), index=False, header=False)
    train_counts = train["item"].value_counts()
    pd.DataFrame({"item": items, "item_idx": np.arange(len(items), dtype=np.int32),
                  "train_count": train_counts.reindex(items).to_numpy(dtype=np.int64)}) \
        .to_parquet(os.path.join(out_dir, "items.parquet"), index=False, compression="zstd")
    with open(os.path.join(out_dir, "stats.json"), "w") as fh:
        json.dump(stats, fh, indent=2, default=int)
    return stats


# --------------------------------------------------------------------------------------------------
# Running one variant (in a subprocess, so every measurement starts from a fresh interpreter)
# --------------------------------------------------------------------------------------------------

COMPARED = ("rows_read", "accepted", "rejected", "duplicates_removed", "not_positive", "positives",
            "kcore_removed", "interactions")


def comparable(stats: dict) -> dict:
    out = {k: stats[k] for k in COMPARED}
    out["vocab"] = dict(stats["vocab"])
    for split, st in stats["splits"].items():
        for k in ("interactions", "users", "items", "dropped_unknown_item", "new_users"):
            out[f"{split}.{k}"] = int(st[k])
    return out


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (multi_processing workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_variant(variant: str, csv_path: str, workdir: str, profile: str | None, shuffle_buckets, block_mb) -> dict:
    import logging
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    from recsys.config import from_dict
    root = os.path.join(workdir, "artifacts")
    cfg = from_dict(dataset_config(csv_path, root, variant, shuffle_buckets, block_mb), base_dir=workdir)
    if variant.startswith("beam"):
        from pipelines.build_dataset import run
        target = lambda: run(cfg, dataset_id="bench", previous=None, progress=lambda msg: None).stats  # noqa: E731
    else:
        target = lambda: pandas_build(csv_path, os.path.join(workdir, "pandas_out"), cfg)  # noqa: E731
    t0, c0 = time.perf_counter(), _cpu_seconds()
    if profile:
        import cProfile
        prof = cProfile.Profile()
        stats = prof.runcall(target)
        prof.dump_stats(profile)
    else:
        stats = target()
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    rss_mb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                 resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    return {"variant": variant, "seconds": seconds, "cpu_seconds": cpu, "rows_read": stats["rows_read"],
            "rows_per_s": stats["rows_read"] / seconds, "peak_rss_mb": rss_mb, "stats": comparable(stats)}


def spawn(variant: str, csv_path: str, workdir: str, args) -> dict:
    vdir = os.path.join(workdir, variant)
    shutil.rmtree(vdir, ignore_errors=True)
    os.makedirs(vdir)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--csv", csv_path, "--workdir", vdir]
    if args.profile_dir:
        cmd += ["--profile", os.path.join(args.profile_dir, f"{variant}-{os.path.basename(csv_path)}.prof")]
    if args.shuffle_buckets:
        cmd += ["--shuffle-buckets", str(args.shuffle_buckets)]
    if args.block_size_mb:
        cmd += ["--block-size-mb", str(args.block_size_mb)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    shutil.rmtree(vdir, ignore_errors=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"variant": variant, "error": f"exit {proc.returncode}: " + " | ".join(tail)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000000,5000000", help="comma-separated row counts (default: %(default)s)")
    p.add_argument("--smoke", action="store_true", help="one small size (50000 rows) for a quick check")
    p.add_argument("--variants", default=",".join(VARIANTS), help="subset of: " + ", ".join(VARIANTS))
    p.add_argument("--workdir", help="keep generated CSVs here (reused when present); default: a temp dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile-dir", help="write a cProfile file per run here (driver process only)")
    p.add_argument("--shuffle-buckets", type=int, help="override runner.shuffle_buckets")
    p.add_argument("--block-size-mb", type=int, help="override runner.block_size_mb")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per variant, interleaved so background load hits all alike; the fastest is kept")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    p.add_argument("--json", help="also write the results here")
    # internal: run one variant in this process
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--csv", help=argparse.SUPPRESS)
    p.add_argument("--profile", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        res = run_variant(args.worker, args.csv, args.workdir, args.profile, args.shuffle_buckets, args.block_size_mb)
        print("RESULT " + json.dumps(res))
        return 0

    sizes = [50_000] if args.smoke else [int(x) for x in args.sizes.split(",") if x.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants: {', '.join(sorted(unknown))}")
    if args.profile_dir:
        os.makedirs(args.profile_dir, exist_ok=True)
    own_tmp = args.workdir is None
    workdir = args.workdir or tempfile.mkdtemp(prefix="recsys-bench-")
    os.makedirs(workdir, exist_ok=True)
    load = os.getloadavg()[0]
    print(f"pipeline_throughput: {os.cpu_count()} CPUs, load average {load:.1f}, python {sys.version.split()[0]}, "
          f"workdir {workdir}")
    if load > 0.5:
        print("  (the machine is busy: wall-clock rates will be low; compare CPU seconds, or use --repeat)")
    results, ok = [], True
    try:
        for n in sizes:
            csv_path = os.path.join(workdir, f"interactions-{n}-seed{args.seed}.csv")
            if not os.path.exists(csv_path):
                t0 = time.perf_counter()
                info = generate(csv_path + ".tmp", n, seed=args.seed)
                os.replace(csv_path + ".tmp", csv_path)
                print(f"\n{n:,} rows: generated {info['bytes'] / 1e6:.0f} MB in {time.perf_counter() - t0:.1f}s "
                      f"({info['users']:,} users, {info['items']:,} items, {sum(info['dirty'].values()):,} dirty rows,"
                      f" {info['duplicates']:,} duplicates)")
            else:
                print(f"\n{n:,} rows: reusing {csv_path} ({os.path.getsize(csv_path) / 1e6:.0f} MB)")
            by_variant = {}
            for _ in range(max(1, args.repeat)):
                for v in variants:
                    res = spawn(v, csv_path, workdir, args)
                    res["size"] = n
                    best = by_variant.get(v)
                    if best is None or "error" in best or ("error" not in res and res["seconds"] < best["seconds"]):
                        by_variant[v] = res
            for v, res in by_variant.items():
                results.append(res)
                if "error" in res:
                    print(f"  {v:<24} FAILED {res['error']}")
                else:
                    print(f"  {v:<24} {res['seconds']:7.1f}s  {res['rows_per_s']:>10,.0f} rows/s  "
                          f"(CPU {res['cpu_seconds']:.1f}s, peak RSS {res['peak_rss_mb']:,.0f} MB)")
            base = by_variant.get("pandas")
            for v, res in by_variant.items():
                if v == "pandas" or "error" in res:
                    continue
                goal = "meets" if res["rows_per_s"] >= GOAL_ROWS_PER_S else "BELOW"
                line = f"  {v:<24} {goal} the {GOAL_ROWS_PER_S:,} rows/s goal"
                if base and "error" not in base:
                    line += f"; beam/pandas = {res['rows_per_s'] / base['rows_per_s']:.2f}"
                    diff = {k: (res["stats"][k], base["stats"].get(k)) for k in res["stats"]
                            if res["stats"][k] != base["stats"].get(k)}
                    line += "; outputs agree with pandas" if not diff else f"; OUTPUTS DIFFER: {diff}"
                    ok &= not diff
                print(line)
            ok &= all("error" not in r for r in by_variant.values())
    finally:
        if own_tmp:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
