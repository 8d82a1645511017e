"""The pipelines on Beam's portable path (the one Flink, Spark and Dataflow use) and on the
multi-process DirectRunner give byte-identical output to the in-process runner."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from pipelines import batch_recommend
from recsys import jobs, version
from recsys.data import trainset
from recsys.models import create
from recsys.evaluation.scorer import validation_metrics

from test_build_dataset import all_files, determinism_input

RUNNERS = {
    "portable_loopback": {"name": "PortableRunner",
                          "options": {"job_endpoint": "embed", "environment_type": "LOOPBACK"}},
    "multi_processing": {"name": "DirectRunner",
                         "options": {"direct_running_mode": "multi_processing", "direct_num_workers": 2}},
}


def _config(make_config, runner: dict):
    return make_config({"source": {"path": "in/part*.csv", "format": "csv", "columns": {"value": "rating"},
                                   "max_id_length": 16, "items_path": "items.csv", "items_format": "movielens_movies"},
                        "filters": {"min_user_interactions": 2, "min_item_interactions": 2, "max_rounds": 6},
                        "split": {"strategy": "leave_last_n"}, "runner": {"shuffle_buckets": 3, **runner},
                        "nightly": {"batch_users_per_bundle": 7}})


@pytest.mark.slow
@pytest.mark.parametrize("runner", list(RUNNERS))
def test_build_dataset_and_batch_recommendations_are_byte_identical_on_other_runners(
        runner, write_file, make_config, build_dataset, monkeypatch):
    from apache_beam.runners.portability import fn_api_runner, portable_runner
    used = []
    for cls in (portable_runner.PortableRunner, fn_api_runner.FnApiRunner):
        original = cls.run_pipeline
        monkeypatch.setattr(cls, "run_pipeline", lambda self, *a, _o=original, **k: used.append(
            (type(self).__name__, a[1].view_as(__import__("apache_beam").options.pipeline_options.DirectOptions)
             .direct_running_mode)) or _o(self, *a, **k))
    determinism_input(write_file)
    local = _config(make_config, {})
    other = _config(make_config, RUNNERS[runner])
    a = build_dataset(local, dataset_id="local", previous=None)
    b = build_dataset(other, dataset_id="other", previous=None)
    files_a, files_b = all_files(a.path), all_files(b.path)
    assert sorted(files_a) == sorted(files_b) and len(files_a) > 10
    assert [f for f in files_a if f != "stats.json" and files_a[f] != files_b[f]] == []
    stats_a, stats_b = (json.loads(f["stats.json"]) for f in (files_a, files_b))
    assert stats_a.pop("config")["runner"] != stats_b.pop("config")["runner"]
    assert stats_a == stats_b

    # batch recommendations of one version, scored under each runner
    root = local.resolve(local.artifacts.root)
    ts = trainset.from_dataset(a, 5)
    model = create("popularity", local.model)
    model.fit(ts, validate=validation_metrics)
    v = version.save_fitted(model, ts, local, root, a)
    jobs.index_version(local, root, v, progress=lambda *_: None)
    out_a = all_files(batch_recommend.run(local, root, v, k=5, progress=lambda *_: None))
    out_b = all_files(batch_recommend.run(other, root, v, k=5, progress=lambda *_: None))
    assert len(out_a) == int(np.ceil(len(ts.user_ids) / 7)) and out_a == out_b
    # the runner asked for is the one that ran (not the in-process one under another name)
    want = ("PortableRunner", "in_memory") if runner == "portable_loopback" else ("FnApiRunner", "multi_processing")
    assert used.count(want) == 2, used


def test_a_local_worker_pool_without_recsys_on_its_python_is_one_line_not_a_hang(make_config, tmp_path, monkeypatch):
    from pipelines.runner import pipeline_options
    from recsys.errors import ConfigError
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text("#!/bin/sh\nexit 1\n")       # an interpreter without Beam or recsys
    (fake / "python").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake))
    cfg = make_config({"runner": {"name": "PortableRunner", "options": {
        "job_endpoint": "embed", "environment_type": "EXTERNAL", "environment_config": "localhost:50000"}}})
    with pytest.raises(ConfigError, match="cannot import apache_beam and recsys") as info:
        pipeline_options(cfg)
    assert "\n" not in str(info.value) and str(fake / "python") in str(info.value)
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    pipeline_options(cfg)                                       # the virtualenv first: accepted
