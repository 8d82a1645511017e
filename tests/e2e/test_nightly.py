"""Nightly: happy path, fault injection with --resume, the gate, pruning, batch = service answers."""
import json
import os

import numpy as np
import pytest

from pipelines import batch_recommend, nightly
from recsys import registry
from recsys import version as version_mod
from tests.conftest import config_for
from recsys.engine import Engine
from recsys.data.synthetic import clustered_interactions, clustered_items


def make_cfg(tmp, **nightly_cfg):
    return config_for(tmp, model={"epochs": 5},
                      nightly={"models": ["mf", "popularity"], "batch_top_n": 10, "batch_users_per_bundle": 64,
                               **nightly_cfg})


@pytest.fixture
def workdir(tmp_path):
    clustered_interactions(n_users=150, n_items=120, n_clusters=4, per_user=20, seed=5).to_csv(
        tmp_path / "events.csv", index=False)
    clustered_items(120, 4).to_csv(tmp_path / "items.csv", index=False)
    return tmp_path


def quiet(*_):
    pass


def test_first_run_publishes_a_model_that_beats_popularity(workdir):
    cfg = make_cfg(workdir)
    root = cfg.resolve(cfg.artifacts.root)
    summary = nightly.run(cfg, progress=quiet)
    assert summary["gate"]["publish"] and summary["gate"]["best"] == "mf"
    assert registry.current_version(root) == summary["published"] == summary["candidates"]["mf"]["version"]
    assert set(summary["steps"]) == set(nightly.STEPS)
    saved = json.load(open(os.path.join(root, "runs", summary["run_id"], "summary.json")))
    assert saved["gate"]["reason"].startswith("first run")
    assert version_mod.read_manifest(root, summary["published"])["index"]["recall@10"] >= 0.9


def test_batch_recommendations_equal_service_answers(workdir):
    cfg = make_cfg(workdir)
    root = cfg.resolve(cfg.artifacts.root)
    summary = nightly.run(cfg, progress=quiet)
    version = summary["published"]
    recs = batch_recommend.read(root, version)
    engine = Engine.load(root)
    users = version_mod.load_vocabs(root, version)[0].ids
    assert recs["user_id"].nunique() == len(users)
    for user in users[:25]:
        mine = recs[recs["user_id"] == user].sort_values("rank")
        answer = engine.recommend(str(user), 10)
        assert mine["item_id"].tolist() == answer.items
        np.testing.assert_allclose(mine["score"].to_numpy(), answer.scores, rtol=1e-6)
        assert (mine["model_version"] == version).all()


def test_training_failure_leaves_current_and_resume_completes(workdir, monkeypatch):
    cfg = make_cfg(workdir)
    root = cfg.resolve(cfg.artifacts.root)
    first = nightly.run(cfg, progress=quiet)["published"]
    import recsys.jobs as tj
    real = tj.train_version

    def broken(*a, **k):
        raise RuntimeError("injected training failure")
    monkeypatch.setattr(tj, "train_version", broken)
    with pytest.raises(nightly.StepFailed, match="step train failed: RuntimeError: injected"):
        nightly.run(cfg, progress=quiet)
    assert registry.current_version(root) == first
    monkeypatch.setattr(tj, "train_version", real)
    summary = nightly.run(cfg, resume=True, progress=quiet)
    assert summary["steps"][0] == "build_dataset" and "train" in summary["steps"]
    assert summary["current"] == registry.current_version(root)


def test_killed_between_writing_a_version_and_publishing(workdir, monkeypatch):
    cfg = make_cfg(workdir, tolerance=1.0)  # the gate lets tonight's candidate through
    root = cfg.resolve(cfg.artifacts.root)
    first = nightly.run(cfg, progress=quiet)["published"]

    class Killed(BaseException):
        """Not an Exception: like SIGKILL/KeyboardInterrupt, nothing in the run handles it."""
    real_publish = registry.publish

    def killed(*a, **k):
        raise Killed()
    monkeypatch.setattr(registry, "publish", killed)
    monkeypatch.setattr(nightly.registry, "publish", killed)
    with pytest.raises(Killed):
        nightly.run(cfg, progress=quiet)
    assert registry.current_version(root) == first
    state = nightly.last_unfinished_run(root)
    assert state and "batch_recommendations" in state["done"] and "publish" not in state["done"]
    monkeypatch.setattr(registry, "publish", real_publish)
    monkeypatch.setattr(nightly.registry, "publish", real_publish)
    summary = nightly.run(cfg, resume=True, progress=quiet)
    assert summary["published"] == state["outputs"]["gate"]["candidate"] == registry.current_version(root)
    assert nightly.last_unfinished_run(root) is None


def test_gate_rejects_a_worse_model(workdir):
    cfg = make_cfg(workdir)
    root = cfg.resolve(cfg.artifacts.root)
    first = nightly.run(cfg, progress=quiet)["published"]
    # tonight only a popularity candidate: clearly worse than the published mf on planted clusters
    cfg2 = make_cfg(workdir, models=["popularity"])
    summary = nightly.run(cfg2, progress=quiet)
    g = summary["gate"]
    assert not g["publish"] and g["delta"] < 0 and g["production"] == first
    assert registry.current_version(root) == first
    assert "index" in summary["steps"]  # skipped steps are recorded as done


def test_pruning_keeps_published_and_previous(workdir):
    cfg = make_cfg(workdir, keep_versions=2, tolerance=1.0)
    root = cfg.resolve(cfg.artifacts.root)
    published = []
    for _ in range(3):
        published.append(nightly.run(cfg, progress=quiet)["published"])
    versions = registry.list_versions(root)
    assert published[-1] in versions and registry.previous_published(root) in versions
    assert len(versions) <= 3
    assert registry.current_version(root) == published[-1]


def test_datasets_and_leftover_temporary_folders_are_pruned_too(workdir):
    cfg = make_cfg(workdir, keep_versions=2, keep_datasets=1, tolerance=1.0)
    root = cfg.resolve(cfg.artifacts.root)
    for _ in range(3):
        nightly.run(cfg, progress=quiet)
    from recsys.data import dataset as ds
    kept = {version_mod.read_manifest(root, v)["dataset_id"] for v in registry.list_versions(root)}
    # LATEST and the datasets of the kept versions stay; the others go
    assert set(ds.list_datasets(root)) == kept | {ds.latest_dataset_id(root)}
    stale = os.path.join(root, "models", ".tmp-crashed-version-1234")
    os.makedirs(stale)
    os.utime(stale, (0, 0))
    fresh = os.path.join(root, "datasets", ".tmp-being-written-5678")
    os.makedirs(fresh)
    summary_lines = []
    nightly.run(cfg, progress=summary_lines.append)
    assert not os.path.exists(stale) and os.path.exists(fresh)     # a live writer's folder is left alone


def _lock_path(root):
    return os.path.join(root, nightly.LOCK)


def test_a_second_nightly_or_a_resume_refuses_while_the_lock_is_held(workdir):
    cfg = make_cfg(workdir)
    root = cfg.resolve(cfg.artifacts.root)
    os.makedirs(root, exist_ok=True)
    held = {"pid": os.getppid(), "host": __import__("socket").gethostname(), "started_at":   # alive, not us
            __import__("datetime").datetime.now(__import__("datetime").timezone.utc).isoformat(timespec="seconds"),
            "token": "other"}
    with open(_lock_path(root), "w") as fh:
        json.dump(held, fh)
    for resume in (False, True):
        with pytest.raises(nightly.DataError, match="another run holds nightly.lock"):
            nightly.run(cfg, resume=resume, progress=quiet)
    assert registry.current_version(root) is None and not os.path.exists(os.path.join(root, "runs"))
    os.remove(_lock_path(root))


def test_a_stale_lock_is_taken_over_and_a_finished_run_releases_it(workdir):
    cfg = make_cfg(workdir)
    root = cfg.resolve(cfg.artifacts.root)
    os.makedirs(root, exist_ok=True)
    with open(_lock_path(root), "w") as fh:   # a pid that is not running on this host
        json.dump({"pid": 2 ** 22 + 12345, "host": __import__("socket").gethostname(),
                   "started_at": "2026-01-01T00:00:00+00:00", "token": "dead"}, fh)
    lines = []
    summary = nightly.run(cfg, progress=lines.append)
    assert summary["published"] and any("taking over a stale nightly.lock" in x for x in lines)
    assert not os.path.exists(_lock_path(root))


def test_batch_recommend_verb_writes_the_published_versions_recommendations(workdir, capsys):
    from recsys import cli
    cfg = make_cfg(workdir)
    published = nightly.run(cfg, progress=quiet)["published"]
    path = os.path.join(str(workdir), "c.yaml")
    with open(path, "w") as fh:
        fh.write(f"artifacts:\n  root: {cfg.resolve(cfg.artifacts.root)}\n")
    assert cli.main(["batch-recommend", "published", "-k", "3", "--config", path]) == 0
    recs = batch_recommend.read(cfg.resolve(cfg.artifacts.root), published)
    assert len(recs) and recs.groupby("user_id").size().max() == 3


ISOLATION_SCRIPT = r"""
import json, os, sys
from pathlib import Path
from recsys.config import from_dict
from recsys.data.synthetic import clustered_interactions, clustered_items
from pipelines import nightly
tmp = Path(sys.argv[1])
clustered_interactions(n_users=150, n_items=120, n_clusters=4, per_user=20, seed=5).to_csv(tmp / "events.csv", index=False)
clustered_items(120, 4).to_csv(tmp / "items.csv", index=False)
# (not tests.conftest: it imports Beam and TensorFlow into this process)
cfg = from_dict({"source": {"path": str(tmp / "events.csv"), "format": "csv", "items_path": str(tmp / "items.csv"), "items_format": "csv",
                            "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "value": "rating"},
                            "item_columns": {"item": "item_id", "title": "title", "genres": "genres"}},
                 "split": {"strategy": "leave_last_n", "leave_last_n": 2}, "artifacts": {"root": str(tmp / "artifacts")},
                 "model": {"dim": 16, "batch_size": 256, "epochs": 3},
                 "nightly": {"models": ["mf", "popularity"], "isolate_steps": True, "batch_top_n": 10}},
                base_dir=str(tmp))
summary = nightly.run(cfg, progress=lambda line: None)
state = json.load(open(tmp / "artifacts" / "runs" / summary["run_id"] / "state.json"))
print(json.dumps({"parent": os.getpid(), "processes": state["processes"], "stages": state["stages"],
                  "published": summary["published"],
                  "heavy": sorted(m for m in ("tensorflow", "apache_beam", "scann") if m in sys.modules)}))
"""


def test_isolated_steps_run_in_their_own_processes_and_the_parent_never_loads_tensorflow(tmp_path):
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", ISOLATION_SCRIPT, str(tmp_path)], cwd=repo, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    pids = report["processes"]
    assert set(pids) == {"build_dataset", "train:mf", "train:popularity", "evaluate", "gate", "index",
                         "batch_recommendations"}
    assert pids["evaluate"] == pids["gate"]           # the gate reads the evaluations in memory
    distinct = {p for k, p in pids.items() if k != "gate"}
    assert len(distinct) == 6 and report["parent"] not in distinct
    assert report["heavy"] == []                        # no TensorFlow, Beam or ScaNN in the parent
    assert report["published"]
    # each step's cost is measured in its own process, and train's is the models' (max of their peaks)
    stages = report["stages"]
    assert stages["train"]["peak_rss_mb"] == max(stages["train:mf"]["peak_rss_mb"],
                                                 stages["train:popularity"]["peak_rss_mb"])


def test_a_step_process_killed_mid_way_fails_the_step_and_the_run_resumes(workdir):
    import multiprocessing
    import signal
    cfg = make_cfg(workdir, isolate_steps=True)
    root = cfg.resolve(cfg.artifacts.root)
    killed = []

    def kill_the_training(line: str):
        # the first line a model's training prints, once its data is read: kill the step's process
        # like the out-of-memory killer would
        if "train " in line and ": dataset " in line and not killed:
            for child in multiprocessing.active_children():
                os.kill(child.pid, signal.SIGKILL)
                killed.append(child.pid)
    with pytest.raises(nightly.StepFailed, match="step train failed: ChildDied: .*killed by signal 9"):
        nightly.run(cfg, progress=kill_the_training)
    assert killed and registry.current_version(root) is None
    state = nightly.last_unfinished_run(root)
    assert state["failed"]["step"] == "train" and "build_dataset" in state["done"]
    summary = nightly.run(cfg, resume=True, progress=quiet)
    assert summary["published"] == registry.current_version(root)
    assert set(summary["steps"]) == set(nightly.STEPS)


def _matches(value, schema: dict) -> bool:
    """The subset of JSON Schema docs/nightly-summary.schema.json uses: type (or a list), const, enum,
    required, items, additionalProperties."""
    kinds = {"string": str, "number": (int, float), "object": dict, "array": list, "null": type(None),
             "boolean": bool, "integer": int}
    if "const" in schema and value != schema["const"]:
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(isinstance(value, kinds[t]) for t in types):
            return False
    if isinstance(value, dict):
        if any(k not in value for k in schema.get("required", [])):
            return False
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and not all(_matches(v, extra) for v in value.values()):
            return False
        if not all(_matches(value[k], s) for k, s in schema.get("properties", {}).items() if k in value):
            return False
    if isinstance(value, list) and "items" in schema:
        return all(_matches(v, schema["items"]) for v in value)
    return True


def test_exit_codes_no_publish_and_the_json_summary_schema(workdir, capsys):
    """published 0, kept production 3, --no-publish 4 (CURRENT untouched), a failed step 1; every
    --json summary matches docs/nightly-summary.schema.json."""
    from recsys import cli
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    schema = json.load(open(os.path.join(repo, "docs", "nightly-summary.schema.json")))
    conf = workdir / "recsys.yaml"
    base = {"source": {"path": str(workdir / "events.csv"), "format": "csv", "items_path": str(workdir / "items.csv"),
                       "items_format": "csv", "columns": {"user": "user_id", "item": "item_id",
                                                          "timestamp": "timestamp", "value": "rating"},
                       "item_columns": {"item": "item_id", "title": "title", "genres": "genres"}},
            "split": {"strategy": "leave_last_n", "leave_last_n": 2}, "artifacts": {"root": str(workdir / "artifacts")},
            "model": {"dim": 16, "batch_size": 256, "epochs": 3},
            "nightly": {"models": ["mf", "popularity"], "isolate_steps": False, "batch_top_n": 10}}

    def nightly_json(models, *flags, tolerance=0.0):
        conf.write_text(json.dumps({**base, "nightly": {**base["nightly"], "models": models, "tolerance": tolerance}}))
        code = cli.main(["nightly", "--config", str(conf), "--json", *flags])
        out = capsys.readouterr().out
        summary = json.loads(out)
        assert _matches(summary, schema), summary
        return code, summary
    code, first = nightly_json(["mf", "popularity"])
    assert code == 0 and first["outcome"] == "published" and first["schema"] == schema["$id"]
    code, kept = nightly_json(["popularity"])               # worse than the published mf: kept
    assert code == 3 and kept["outcome"] == "kept" and kept["current"] == first["published"]
    code, held = nightly_json(["mf"], "--no-publish", tolerance=1.0)       # the gate lets it through
    assert code == 4 and held["outcome"] == "not_published" and held["would_publish"]
    assert held["current"] == first["published"] and "publish" in held["steps"]
    conf.write_text(json.dumps({**base, "model": {**base["model"], "distribute": "multi_worker_mirrored"}}))
    assert cli.main(["nightly", "--config", str(conf)]) == 1                   # a step failed
    assert "recsys nightly --resume" in capsys.readouterr().err
