"""`recsys nightly`: dataset -> candidates -> evaluation -> gate -> index -> batch recs -> publish.

Each step records its outputs in `<root>/runs/<run_id>/state.json` when it completes, so `--resume`
continues the same run from the first step not yet done. A failure leaves CURRENT (and so the running
service) untouched: publishing is the last step and a single atomic rename.

With `nightly.isolate_steps` (the default) every heavy step runs in a spawned process of its own
(`pipelines/isolated.py`), each model's training in a separate one, the gate in the evaluate step's:
the steps hand each other only files and this state, and the run's peak memory is its largest step's.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import socket
import time
import uuid
from contextlib import contextmanager

from recsys import fsio, models, registry, version as version_mod
from recsys.config import Config
from recsys.evaluation import compare, evaluate
from recsys.errors import DataError, RecsysError
from recsys.progress import Meter

STEPS = ("build_dataset", "train", "evaluate", "gate", "index", "batch_recommendations", "publish")


class StepFailed(RecsysError):
    def __init__(self, step: str, cause: BaseException):
        msg = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        super().__init__(f"nightly: step {step} failed: {type(cause).__name__}: {msg}")
        self.step = step


def runs_dir(root: str) -> str:
    return fsio.join(root, "runs")


def _state_path(root: str, run_id: str) -> str:
    return fsio.join(runs_dir(root), run_id, "state.json")


def _save(root: str, state: dict) -> None:
    fsio.atomic_write_text(_state_path(root, state["run_id"]), json.dumps(state, indent=2, sort_keys=True))


def last_unfinished_run(root: str) -> dict | None:
    for run_id in reversed(fsio.list_dir(runs_dir(root))):
        path = _state_path(root, run_id)
        if fsio.exists(path):
            state = json.loads(fsio.read_text(path))
            return None if state.get("finished") else state
    return None


LOCK = "nightly.lock"


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False   # kill(0 or -1, 0) would ask about whole process groups
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def _locked(root: str, cfg: Config, progress):
    """Hold `<root>/nightly.lock` (pid, host, start time) for the whole run: a second nightly, or a
    `--resume`, refuses to start while it is held.

    Stale-lock rule: a lock whose holder is on this host and no longer running, or that is older than
    `nightly.lock_stale_hours`, is taken over (and the takeover is printed). A lock held by a live
    process, or on another host within that time, is respected.
    """
    path = fsio.join(root, LOCK)
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
          "token": uuid.uuid4().hex}
    text = json.dumps(me)
    for _ in range(2):
        if fsio.create_exclusive(path, text):
            break
        try:
            held = json.loads(fsio.read_text(path))
            age_h = (_dt.datetime.now(_dt.timezone.utc)
                     - _dt.datetime.fromisoformat(held["started_at"])).total_seconds() / 3600
        except (ValueError, KeyError, TypeError, OSError):
            held, age_h = {}, float("inf")   # unreadable: left by a crash while it was written
        pid = int(held.get("pid", -1)) if str(held.get("pid", "")).lstrip("-").isdigit() else -1
        same_host = held.get("host") == me["host"]
        dead = same_host and (pid == me["pid"] or not _alive(pid))   # our own pid: a restarted container
        if not held:
            # unreadable: being written right now, or left by a crash mid-write; only its age tells
            try:
                age_h = (time.time() - os.path.getmtime(path)) / 3600 if not fsio.is_url(path) else float("inf")
            except OSError:
                continue
        if not (dead or (age_h > cfg.nightly.lock_stale_hours and not (same_host and _alive(pid)))):
            raise DataError(f"nightly: another run holds {LOCK} (pid {held.get('pid')} on {held.get('host')} "
                            f"since {held.get('started_at')}); wait for it to end, or delete the file if that "
                            f"process is gone")
        progress(f"nightly: taking over a stale {LOCK} (pid {held.get('pid')} on {held.get('host')} since "
                 f"{held.get('started_at')}: {'not running' if dead else f'{age_h:.0f} h old'})")
        # rename, not delete: of two runs taking over the same stale lock only one rename succeeds, so
        # the loser cannot delete the lock the winner has just created
        if fsio.is_url(path):
            fsio.delete(path)
        else:
            try:
                os.replace(path, f"{path}.stale-{me['token']}")
                os.remove(f"{path}.stale-{me['token']}")
            except FileNotFoundError:
                pass
    else:
        raise DataError(f"nightly: could not take {LOCK}: another run took it first")
    try:
        yield
    finally:
        try:
            if json.loads(fsio.read_text(path)).get("token") == me["token"]:
                fsio.delete(path)
        except (OSError, ValueError):
            pass


def run(cfg: Config, resume: bool = False, progress=print, publish: bool = True) -> dict:
    """Run (or resume) the nightly job under the nightly lock; returns the summary (`SUMMARY_SCHEMA`).

    `publish=False` (`recsys nightly --no-publish`): everything up to the gate's decision, the index
    and the batch recommendations of the candidate it would publish, but CURRENT is left alone (the
    summary says `would_publish`); `recsys publish <version>` can publish it later.

    Raises:
        StepFailed: naming the step that failed.
        DataError: another nightly holds the lock, or `resume` finds no unfinished run.
    """
    models.check_names(cfg.nightly.models)   # before the lock and the dataset: a typo costs nothing
    root = cfg.resolve(cfg.artifacts.root)
    with _locked(root, cfg, progress):
        return _run(cfg, root, resume, progress, publish)


def _run(cfg: Config, root: str, resume: bool, progress, publish: bool = True) -> dict:
    state = last_unfinished_run(root) if resume else None
    if resume and state is None:
        raise DataError("nightly --resume: no unfinished run to resume")
    if state is None:
        run_id = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        state = {"run_id": run_id, "done": [], "durations": {}, "outputs": {}, "started_at": run_id}
        _save(root, state)
    else:
        progress(f"nightly: resuming run {state['run_id']} after {', '.join(state['done']) or 'no step'}")
    out = state["outputs"]
    if cfg.nightly.isolate_steps:
        progress("nightly: each step runs in a process of its own (nightly.isolate_steps)")
    # EvaluationResults of the evaluate step, which the gate reuses in the same process (a resumed
    # run evaluates again what it needs)
    results: dict = {}
    steps = _steps(cfg, root, out, progress, results)
    for i, step in enumerate(STEPS, 1):
        if step in state["done"]:
            continue
        if step in ("index", "batch_recommendations", "publish") and not out.get("gate", {}).get("publish"):
            state["done"].append(step)
            progress(f"[{i}/{len(STEPS)}] {step}: skipped (gate kept production)")
            _save(root, state)
            continue
        if step == "publish" and not publish:
            out["would_publish"] = out["gate"]["candidate"]
            state["done"].append(step)
            progress(f"[{i}/{len(STEPS)}] publish: skipped (--no-publish); `recsys publish "
                     f"{out['gate']['candidate']}` would publish what the gate chose")
            _save(root, state)
            continue
        progress(f"[{i}/{len(STEPS)}] {step} ...")
        try:
            if cfg.nightly.isolate_steps and step in ISOLATED:
                _isolated(step, cfg, root, state, progress)
            else:
                with Meter() as meter:
                    steps[step]()
                _record(state, step, meter.use.to_dict())
        except Exception as exc:  # noqa: BLE001 - reported as one line naming the step
            state["failed"] = {"step": step, "error": f"{type(exc).__name__}: {exc}"[:2000]}
            _save(root, state)
            raise StepFailed(step, exc) from exc
        _save(root, state)
    try:
        _retain(cfg, root, out, progress)
    except Exception as exc:  # noqa: BLE001 - housekeeping must not fail a run that has published
        progress(f"  retention skipped: {type(exc).__name__}: {exc}")
    state["finished"] = True
    summary = _summary(root, state)
    fsio.atomic_write_text(fsio.join(runs_dir(root), state["run_id"], "summary.json"),
                           json.dumps(summary, indent=2, sort_keys=True, default=str))
    _save(root, state)
    return summary


# the steps that run in a process of their own when nightly.isolate_steps is on (publish is a rename)
# (the gate runs in the evaluate step's process, which has the evaluations' per-user arrays in memory;
# alone only when a run is resumed between the two)
ISOLATED = ("build_dataset", "train", "evaluate", "gate", "index", "batch_recommendations")


def _steps(cfg, root, out, progress, results: dict) -> dict:
    """Step name -> a call running it here, on `out` (the run's outputs so far, updated in place)."""
    return {
        "build_dataset": lambda: _build_dataset(cfg, out, progress),
        "train": lambda: _train(cfg, root, out, progress),
        "evaluate": lambda: _evaluate(cfg, root, out, progress, results),
        "gate": lambda: _gate(cfg, root, out, progress, results),
        "index": lambda: _index(cfg, root, out, progress),
        "batch_recommendations": lambda: _batch(cfg, root, out, progress),
        "publish": lambda: _publish(cfg, root, out, progress),
    }


def _record(state: dict, step: str, use: dict, done: bool = True) -> None:
    """What a step cost into the run's state (and the step as done)."""
    state["durations"][step] = round(use["seconds"], 2)
    state.setdefault("stages", {})[step] = use
    if done:
        state["done"].append(step)
        state.pop("failed", None)


def _in_child(names: tuple, cfg, root: str, out: dict, models: list | None, progress) -> tuple[dict, dict]:
    """A child's work (`pipelines.isolated.call`): the named steps run in order, here; returns the
    updated outputs and what each step cost. `models`: train only these (one model a process)."""
    results: dict = {}
    steps = _steps(cfg, root, out, progress, results)
    if models is not None:
        steps["train"] = lambda: _train(cfg, root, out, progress, only=models)
    uses = {}
    for name in names:
        with Meter() as meter:
            steps[name]()
        uses[name] = meter.use.to_dict()
    return out, uses


def _isolated(step: str, cfg, root: str, state: dict, progress) -> None:
    """Run `step` in processes of its own: train one per model (each saved in the state as it ends, so a
    resume skips it), evaluate with the gate (which needs the evaluations' per-user arrays)."""
    from pipelines import isolated
    out = state["outputs"]
    pids = state.setdefault("processes", {})
    if step == "train":
        total = {"seconds": 0.0, "cpu_seconds": 0.0, "peak_rss_mb": 0.0, "peak_is_own": True}
        for name in cfg.nightly.models:
            if name in out.get("candidates", {}):
                continue   # resumed: this one finished before
            (new, uses), _, pid = isolated.call(_in_child, (("train",), cfg, root, out, [name]), progress, f"train {name}")
            out.update(new)
            state.setdefault("stages", {})[f"train:{name}"] = uses["train"]
            pids[f"train:{name}"] = pid
            _save(root, state)
        for name in cfg.nightly.models:
            use = state.get("stages", {}).get(f"train:{name}")
            if use:
                total["seconds"] += use["seconds"]
                total["cpu_seconds"] += use["cpu_seconds"]
                total["peak_rss_mb"] = max(total["peak_rss_mb"], use["peak_rss_mb"])
        _record(state, "train", {k: round(v, 2) if isinstance(v, float) else v for k, v in total.items()})
        return
    names = ("evaluate", "gate") if step == "evaluate" else (step,)
    (new, uses), _, pid = isolated.call(_in_child, (names, cfg, root, out, None), progress, step)
    out.update(new)
    for name in names:
        _record(state, name, uses[name])
        pids[name] = pid


def _build_dataset(cfg, out, progress):
    from pipelines import build_dataset
    ds = build_dataset.run(cfg, previous="latest", progress=progress)
    out["dataset_id"] = ds.id
    out["dataset_stats"] = {k: v for k, v in ds.stats.items() if k != "config"}


def _train(cfg, root, out, progress, only: list | None = None):
    from recsys import jobs
    if cfg.model.distribute == "multi_worker_mirrored":
        raise DataError("model.distribute=multi_worker_mirrored: the nightly runs its steps in one process; "
                        "run `recsys train` on every worker (docs/SCALING.md), or use none / mirrored here")
    from recsys.data.dataset import Dataset
    out.setdefault("candidates", {})
    names = [n for n in (only if only is not None else cfg.nightly.models) if n not in out["candidates"]]
    ts = full = None
    if len(names) > 1:
        # several models in this process share the training sets; one model (a step of its own) reads
        # train, then train + validation for its refit once train is dropped (jobs.train_version)
        t0 = time.time()
        ts, full = jobs.training_sets(cfg, Dataset.open(root, out["dataset_id"]))
        out.setdefault("counts", {})["train_sets_seconds"] = round(time.time() - t0, 1)
        progress(f"  training sets (train, train + validation) read in {time.time() - t0:.1f}s")
    for name in names:   # (a resumed run skips the ones that finished before)
        out["candidates"][name] = jobs.train_version(cfg, name, out["dataset_id"], "auto", progress, ts=ts, full_ts=full)


def _evaluate(cfg, root, out, progress, results_by_version: dict):
    ks = tuple(cfg.evaluation.ks)
    results = {}
    production = registry.current_version(root)
    targets = dict(out["candidates"])
    if production:
        targets["production"] = production
    shared = {}   # the test split's data, read and built once for every version (evaluate.HeldOut)
    for label, version in targets.items():
        res = evaluate.evaluate_version(root, version, "test", out["dataset_id"], ks,
                                        target_events=cfg.evaluation.target_events,
                                        max_users=cfg.evaluation.max_users, sample_seed=cfg.evaluation.sample_seed,
                                        progress=progress, shared=shared)
        results_by_version[version] = res
        results[label] = {"version": version, "metrics": res.metrics, "sources": res.sources}
        counts = out.setdefault("counts", {})
        counts["evaluated_users"] = counts.get("evaluated_users", 0) + res.metrics.get("users", 0)
        results["popularity_baseline"] = {"version": None, "metrics": res.popularity_metrics}
        if label != "production":
            version_mod.update_manifest(root, version, test_metrics=res.metrics)
        m = res.metrics
        sample = f", a seeded sample of {res.users_total}" if res.sampled else ""
        progress(f"  {label:<11} {version}: recall@20 {m.get('recall@20', 0):.4f} ndcg@20 {m.get('ndcg@20', 0):.4f} "
                 f"({m.get('users', 0)} users{sample})")
    out["evaluation"] = results


def _gate(cfg, root, out, progress, results: dict):
    ev = out["evaluation"]
    decision = compare.gate(root, {k: v for k, v in ev.items() if k in out["candidates"]},
                            ev.get("production", {}).get("version"),
                            ev["popularity_baseline"]["metrics"][cfg.nightly.primary_metric], out["dataset_id"],
                            tuple(cfg.evaluation.ks), cfg.nightly.primary_metric, cfg.nightly.tolerance,
                            results=results, gate_config=cfg.gate)
    out["gate"] = dataclasses.asdict(decision)
    results.clear()   # the evaluations' per-user arrays are not needed past the gate
    progress(f"  gate: {'PUBLISH' if decision.publish else 'KEEP PRODUCTION'} {decision.candidate}: {decision.reason}")


def _index(cfg, root, out, progress):
    from recsys import jobs
    out["index"] = jobs.index_version(cfg, root, out["gate"]["candidate"], progress)


def _batch(cfg, root, out, progress):
    from pipelines import batch_recommend
    out["batch_recommendations"] = batch_recommend.run(cfg, root, out["gate"]["candidate"], progress=progress)
    out.setdefault("counts", {})["batch_users"] = len(version_mod.load_vocabs(root, out["gate"]["candidate"])[0])


def _publish(cfg, root, out, progress):
    version = out["gate"]["candidate"]
    registry.publish(root, version, reason=f"nightly gate: {out['gate']['reason']}")
    out["published"] = version
    out["pruned"] = registry.prune(root, cfg.nightly.keep_versions)
    progress(f"  published {version}; pruned {len(out['pruned'])} old version(s)")


def _retain(cfg, root, out, progress):
    """Retention, whatever the gate decided: datasets beyond nightly.keep_datasets (never LATEST or a
    kept version's), and temporary directories a crashed writer left (older than an hour)."""
    from recsys.data import dataset as ds
    kept = {version_mod.read_manifest(root, v).get("dataset_id") for v in registry.list_versions(root)}
    out["pruned_datasets"] = ds.prune_datasets(root, cfg.nightly.keep_datasets, kept)
    out["removed_leftovers"] = (fsio.remove_leftovers(version_mod.models_dir(root))
                                + fsio.remove_leftovers(ds.datasets_dir(root)))
    if out["pruned_datasets"] or out["removed_leftovers"]:
        progress(f"  retention: pruned {len(out['pruned_datasets'])} dataset(s), removed "
                 f"{len(out['removed_leftovers'])} leftover temporary folder(s)")


# `recsys nightly --json` prints the summary; its keys and their meaning are docs/OPERATIONS.md's, and a
# change that removes or retypes a key raises the version (tests/e2e/test_nightly.py checks the shape)
SUMMARY_SCHEMA = "recsys.nightly.summary/1"


def outcome(summary: dict) -> str:
    """published | kept (the gate kept production) | not_published (--no-publish)."""
    if summary.get("published"):
        return "published"
    return "not_published" if summary.get("would_publish") else "kept"


def _summary(root: str, state: dict) -> dict:
    out = state["outputs"]
    summary = {"schema": SUMMARY_SCHEMA, "run_id": state["run_id"], "steps": state["done"], "durations": state["durations"],
            "stages": state.get("stages", {}), "counts": out.get("counts", {}),
            "dataset_id": out.get("dataset_id"), "dataset_stats": out.get("dataset_stats"),
            "candidates": out.get("evaluation"), "gate": out.get("gate"),
            "published": out.get("published"), "would_publish": out.get("would_publish"),
            "current": registry.current_version(root), "pruned": out.get("pruned", [])}
    summary["outcome"] = outcome(summary)
    return summary
