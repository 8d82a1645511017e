"""The `recsys` command line. Errors a user can cause print one line and exit 2; no tracebacks.

This module parses arguments and calls `recsys` functions. Commands import their implementation
lazily, so `recsys --help` stays fast. The Beam jobs (`pipelines/`) and the HTTP service (`serving/`)
depend on `recsys`, not the reverse: `_outside` is the one door through which recsys reaches them.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from recsys.config import load_config
from recsys.errors import RecsysError


def _outside(module: str):
    """The CLI's one door to `pipelines.*` and `serving.*` (imported here only, when a command needs them)."""
    if module.split(".")[0] not in ("pipelines", "serving"):
        raise ValueError(module)
    return importlib.import_module(module)


def _root(cfg) -> str:
    return cfg.resolve(cfg.artifacts.root)


def _build_dataset(args) -> int:
    cfg = load_config(args.config)
    _outside("pipelines.build_dataset").run(cfg, dataset_id=args.dataset_id,
                                            previous=None if args.fresh_vocab else (args.previous or "latest"))
    return 0


def _train(args) -> int:
    from recsys.jobs import train_version
    cfg = load_config(args.config)
    train_version(cfg, args.model, dataset_id=args.dataset, warm_start=args.warm_start)
    return 0


def _evaluate(args) -> int:
    from recsys import registry, version
    from recsys.evaluation import evaluate
    cfg = load_config(args.config)
    root = _root(cfg)
    v = registry.resolve_version(root, args.model)
    ks = tuple(cfg.evaluation.ks)
    result = evaluate.evaluate_version(root, v, args.split, args.dataset, ks)
    print(f"evaluate: {v} on dataset {result.dataset_id} split {args.split} (full catalog, seen items excluded)")
    print(evaluate.format_table(result, ks))
    print(f"wrote {version.write_metrics(root, v, args.split, result.metrics_entry())}")
    return 0


def _index(args) -> int:
    from recsys import jobs, registry
    cfg = load_config(args.config)
    root = _root(cfg)
    jobs.index_version(cfg, root, registry.resolve_version(root, args.model))
    return 0


def _serve(args) -> int:
    cfg = load_config(args.config)
    root = args.root or _root(cfg)
    print(f"serve: http://{args.host}:{args.port} root={root} workers={args.workers}")
    _outside("serving.main").serve(root, host=args.host, port=args.port, workers=args.workers,
                                   poll_seconds=args.poll_seconds, admin_token=args.admin_token)
    return 0


def _compare(args) -> int:
    from recsys import fsio, registry
    from recsys.evaluation import compare, report
    cfg = load_config(args.config)
    root = _root(cfg)
    a, b = registry.resolve_version(root, args.a), registry.resolve_version(root, args.b)
    c = compare.compare(root, a, b, args.split, args.dataset, tuple(cfg.evaluation.ks),
                        args.primary or cfg.nightly.primary_metric)
    out = args.out or fsio.join(root, "reports", f"{a}__vs__{b}")
    paths = report.write_report(c, out)
    print(report.markdown(c))
    print(f"verdict: {c.verdict}")
    print(f"wrote {paths['md']}, {paths['html']}, {paths['json']}")
    return 0


def _versions(args) -> int:
    from recsys import registry
    cfg = load_config(args.config)
    print(registry.format_versions(_root(cfg)))
    return 0


def _publish(args) -> int:
    from recsys import registry
    cfg = load_config(args.config)
    root = _root(cfg)
    version = registry.resolve_version(root, args.version)
    registry.publish(root, version, reason="manual")
    print(f"published {version}")
    return 0


def _rollback(args) -> int:
    from recsys import registry
    cfg = load_config(args.config)
    print(f"rolled back to {registry.rollback(_root(cfg))}")
    return 0


def _nightly(args) -> int:
    cfg = load_config(args.config)
    summary = _outside("pipelines.nightly").run(cfg, resume=args.resume)
    _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    g = summary.get("gate") or {}
    dur = summary.get("durations", {})
    print(f"nightly: run {summary['run_id']} done in {sum(dur.values()):.0f}s "
          f"({', '.join(f'{k} {v:.0f}s' for k, v in dur.items())}); dataset {summary['dataset_id']}; "
          f"gate: {'published ' + str(summary.get('published')) if g.get('publish') else 'kept production'} "
          f"({g.get('reason', '')}); CURRENT={summary.get('current')}")


def _demo(args) -> int:
    """The README's main job on the embedded data: nightly, A/B verdict vs popularity, sample answers."""
    from recsys import fsio, registry, version
    from recsys.evaluation import compare, report
    from recsys.models import MODELS
    from recsys.retrieval.engine import Engine
    cfg = load_config(args.config)
    root = _root(cfg)
    summary = _outside("pipelines.nightly").run(cfg)
    _print_summary(summary)
    current = registry.current_version(root)
    cands = summary.get("candidates") or {}
    metric = cfg.nightly.primary_metric
    baseline = next((k for k in cands if k in MODELS and not MODELS[k].personalized), None)
    personal = {k: v for k, v in cands.items() if k in MODELS and MODELS[k].personalized}
    if baseline and personal:
        best = max(personal, key=lambda k: personal[k]["metrics"][metric])
        a, b = cands[baseline]["version"], personal[best]["version"]
        c = compare.compare(root, a, b, "test", summary["dataset_id"], tuple(cfg.evaluation.ks), metric)
        paths = report.write_report(c, fsio.join(root, "reports", f"{a}__vs__{b}"))
        print(f"A/B {best} (B) vs {baseline} (A): {c.verdict}")
        print(f"report: {paths['html']}")
    if current:
        engine = Engine.load(root, current)
        user = str(engine.lv.users.ids[0])
        rec = engine.recommend(user, 5)
        items = version.load_item_attributes(root, current, ["item", "title"])
        titles = dict(zip(items["item"], items["title"])) if items is not None else {}
        print(f"top 5 for user {user} ({rec.source}, {rec.version}):")
        for item, score in zip(rec.items, rec.scores):
            print(f"  {item:>8}  {score:6.3f}  {titles.get(item, '')}")
        print("serve it:  .venv/bin/recsys serve --config data/recsys.yaml   (or: make serve)")
        print(f"query it:  curl 'http://127.0.0.1:8000/v1/users/{user}/recommendations?k=10'")
        print("           curl -X POST http://127.0.0.1:8000/v1/recommendations "
              "-H 'content-type: application/json' -d '{\"history\": [\"1\", \"260\"], \"k\": 5}'")
    return 0


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return port


def parser() -> argparse.ArgumentParser:
    """The argument parser of every `recsys` command."""
    p = argparse.ArgumentParser(prog="recsys", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="show library logs and tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build-dataset", help="run the Beam pipeline: raw interactions -> dataset")
    b.add_argument("--config", help="YAML config (default: built-in defaults on data/)")
    b.add_argument("--dataset-id", help="name of the new dataset (default: UTC timestamp)")
    b.add_argument("--previous", help="dataset id whose vocabularies to extend (default: the latest)")
    b.add_argument("--fresh-vocab", action="store_true", help="do not extend a previous dataset's vocabularies")
    b.set_defaults(func=_build_dataset)

    t = sub.add_parser("train", help="train a model version on a dataset")
    t.add_argument("--config")
    from recsys.models import MODELS
    t.add_argument("--model", required=True, choices=list(MODELS))
    t.add_argument("--dataset", help="dataset id (default: the latest)")
    t.add_argument("--warm-start", default="auto",
                   help="version to warm-start from: auto (published or latest of this model), none, or a version")
    t.set_defaults(func=_train)

    e = sub.add_parser("evaluate", help="full-catalog metrics of a version vs popularity")
    e.add_argument("--config")
    e.add_argument("--model", default="current", help="version (default: the published one; 'latest' = newest)")
    e.add_argument("--split", default="test", choices=["validation", "test"])
    e.add_argument("--dataset", help="dataset id (default: the version's own dataset)")
    e.set_defaults(func=_evaluate)

    i = sub.add_parser("index", help="build the ScaNN index of a version and measure its recall")
    i.add_argument("--config")
    i.add_argument("--model", default="latest", help="version (default: the newest)")
    i.set_defaults(func=_index)

    v = sub.add_parser("serve", help="start the HTTP service on the published version")
    v.add_argument("--config")
    v.add_argument("--root", help="artifact root (default: artifacts.root of the config)")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=_port, default=8000, help="TCP port, 1-65535 (default: 8000)")
    v.add_argument("--workers", type=int, default=1)
    v.add_argument("--poll-seconds", type=float, default=10.0, help="how often CURRENT is checked")
    v.add_argument("--admin-token", default=os.environ.get("RECSYS_ADMIN_TOKEN", ""),
                   help="token for POST /admin/reload (default: $RECSYS_ADMIN_TOKEN)")
    v.set_defaults(func=_serve)

    c = sub.add_parser("compare", help="offline A/B of two versions on the same held-out users")
    c.add_argument("a", help="version A (baseline; 'current' = the published one)")
    c.add_argument("b", help="version B (candidate; 'latest' = the newest)")
    c.add_argument("--config")
    c.add_argument("--split", default="test", choices=["validation", "test"])
    c.add_argument("--dataset", help="dataset id (default: B's dataset)")
    c.add_argument("--primary", help="metric of the verdict (default: nightly.primary_metric of the config)")
    c.add_argument("--out", help="report directory (default: <root>/reports/A__vs__B)")
    c.set_defaults(func=_compare)

    vs = sub.add_parser("versions", help="list model versions")
    vs.add_argument("--config")
    vs.set_defaults(func=_versions)
    pb = sub.add_parser("publish", help="point CURRENT at a version")
    pb.add_argument("version")
    pb.add_argument("--config")
    pb.set_defaults(func=_publish)
    rb = sub.add_parser("rollback", help="back to the previously published version")
    rb.add_argument("--config")
    rb.set_defaults(func=_rollback)

    n = sub.add_parser("nightly", help="dataset, train, evaluate, gate, index, batch recs, publish")
    n.add_argument("--config")
    n.add_argument("--resume", action="store_true", help="continue the last unfinished run")
    n.set_defaults(func=_nightly)

    d = sub.add_parser("demo", help="the main job on the embedded data (what `make demo` runs)")
    d.add_argument("--config", default="data/recsys.yaml")
    d.set_defaults(func=_demo)
    return p


def main(argv=None) -> int:
    """Run one command; returns the exit code (2: an error the user can fix, printed as one line)."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:
        for name in ("apache_beam", "tensorflow", "absl", "root"):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        return args.func(args)
    except RecsysError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # a path the user gave that cannot be read or written (missing, unwritable, full disk)
        if args.verbose:
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
