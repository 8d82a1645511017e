"""Beam runner setup, in one place for every pipeline of `pipelines/`.

`runner.name` picks the runner and `runner.options` passes any Beam pipeline option through unchanged
(project, region, temp_location for Dataflow; flink_master for Flink...).
"""
from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from recsys.config import Config


def pipeline_options(cfg: Config) -> PipelineOptions:
    """Pass-through options from `runner.options` (any Beam flag, e.g. project, region, temp_location)."""
    flags = []
    for key, value in cfg.runner.options.items():
        if isinstance(value, bool):
            if value:
                flags.append(f"--{key}")
        else:
            flags.append(f"--{key}={value}")
    return PipelineOptions(flags)


def make_runner(cfg: Config):
    """The Beam runner. 'DirectRunner' means the in-process FnApiRunner: Beam's DirectRunner would
    otherwise pick the PrismRunner, which downloads a binary at start (fails offline)."""
    if cfg.runner.name in ("DirectRunner", "direct", "FnApiRunner"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner
        return FnApiRunner()
    return cfg.runner.name

