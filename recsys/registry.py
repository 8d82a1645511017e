"""The model registry: which versions exist, which one is published, publishing, rollback, pruning.

`<root>/CURRENT` names the published version and is replaced by an atomic rename, never edited in
place; `<root>/publish_history.jsonl` records every publish (what rollback goes back to). Versions
themselves (their directory and files) belong to recsys/version.py.
"""
from __future__ import annotations

import datetime as _dt
import json

from recsys import fsio, version as version_mod
from recsys.errors import DataError

CURRENT = "CURRENT"
HISTORY = "publish_history.jsonl"


def list_versions(root: str) -> list[str]:
    """Complete versions (with a manifest), oldest first."""
    models = version_mod.models_dir(root)
    return sorted(name for name in fsio.list_dir(models)
                  if fsio.is_plain_name(name) and version_mod.is_complete(root, name))


def current_version(root: str) -> str | None:
    """The published version, or None before the first publish."""
    path = fsio.join(root, CURRENT)
    return fsio.read_text(path).strip() or None if fsio.exists(path) else None


def resolve_version(root: str, version: str | None) -> str:
    """`None`/"published"/"current" -> the published version; "latest" -> the newest; "latest:<model>" ->
    the newest version of that model; else the name itself.

    Raises:
        DataError: nothing published, no versions at all, or no such version.
    """
    if version in (None, "current", "published", CURRENT):
        cur = current_version(root)
        if not cur:
            raise DataError(f"no published version under {root!r} (CURRENT missing): publish one with "
                            "`recsys nightly` or `recsys publish VERSION`, or name a version")
        return cur
    if version == "latest" or (isinstance(version, str) and version.startswith("latest:")):
        model = version.partition(":")[2]
        versions = [v for v in list_versions(root)
                    if not model or version_mod.read_manifest(root, v).get("model") == model]
        if not versions:
            what = f"of model {model!r} " if model else ""
            raise DataError(f"no model version {what}under {version_mod.models_dir(root)!r}; run `recsys train` first")
        return versions[-1]
    version_mod.read_manifest(root, version)
    return version


def publish_history(root: str) -> list[dict]:
    """Every publish so far, oldest first: {version, at, reason}."""
    path = fsio.join(root, HISTORY)
    if not fsio.exists(path):
        return []
    return [json.loads(line) for line in fsio.read_text(path).splitlines() if line.strip()]


def publish(root: str, version: str, reason: str = "manual") -> None:
    """Point CURRENT at `version` (write + rename: readers see the old or the new name, never half).

    Raises:
        DataError: `version` is not a complete, consistent version (`version.validate`).
    """
    version_mod.validate(root, version)
    entries = publish_history(root)
    entries.append({"version": version, "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "reason": reason})
    fsio.atomic_write_text(fsio.join(root, HISTORY), "".join(json.dumps(e) + "\n" for e in entries))
    fsio.atomic_write_text(fsio.join(root, CURRENT), version + "\n")


def _published_stack(root: str) -> list[str]:
    """The versions a rollback can go back through, oldest first, the current one last: every publish
    pushes its version; a rollback pops back to the version it published (so rolling back twice goes
    two versions back, not back and forth between the last two)."""
    stack: list[str] = []
    for e in publish_history(root):
        v = e["version"]
        if e.get("reason") == "rollback" and v in stack:
            while stack[-1] != v:     # the versions above it are what was rolled back over
                stack.pop()
        else:
            stack.append(v)
    return stack


def previous_published(root: str) -> str | None:
    """The version published before the current one that still exists (what rollback goes back to)."""
    cur = current_version(root)
    for v in reversed(_published_stack(root)):
        if v != cur and version_mod.is_complete(root, v):
            return v
    return None


def rollback(root: str, to: str | None = None) -> str:
    """Go back to the previously published version (each rollback one step further back through the
    publish history), or to `to`, a version published before; returns it.

    Raises:
        DataError: there is no earlier published version, or `to` was never published or is gone.
    """
    if to is None:
        prev = previous_published(root)
        if not prev:
            raise DataError("rollback: no previously published version to go back to")
    else:
        published = _published_stack(root)
        if to not in published or to == current_version(root):
            shown = ", ".join(v for v in reversed(published) if v != current_version(root)) or "none"
            raise DataError(f"rollback --to {to!r}: not a version published before the current one "
                            f"(those, newest first: {shown})")
        prev = to
    publish(root, prev, reason="rollback")
    return prev


def prune(root: str, keep: int) -> list[str]:
    """Delete the oldest versions beyond `keep`; never the published one, the one a rollback goes back
    to, or the one published last before the current one (after a rollback: the version rolled back
    from, kept for a look at what went wrong)."""
    cur = current_version(root)
    last_other = next((e["version"] for e in reversed(publish_history(root)) if e["version"] != cur), None)
    protected = {cur, previous_published(root), last_other}
    versions = list_versions(root)
    removable = [v for v in versions if v not in protected]
    removed = []
    for v in removable[:max(0, len(versions) - keep)]:
        fsio.delete(version_mod.version_dir(root, v))
        removed.append(v)
    return removed


def describe_versions(root: str) -> list[dict]:
    """Every version as data (what `recsys versions --json` prints), oldest first."""
    cur = current_version(root)
    out = []
    for v in list_versions(root):
        try:
            m = version_mod.read_manifest(root, v)
        except DataError as exc:
            out.append({"version": v, "published": v == cur, "error": str(exc)})
            continue
        out.append({"version": v, "published": v == cur, "model": m.get("model"), "created_at": m.get("created_at"),
                    "dataset_id": m.get("dataset_id"), "test_metrics": m.get("test_metrics"),
                    "validation_metrics": m.get("validation_metrics")})
    return out


def format_versions(root: str) -> str:
    """The `recsys versions` table (columns as wide as their longest value)."""
    rows = describe_versions(root)
    wv = max([len("version")] + [len(d["version"]) for d in rows]) + 2
    wm = max([len("model")] + [len(d.get("model") or "") for d in rows]) + 2
    wc = max([len("created")] + [len(d.get("created_at") or "") for d in rows]) + 2
    wd = max([len("dataset")] + [len(d.get("dataset_id") or "") for d in rows]) + 2
    lines = [f"{'':2}{'version':<{wv}}{'model':<{wm}}{'created':<{wc}}{'dataset':<{wd}}{'recall@20':>10}{'ndcg@20':>9}"]
    for d in rows:
        mark, v = ("* " if d["published"] else "  "), d["version"]
        if "error" in d:
            lines.append(f"{mark}{v:<{wv}}(unreadable: {d['error'].split(': ', 1)[-1]})")
            continue
        met = d["test_metrics"] or d["validation_metrics"] or {}
        lines.append(f"{mark}{v:<{wv}}{d['model'] or '':<{wm}}{d['created_at'] or '':<{wc}}{d['dataset_id'] or '':<{wd}}"
                     f"{met.get('recall@20', float('nan')):>10.4f}{met.get('ndcg@20', float('nan')):>9.4f}")
    lines.append("(* = published; metrics: test split when evaluated, else validation)")
    return "\n".join(lines)
