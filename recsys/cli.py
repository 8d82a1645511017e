"""The `recsys` command line. Errors a user can cause print one line and exit 2; no tracebacks.

`recsys nightly` exits 0 when it published, 3 when the gate kept production, 4 with --no-publish, 1 when
a step failed (resumable) and 2 on a user error (docs/OPERATIONS.md).
A reader that closes the pipe early (`recsys versions --json | head`) ends the command quietly with
exit code 141, what a tool killed by SIGPIPE reports.

This module parses arguments and calls `recsys` functions. Commands import their implementation
lazily, so `recsys --help` stays fast. The Beam jobs (`pipelines/`) and the HTTP service (`serving/`)
depend on `recsys`, not the reverse: `_outside` is the one door through which recsys reaches them.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys

from recsys import logs
from recsys.config import load_config
from recsys.errors import RecsysError


def _outside(module: str):
    """The CLI's one door to `pipelines.*` and `serving.*` (imported here only, when a command needs them)."""
    if module.split(".")[0] not in ("pipelines", "serving"):
        raise ValueError(module)
    return importlib.import_module(module)


def _config(args):
    """The config of a command: --config, else $RECSYS_CONFIG, else ./recsys.yaml; else one line saying so
    (a forgotten --config used to run silently on built-in MovieLens defaults)."""
    path = getattr(args, "config", None) or os.environ.get("RECSYS_CONFIG") or \
        ("recsys.yaml" if os.path.isfile("recsys.yaml") else None)
    if path is None:
        raise RecsysError("no config: pass --config FILE, set RECSYS_CONFIG, or put a recsys.yaml in this folder "
                          "(data/recsys.yaml is the MovieLens demo's)")
    cfg = load_config(path)
    from recsys import fsio
    # a bucket without its filesystem installed, or without credentials: one line naming the fix (once per
    # scheme: the credential lookup may ask an instance's metadata service)
    paths = (cfg.artifacts.root, cfg.source.path, cfg.source.items_path, cfg.source.users_path)
    for where in {p.split("://", 1)[0].lower(): p for p in reversed(paths) if fsio.is_url(p)}.values():
        fsio.check_scheme(where)
    return cfg


def _print_json(obj) -> None:
    import json
    print(json.dumps(obj, indent=2, sort_keys=True, default=_json_default))


def _json_default(o):
    import numpy as np
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _root(cfg) -> str:
    return cfg.resolve(cfg.artifacts.root)


def _init(args) -> int:
    from recsys import init_config
    if os.path.exists(args.out) and not args.force:
        raise RecsysError(f"init: {args.out} exists; pass --force to overwrite it, or --out another file")
    base = os.path.dirname(os.path.abspath(args.out))

    def rel(path):   # the config resolves paths against its own folder
        return path if path is None or "://" in path else os.path.relpath(os.path.abspath(path), base)
    try:
        inferred = init_config.infer(args.events, args.items, args.root,
                                     columns={"user": args.user, "item": args.item, "timestamp": args.time,
                                              "event": args.event, "value": args.value},
                                     delimiter=args.delimiter, catalog_item=args.catalog_item)
    except init_config.Unguessed as e:
        # written anyway, the column marked: the user fixes one line (or reruns with the flag)
        e.inferred.config["source"]["path"] = rel(args.events)
        init_config.write(e.inferred, args.out)
        raise RecsysError(f"{e} (or edit {args.out}, written with it marked {init_config.UNGUESSED})") from None
    inferred.config["source"]["path"] = rel(args.events)
    if args.items:
        inferred.config["source"]["items_path"] = rel(args.items)
    init_config.write(inferred, args.out)
    for note in inferred.notes:
        print(f"  {note}")
    print(f"wrote {args.out}; next: recsys nightly --config {args.out}")
    return 0


def _build_dataset(args) -> int:
    cfg = _config(args)
    _outside("pipelines.build_dataset").run(cfg, dataset_id=args.dataset_id,
                                            previous=None if args.fresh_vocab else (args.previous or "latest"))
    return 0


def _train(args) -> int:
    from recsys.jobs import train_version
    cfg = _config(args)
    train_version(cfg, args.model_type, dataset_id=args.dataset, warm_start=args.warm_start)
    return 0


def _evaluate(args) -> int:
    from recsys import registry, version
    from recsys.evaluation import evaluate
    cfg = _config(args)
    root = _root(cfg)
    v = registry.resolve_version(root, args.version_flag or args.version)
    ks = tuple(cfg.evaluation.ks)
    if args.through_index:
        return _evaluate_through_index(args, root, v, ks)
    result = evaluate.evaluate_version(root, v, args.split, args.dataset, ks)
    path = version.write_metrics(root, v, args.split, result.metrics_entry())
    if args.json:
        _print_json({"version": v, "model": result.model, "split": args.split, **result.metrics_entry()})
        return 0
    print(f"evaluate: {v} on dataset {result.dataset_id} split {args.split} (full catalog, seen items excluded)")
    print(evaluate.format_table(result, ks))
    print(f"wrote {path}")
    return 0


def _evaluate_through_index(args, root: str, v: str, ks) -> int:
    from recsys.evaluation import evaluate
    r = evaluate.evaluate_through_index(root, v, args.split, args.dataset, ks)
    if args.json:
        _print_json({"version": v, "split": args.split, **r.to_dict()})
        return 0
    exact, approx, loss = r.exact.metrics, r.metrics, r.loss()
    sample = f" (a seeded sample of {r.exact.users_total})" if r.exact.sampled else ""
    print(f"evaluate: {v} on dataset {r.exact.dataset_id} split {args.split}, ranked through its {r.index_kind} "
          f"index as the service does vs exact ranking, {exact['users']} users{sample}")
    print(f"{'metric':<14}{'exact':>10}{'index':>10}{'loss':>10}")
    for k in ks:
        for m in ("recall", "ndcg"):
            key = f"{m}@{k}"
            print(f"{key:<14}{exact[key]:>10.4f}{approx[key]:>10.4f}{loss[key]:>+10.4f}")
    print(f"top-{max(ks)} overlap with exact ranking: {r.overlap:.3f}")
    return 0


def _index(args) -> int:
    from recsys import jobs, registry
    cfg = _config(args)
    root = _root(cfg)
    jobs.index_version(cfg, root, registry.resolve_version(root, args.version_flag or args.version))
    return 0


def _serve(args) -> int:
    if args.root:                               # --root alone needs no config (a config's root is checked in _config)
        from recsys import fsio
        fsio.check_scheme(args.root)
    root = args.root or _root(_config(args))
    print(f"serve: http://{args.host}:{args.port} root={root} workers={args.workers}")
    _outside("serving.main").serve(root, host=args.host, port=args.port, workers=args.workers,
                                   poll_seconds=args.poll_seconds, admin_token=args.admin_token,
                                   access_log=args.access_log)
    return 0


def _batch_recommend(args) -> int:
    from recsys import registry
    cfg = _config(args)
    root = _root(cfg)
    _outside("pipelines.batch_recommend").run(cfg, root, registry.resolve_version(root, args.version), k=args.k)
    return 0


def _compare(args) -> int:
    from recsys import fsio, registry
    from recsys.evaluation import compare, report
    cfg = _config(args)
    root = _root(cfg)
    a, b = registry.resolve_version(root, args.a), registry.resolve_version(root, args.b)
    c = compare.compare(root, a, b, args.split, args.dataset, tuple(cfg.evaluation.ks),
                        args.primary or cfg.nightly.primary_metric)
    out = args.out or fsio.join(root, "reports", f"{a}__vs__{b}")
    paths = report.write_report(root, c, out)
    if args.json:
        _print_json({**c.to_dict(), "report": paths})
        return 0
    print(fsio.read_text(paths["md"]).split("## Segments")[0].rstrip())   # the rest is in the files
    print(f"\nverdict: {c.verdict}")
    print(f"wrote {paths['html']} (also report.md, comparison.json)")
    return 0


def _inspect(args) -> int:
    from recsys import fsio, registry
    from recsys.evaluation import inspection
    cfg = _config(args)
    root = _root(cfg)
    v = registry.resolve_version(root, args.version)
    ins = inspection.inspect_version(root, v, k=args.k, attribute=args.attribute)
    out = args.out or fsio.join(root, "reports", f"inspect-{v}")
    fsio.makedirs(out)
    fsio.write_bytes(fsio.join(out, "embedding_map.png"), inspection.map_png(ins))
    fsio.atomic_write_text(fsio.join(out, "inspect.json"), json.dumps(ins.to_dict(), indent=2, default=float))
    if args.json:
        _print_json({**ins.to_dict(), "out": out})
        return 0
    print(inspection.summary(ins))
    print(f"wrote {fsio.join(out, 'embedding_map.png')}, inspect.json")
    return 0


def _versions(args) -> int:
    from recsys import registry
    cfg = _config(args)
    if args.json:
        _print_json(registry.describe_versions(_root(cfg)))
        return 0
    print(registry.format_versions(_root(cfg)))
    return 0


def _recommend(args) -> int:
    from recsys import registry, version
    from recsys.engine import Engine
    cfg = _config(args)
    root = _root(cfg)
    if args.user is None and not args.history:
        raise RecsysError("recommend: give a USER, or --history ITEM ... (or both)")
    engine = Engine.load(root, registry.resolve_version(root, args.version))
    if args.history:
        rec = engine.recommend_for_history(args.history, args.user, args.k, not args.with_seen, args.include,
                                           args.exclude)
    else:
        rec = engine.recommend(args.user, args.k, not args.with_seen, args.include, args.exclude)
    items = version.load_item_attributes(root, engine.version, ["item", "title"])
    titles = dict(zip(items["item"], items["title"])) if items is not None else {}
    if args.json:
        _print_json({**rec.as_dict(), "titles": [titles.get(i, "") for i in rec.items]})
        return 0
    who = f"user {args.user}" if args.user else "an anonymous history"
    print(f"top {len(rec.items)} for {who} ({rec.source}, version {rec.version}):")
    for rank, (item, score) in enumerate(zip(rec.items, rec.scores), start=1):
        print(f"{rank:>4}  {item:>10}  {score:8.3f}  {titles.get(item, '')}")
    if rec.ignored_history:
        print(f"ignored (unknown items): {', '.join(rec.ignored_history)}")
    return 0


def _publish(args) -> int:
    from recsys import registry
    cfg = _config(args)
    root = _root(cfg)
    version = registry.resolve_version(root, args.version)
    registry.publish(root, version, reason="manual")
    print(f"published {version}")
    return 0


def _rollback(args) -> int:
    from recsys import registry
    cfg = _config(args)
    print(f"rolled back to {registry.rollback(_root(cfg), to=args.to)}")
    return 0


# `recsys nightly` exit codes (docs/OPERATIONS.md): a scheduler can tell a night that published from one
# whose gate kept production without parsing the output
EXIT_PUBLISHED, EXIT_FAILED, EXIT_USER_ERROR, EXIT_KEPT, EXIT_NOT_PUBLISHED = 0, 1, 2, 3, 4


def _nightly(args) -> int:
    from recsys.progress import to_stderr
    cfg = _config(args)
    nightly = _outside("pipelines.nightly")
    try:
        summary = nightly.run(cfg, resume=args.resume, progress=to_stderr if args.json else print,
                              publish=not args.no_publish)
    except nightly.StepFailed as exc:
        # a step failed (resumable): not the user's input, so not 2; one line, the state names the step
        if args.verbose:
            raise
        print(f"error: {exc} (recsys nightly --resume continues from it)", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        _print_json(summary)
    else:
        _print_summary(summary)
    return {"published": EXIT_PUBLISHED, "kept": EXIT_KEPT, "not_published": EXIT_NOT_PUBLISHED}[summary["outcome"]]


def _gate_words(summary: dict) -> str:
    if summary.get("published"):
        return f"published {summary['published']}"
    if summary.get("would_publish"):
        return f"would publish {summary['would_publish']} (--no-publish)"
    return "kept production"


def _print_summary(summary: dict) -> None:
    g = summary.get("gate") or {}
    dur = summary.get("durations", {})
    print(f"nightly: run {summary['run_id']} done in {sum(dur.values()):.0f}s "
          f"({', '.join(f'{k} {v:.0f}s' for k, v in dur.items())}); dataset {summary['dataset_id']}; "
          f"gate: {_gate_words(summary)} "
          f"({g.get('reason', '')}); CURRENT={summary.get('current')}")


def _demo(args) -> int:
    """The README's main job on the embedded data: nightly, A/B verdict vs popularity, sample answers."""
    if not getattr(args, "config", None):
        args.config = "data/recsys.yaml"   # the demo's own config (not a default for the other verbs)
    from recsys import fsio, registry
    from recsys.evaluation import compare, report
    from recsys.models import MODELS
    cfg = _config(args)
    root = _root(cfg)
    summary = _outside("pipelines.nightly").run(cfg)
    _print_summary(summary)
    current = registry.current_version(root)
    cands = summary.get("candidates") or {}
    metric = cfg.nightly.primary_metric
    baseline = next((k for k in cands if k in MODELS and not MODELS[k].personalized), None)
    personal = {k: v for k, v in cands.items() if k in MODELS and MODELS[k].personalized}
    verdict = []
    if baseline and personal:
        best = max(personal, key=lambda k: personal[k]["metrics"][metric])
        a, b = cands[baseline]["version"], personal[best]["version"]
        c = compare.compare(root, a, b, "test", summary["dataset_id"], tuple(cfg.evaluation.ks), metric)
        paths = report.write_report(root, c, fsio.join(root, "reports", f"{a}__vs__{b}"))
        verdict = [f"report: {paths['html']}", f"A/B {best} (B) vs {baseline} (A): {c.verdict}"]
    if current:
        users = _print_samples(root, current, summary["dataset_id"])
        print("serve it:  .venv/bin/recsys serve --config data/recsys.yaml   (or: make serve)")
        print(f"query it:  curl 'http://127.0.0.1:8000/v1/users/{users[0] if users else 1}/recommendations?k=10'")
        print("           curl -X POST http://127.0.0.1:8000/v1/recommendations "
              "-H 'content-type: application/json' -d '{\"history\": [\"1\", \"260\"], \"k\": 5}'")
    # the verdict last: it is what a newcomer reads
    for line in verdict:
        print(line)
    return 0


def _print_samples(root: str, current: str, dataset_id: str, n_users: int = 3, k: int = 5) -> list:
    """Top-k with titles for a few users (seeded), each beside the last items they interacted with.
    Returns the users shown."""
    import numpy as np
    from recsys import version
    from recsys.data.dataset import Dataset
    from recsys.engine import Engine
    engine = Engine.load(root, current)
    items = version.load_item_attributes(root, current, ["item", "title"])
    titles = dict(zip(items["item"], items["title"])) if items is not None else {}
    train = Dataset.open(root, dataset_id).read("train", ["user", "item", "timestamp"])
    counts = train["user"].value_counts()
    active = np.sort(counts[counts >= 5].index.to_numpy(dtype=object))
    users = np.random.default_rng(0).choice(active, size=min(n_users, len(active)), replace=False)
    print(f"sample recommendations from {engine.lv.model_name} ({current}), {len(users)} users picked with seed 0:")
    for user in users:
        recent = train[train["user"] == user].sort_values("timestamp").tail(3)["item"]
        print(f"  user {user}, recently: " + "; ".join(titles.get(i, i) for i in reversed(recent.tolist())))
        rec = engine.recommend(str(user), k)
        for rank, (item, score) in enumerate(zip(rec.items, rec.scores), 1):
            print(f"    {rank}. {titles.get(item, item)}  ({score:.3f})")
    return [str(u) for u in users]


def _int_in(low: int, high: float, what: str):
    """An argparse type: an integer in [low, high], else one line saying what was expected."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = None
        if n is None or not low <= n <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return n
    return parse


_port = _int_in(1, 65535, "a TCP port (1-65535)")
_positive = _int_in(1, float("inf"), "a positive integer")


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in --help, but not "(default: None)" nor a second default after one the help states."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or "(default:" in text:
            return text
        return super()._get_help_string(action)


def parser() -> argparse.ArgumentParser:
    """The argument parser of every `recsys` command."""
    from recsys import __version__
    from recsys.models import MODELS
    # flags every command takes, before or after the verb
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="YAML config (default: $RECSYS_CONFIG, else ./recsys.yaml)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show library logs (TensorFlow, Beam) and tracebacks")
    common.add_argument("--log-format", choices=logs.FORMATS, default=argparse.SUPPRESS,
                        help="log lines as UTC text or one JSON object per line "
                             "(default: $RECSYS_LOG_FORMAT, else text)")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
    fmt = _Defaults
    versions_help = ("a version id, or an alias: published (what CURRENT names), latest (the newest), "
                     "latest:<model> (the newest of one model)")

    p = argparse.ArgumentParser(prog="recsys", description=__doc__.splitlines()[0], parents=[common])
    p.add_argument("--version", action="version", version=f"recsys {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def verb(name, func, help, parents=(common,)):
        sp = sub.add_parser(name, help=help, description=help, parents=list(parents), formatter_class=fmt)
        sp.set_defaults(func=func)
        return sp

    ini = sub.add_parser("init", help="write a config for your own event log (and catalog)", formatter_class=fmt,
                         description="read a sample of your files, infer columns, time format, event types "
                                     "and catalog attributes, and write a config that works as it is",
                         parents=[common])
    ini.set_defaults(func=_init)
    ini.add_argument("--events", required=True, help="the interaction log (csv, parquet or jsonl; a glob works)")
    ini.add_argument("--items", help="the catalog (csv, parquet or jsonl), for titles and filters")
    ini.add_argument("--out", default="recsys.yaml", help="the config to write")
    ini.add_argument("--root", default="artifacts", help="artifacts.root of the config")
    ini.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    for flag, what in (("--user", "the user ID"), ("--item", "the item ID"), ("--time", "the event time"),
                       ("--event", "the event type ('' for none)"), ("--value", "a rating or amount ('' for none)")):
        ini.add_argument(flag, metavar="COLUMN", help=f"the log's column of {what}, over any guess")
    ini.add_argument("--delimiter", help="the CSV delimiter, over the one found in the file")
    ini.add_argument("--catalog-item", metavar="COLUMN", help="the catalog's item ID column, over any guess")

    b = verb("build-dataset", _build_dataset, "run the Beam pipeline: raw interactions -> dataset")
    b.add_argument("--dataset-id", help="name of the new dataset (default: UTC timestamp)")
    b.add_argument("--previous", help="dataset id whose vocabularies to extend (default: the latest)")
    b.add_argument("--fresh-vocab", action="store_true", help="do not extend a previous dataset's vocabularies")

    t = verb("train", _train, "train a new version of a model on a dataset")
    t.add_argument("--model-type", "--model", dest="model_type", required=True, choices=list(MODELS),
                   help="which model to train")
    t.add_argument("--dataset", help="dataset id (default: the latest)")
    t.add_argument("--warm-start", default="auto",
                   help="version to warm-start from: auto (published or latest of this model), none, or a version")

    e = verb("evaluate", _evaluate, "full-catalog metrics of a version vs popularity", (common, as_json))
    e.add_argument("version", nargs="?", default="published", help=versions_help)
    e.add_argument("--model", dest="version_flag", help=argparse.SUPPRESS)   # the old spelling of VERSION
    e.add_argument("--split", default="test", choices=["validation", "test"], help="held-out split")
    e.add_argument("--dataset", help="dataset id (default: the version's own dataset)")
    e.add_argument("--through-index", action="store_true",
                   help="rank through the version's ANN index and the service's exclusions, and report "
                        "the loss against exact ranking")

    ins = verb("inspect", _inspect, "a version's item embeddings: neighbour agreement on an attribute, a 2-D map",
               (common, as_json))
    ins.add_argument("version", nargs="?", default="published", help=versions_help)
    ins.add_argument("-k", type=int, default=10, help="neighbours per item")
    ins.add_argument("--attribute", help="categorical attribute to check (default: genres, else the most filled one)")
    ins.add_argument("--out", help="output folder (default: <root>/reports/inspect-<version>)")

    i = verb("index", _index, "build the item index of a version and measure its recall")
    i.add_argument("version", nargs="?", default="latest", help=versions_help)
    i.add_argument("--model", dest="version_flag", help=argparse.SUPPRESS)

    r = verb("recommend", _recommend, "top-k items for a user (or a history) from a version, as the service answers",
             (common, as_json))
    r.add_argument("user", nargs="?", help="user ID (omit with --history for an anonymous request)")
    r.add_argument("-k", type=int, default=10, help="how many items")
    r.add_argument("--history", nargs="+", metavar="ITEM", help="recent item IDs, newest first")
    r.add_argument("--version", dest="version", default="published", help=versions_help)
    r.add_argument("--include", action="append", default=[], metavar="KEY:VALUE", help="keep only matching items")
    r.add_argument("--exclude", action="append", default=[], metavar="KEY:VALUE", help="drop matching items")
    r.add_argument("--with-seen", action="store_true", help="do not exclude the user's seen items")

    br = verb("batch-recommend", _batch_recommend, "top-k for every known user of a version (Beam), written beside it")
    br.add_argument("version", nargs="?", default="published", help=versions_help)
    br.add_argument("-k", type=int, default=None, help="items per user (default: nightly.batch_top_n)")

    v = verb("serve", _serve, "start the HTTP service on the published version")
    v.add_argument("--root", help="artifact root (default: artifacts.root of the config)")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on")
    v.add_argument("--port", type=_port, default=8000, help="TCP port, 1-65535")
    v.add_argument("--workers", type=_positive, default=1, help="worker processes")
    v.add_argument("--poll-seconds", type=float, default=10.0, help="how often CURRENT is checked")
    v.add_argument("--access-log", action="store_true", help="log one line per request (uvicorn's access log)")
    v.add_argument("--admin-token", default=os.environ.get("RECSYS_ADMIN_TOKEN", ""),
                   help="token for POST /admin/reload (default: $RECSYS_ADMIN_TOKEN)")

    c = verb("compare", _compare, "offline A/B of two versions on the same held-out users", (common, as_json))
    c.add_argument("a", help="version A, the baseline (" + versions_help + ")")
    c.add_argument("b", help="version B, the candidate")
    c.add_argument("--split", default="test", choices=["validation", "test"], help="held-out split")
    c.add_argument("--dataset", help="dataset id (default: B's dataset)")
    c.add_argument("--primary", help="metric of the verdict (default: nightly.primary_metric of the config)")
    c.add_argument("--out", help="report directory (default: <root>/reports/A__vs__B)")

    verb("versions", _versions, "list model versions", (common, as_json))
    pb = verb("publish", _publish, "point CURRENT at a version (after checking it)")
    pb.add_argument("version", help=versions_help)
    rb = verb("rollback", _rollback, "back to the previously published version (again: one further back)")
    rb.add_argument("--to", help="a version published before the current one, to go straight back to")

    n = verb("nightly", _nightly, "dataset, train, evaluate, gate, index, batch recs, publish", (common, as_json))
    n.add_argument("--resume", action="store_true", help="continue the last unfinished run")
    n.add_argument("--no-publish", action="store_true",
                   help="run everything, gate included, but leave CURRENT alone (exit 4; `recsys publish` later)")

    verb("demo", _demo, "the main job on the embedded data (what `make demo` runs; --config: data/recsys.yaml)")
    return p


# what the `train` extra brings (setup.cfg): a command that needs one of them says so in one line
_TRAIN_MODULES = {"apache_beam", "tensorflow_recommenders", "tf_keras", "matplotlib", "markdown"}


# the commands that build datasets, train or draw reports: they need the `train` extra
_TRAIN_COMMANDS = {"build-dataset", "train", "nightly", "demo", "batch-recommend", "compare", "inspect"}


def _check_train_extra(command: str) -> None:
    """One line, before anything runs, when this install (the service image: `recsys[serve]`) lacks
    what `command` needs."""
    import importlib.util
    missing = [m for m in ("apache_beam", "tensorflow_recommenders") if importlib.util.find_spec(m) is None]
    if missing:
        raise RecsysError(f"recsys {command} needs the train extra ({', '.join(missing)} missing; this install "
                          "serves only): pip install 'recsys[train]'")


def main(argv=None) -> int:
    """Run one command; returns the exit code (2: an error the user can fix, printed as one line)."""
    args = parser().parse_args(argv)
    args.verbose = getattr(args, "verbose", False)
    if args.verbose:
        # before TensorFlow is imported (commands import it lazily): its C++ lines are shown again
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        import recsys
        logging.getLogger().removeFilter(recsys._quiet_import_warnings)
    # timestamped (UTC, ISO 8601), so a service's or a nightly's log can be read next to others; a host
    # that configured logging already (an embedding program, pytest) keeps its handlers
    try:
        log_format = logs.log_format(getattr(args, "log_format", None))
    except RecsysError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.environ["RECSYS_LOG_FORMAT"] = log_format    # the nightly's step processes and serve's workers
    logs.configure(args.verbose, log_format)
    try:
        if args.command in _TRAIN_COMMANDS:
            _check_train_extra(args.command)
        return args.func(args)
    except BrokenPipeError:
        # the reader went away (`recsys versions --json | head`): stop quietly, like a tool killed by
        # SIGPIPE; stdout goes to /dev/null so the interpreter's final flush cannot complain again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
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
    except ModuleNotFoundError as exc:
        # an install without the `train` extra (the service image) asked to build or train
        if args.verbose or (exc.name or "").split(".")[0] not in _TRAIN_MODULES:
            raise
        print(f"error: recsys {args.command} needs {exc.name}, which this install lacks (it serves only): "
              "pip install 'recsys[train]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
