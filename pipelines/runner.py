"""Beam runner setup, in one place for every pipeline of `pipelines/`.

`runner.name` picks the runner and `runner.options` passes any Beam pipeline option through unchanged
(project, region, temp_location for Dataflow; flink_master for Flink...).
"""
from __future__ import annotations

import contextlib
import io

from apache_beam.options.pipeline_options import PipelineOptions

from recsys.config import Config
from recsys.errors import ConfigError


def pipeline_options(cfg: Config) -> PipelineOptions:
    """Pass-through options from `runner.options` (any Beam flag, e.g. project, region, temp_location)."""
    flags = []
    for key, value in cfg.runner.options.items():
        if isinstance(value, bool):
            if value:
                flags.append(f"--{key}")
        else:
            flags.append(f"--{key}={value}")
    options = PipelineOptions(flags)
    # Beam parses with argparse, which prints its whole usage (over 100 lines) and exits on a bad
    # value: parse here, keep its one "error:" line, and say which config key it came from.
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            options.get_all_options()
    except SystemExit:
        errors = [line.split("error:", 1)[1].strip() for line in captured.getvalue().splitlines() if "error:" in line]
        raise ConfigError("runner.options", cfg.runner.options,
                          errors[-1] if errors else "not valid Beam pipeline options") from None
    _check_worker_python(cfg)
    return options


def _check_worker_python(cfg: Config) -> None:
    """A portable job whose SDK workers start on this machine (environment_type PROCESS, or EXTERNAL
    on a local worker pool, which runs `python` from its PATH) hangs silently when that interpreter
    cannot import Beam and recsys: check it first and say so in one line."""
    opts = cfg.runner.options
    env = str(opts.get("environment_type", "")).upper()
    where = str(opts.get("environment_config", ""))
    if env not in ("PROCESS", "EXTERNAL") or (env == "EXTERNAL" and not where.startswith(("localhost", "127.", "["))):
        return
    import shutil
    import subprocess
    python = shutil.which("python") or shutil.which("python3")
    ok = False
    if python:
        try:
            ok = subprocess.run([python, "-c", "import apache_beam, recsys"], capture_output=True,
                                timeout=60).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
    if not ok:
        raise ConfigError("runner.options.environment_type", env,
                          f"its SDK workers run `python` from PATH ({python or 'none found'}), which cannot "
                          f"import apache_beam and recsys: put the virtualenv's bin directory first on PATH "
                          f"for the worker pool and for this command")


# The names that mean the in-process FnApiRunner (make_runner), which holds every collection in memory.
IN_PROCESS = ("DirectRunner", "FnApiRunner")


def make_runner(cfg: Config):
    """The Beam runner. 'DirectRunner' means the in-process FnApiRunner: Beam's DirectRunner would
    otherwise pick the PrismRunner, which downloads a binary at start (fails offline)."""
    if cfg.runner.name in IN_PROCESS:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner
        return FnApiRunner()
    return cfg.runner.name

