"""`recsys nightly`: dataset -> candidates -> evaluation -> gate -> index -> batch recs -> publish.

Each step records its outputs in `<root>/runs/<run_id>/state.json` when it completes, so `--resume`
continues the same run from the first step not yet done. A failure leaves CURRENT (and so the running
service) untouched: publishing is the last step and a single atomic rename.
"""
from __future__ import annotations

import datetime as _dt
import json
import time


from recsys.evaluation import compare as ab
from recsys import fsio, registry
from recsys.evaluation import evaluate
from recsys.config import Config
from recsys.errors import DataError, RecsysError

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


def prune(root: str, keep: int) -> list[str]:
    """Delete the oldest versions beyond `keep`; never the published one or the one before it."""
    import shutil
    protected = {registry.current_version(root), registry.previous_published(root)}
    versions = registry.list_versions(root)
    removable = [v for v in versions if v not in protected]
    excess = len(versions) - keep
    removed = []
    for v in removable[:max(0, excess)]:
        path = registry.version_dir(root, v)
        if fsio.exists(path):
            shutil.rmtree(path) if not path.startswith(("gs://", "s3://")) else fsio.delete(path)
        removed.append(v)
    return removed


def run(cfg: Config, resume: bool = False, progress=print) -> dict:
    """Run (or resume) the nightly job; returns the summary. Raises StepFailed naming the step."""
    root = cfg.resolve(cfg.artifacts.root)
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
    steps = {
        "build_dataset": lambda: _build_dataset(cfg, out, progress),
        "train": lambda: _train(cfg, root, out, progress),
        "evaluate": lambda: _evaluate(cfg, root, out, progress),
        "gate": lambda: _gate(cfg, root, out, progress),
        "index": lambda: _index(cfg, root, out, progress),
        "batch_recommendations": lambda: _batch(cfg, root, out, progress),
        "publish": lambda: _publish(cfg, root, out, progress),
    }
    for i, step in enumerate(STEPS, 1):
        if step in state["done"]:
            continue
        if step in ("index", "batch_recommendations", "publish") and not out.get("gate", {}).get("publish"):
            state["done"].append(step)
            progress(f"[{i}/{len(STEPS)}] {step}: skipped (gate kept production)")
            _save(root, state)
            continue
        t0 = time.time()
        progress(f"[{i}/{len(STEPS)}] {step} ...")
        try:
            steps[step]()
        except Exception as exc:  # noqa: BLE001 - reported as one line naming the step
            state["failed"] = {"step": step, "error": f"{type(exc).__name__}: {exc}"[:2000]}
            _save(root, state)
            raise StepFailed(step, exc) from exc
        state["durations"][step] = round(time.time() - t0, 2)
        state["done"].append(step)
        state.pop("failed", None)
        _save(root, state)
    state["finished"] = True
    summary = _summary(root, state)
    fsio.atomic_write_text(fsio.join(runs_dir(root), state["run_id"], "summary.json"),
                           json.dumps(summary, indent=2, sort_keys=True, default=str))
    _save(root, state)
    return summary


def _build_dataset(cfg, out, progress):
    from pipelines import build_dataset
    ds = build_dataset.run(cfg, previous="latest", progress=progress)
    out["dataset_id"] = ds.id
    out["dataset_stats"] = {k: v for k, v in ds.stats.items() if k != "config"}


def _train(cfg, root, out, progress):
    from recsys.data import trainset
    from recsys.data.dataset import Dataset
    from recsys.jobs import train_version
    dataset = Dataset.open(root, out["dataset_id"])
    ts = trainset.from_dataset(dataset, cfg.model.history_length)
    full = (trainset.from_dataset(dataset, cfg.model.history_length, include_validation=True)
            if cfg.model.refit and "validation" in ts.evals else None)
    out.setdefault("candidates", {})
    for name in cfg.nightly.models:
        if name in out["candidates"]:
            continue  # resumed: this one finished before
        out["candidates"][name] = train_version(cfg, name, out["dataset_id"], "auto", progress, ts=ts, full_ts=full)


def _evaluate(cfg, root, out, progress):
    ks = tuple(cfg.evaluation.ks)
    results = {}
    production = registry.current_version(root)
    targets = dict(out["candidates"])
    if production:
        targets["production"] = production
    for label, version in targets.items():
        res = evaluate.evaluate_version(root, version, "test", out["dataset_id"], ks)
        results[label] = {"version": version, "metrics": res["model_metrics"], "sources": res["sources"]}
        results["popularity_baseline"] = {"version": None, "metrics": res["popularity_metrics"]}
        if label != "production":
            registry.update_manifest(root, version, test_metrics=res["model_metrics"])
        m = res["model_metrics"]
        progress(f"  {label:<11} {version}: recall@20 {m.get('recall@20', 0):.4f} ndcg@20 {m.get('ndcg@20', 0):.4f}")
    out["evaluation"] = results


def _gate(cfg, root, out, progress):
    """Best candidate by the primary metric; publish only if not worse than production (paired
    comparison on the same users) beyond the tolerance, or on a first run, if it beats popularity."""
    metric, tol = cfg.nightly.primary_metric, cfg.nightly.tolerance
    ev = out["evaluation"]
    cands = {k: v for k, v in ev.items() if k in out["candidates"]}
    best = max(cands, key=lambda k: cands[k]["metrics"][metric])
    best_v = cands[best]["version"]
    score = cands[best]["metrics"][metric]
    production = ev.get("production", {}).get("version")
    decision = {"metric": metric, "tolerance": tol, "best": best, "candidate": best_v, "candidate_score": score}
    if production:
        c = ab.compare(root, production, best_v, "test", out["dataset_id"], tuple(cfg.evaluation.ks), metric)
        decision.update(production=production, production_score=c["primary"]["a"], delta=c["primary"]["delta"],
                        ci=[c["primary"]["ci_low"], c["primary"]["ci_high"]], p_value=c["primary"]["p_value"],
                        verdict=c["verdict"])
        decision["publish"] = best_v != production and c["primary"]["delta"] >= -tol
        reason = (f"{best} {score:.4f} vs production {c['primary']['a']:.4f} (delta {c['primary']['delta']:+.4f}, "
                  f"tolerance {tol})")
    else:
        pop = ev["popularity_baseline"]["metrics"][metric]
        decision.update(production=None, popularity_score=pop, publish=score > pop or best == "popularity")
        reason = f"first run: {best} {score:.4f} vs popularity {pop:.4f}"
    decision["reason"] = reason
    out["gate"] = decision
    progress(f"  gate: {'PUBLISH' if decision['publish'] else 'KEEP PRODUCTION'} {best_v}: {reason}")


def _index(cfg, root, out, progress):
    from recsys.jobs import build_version_index
    out["index"] = build_version_index(cfg, root, out["gate"]["candidate"], progress)


def _batch(cfg, root, out, progress):
    from pipelines import batch_recommend
    out["batch_recommendations"] = batch_recommend.run(cfg, root, out["gate"]["candidate"], progress=progress)


def _publish(cfg, root, out, progress):
    version = out["gate"]["candidate"]
    registry.publish(root, version, reason=f"nightly gate: {out['gate']['reason']}")
    out["published"] = version
    out["pruned"] = prune(root, cfg.nightly.keep_versions)
    progress(f"  published {version}; pruned {len(out['pruned'])} old version(s)")


def _summary(root: str, state: dict) -> dict:
    out = state["outputs"]
    return {"run_id": state["run_id"], "steps": state["done"], "durations": state["durations"],
            "dataset_id": out.get("dataset_id"), "dataset_stats": out.get("dataset_stats"),
            "candidates": out.get("evaluation"), "gate": out.get("gate"),
            "published": out.get("published"), "current": registry.current_version(root),
            "pruned": out.get("pruned", [])}
