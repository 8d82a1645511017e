"""Model versions under `<root>/models/<version>/` and the published pointer `<root>/CURRENT`.

A version directory is written under a temporary name and renamed when complete, so a crash never
leaves a half-written version that looks complete (`manifest.json` is written last, too).
```
manifest.json          model, config, dataset_id, metrics, training time, package version, created_at
query_model/           SavedModel: serving_default(user_id: string[B], history: string[B, L]) -> embedding
item_embeddings.npy    [n_items, d] float32, row = index in items.txt
user_embeddings.npy    [n_users, d] float32, row = index in users.txt (every known user, precomputed)
users.txt items.txt    ID lists
popularity.npy         training interaction count per item (fallback and baseline)
weights.npz            tower weights by stable layer name (warm start of the next version)
items.parquet          item attributes for filters (copied from the dataset)
```
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import shutil
import uuid

import numpy as np

from recsys import __version__, fsio
from recsys.config import is_url
from recsys.errors import DataError
from recsys.data.vocab import Vocabulary

CURRENT = "CURRENT"


def models_dir(root: str) -> str:
    return fsio.join(root, "models")


def version_dir(root: str, version: str) -> str:
    return fsio.join(models_dir(root), version)


def new_version_id(model_name: str, now: _dt.datetime | None = None) -> str:
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%S')}{now.microsecond // 1000:03d}Z-{model_name}"


def save_npy(path: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    fsio.write_bytes(path, buf.getvalue())


def save_npz_csr(path: str, matrix) -> None:
    import scipy.sparse as sp
    buf = io.BytesIO()
    sp.save_npz(buf, matrix.tocsr())
    fsio.write_bytes(path, buf.getvalue())


def load_npy(path: str) -> np.ndarray:
    return np.load(io.BytesIO(fsio.read_bytes(path)), allow_pickle=False)


class VersionWriter:
    """Context manager: files go to a temporary directory that becomes the version on success."""

    def __init__(self, root: str, version: str):
        self.root, self.version = root, version
        self.final = version_dir(root, version)
        if fsio.exists(fsio.join(self.final, "manifest.json")):
            raise DataError(f"model version {version!r} already exists")
        self.path = self.final if is_url(root) else fsio.join(models_dir(root), f".tmp-{version}-{uuid.uuid4().hex[:6]}")

    def __enter__(self) -> "VersionWriter":
        fsio.makedirs(self.path)
        return self

    def file(self, name: str) -> str:
        return fsio.join(self.path, name)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            if not is_url(self.path):
                shutil.rmtree(self.path, ignore_errors=True)
            return False
        if self.path != self.final:
            fsio.rename(self.path, self.final)
        return False


def write_manifest(path: str, manifest: dict) -> None:
    manifest = dict(manifest)
    manifest.setdefault("package_version", __version__)
    manifest.setdefault("created_at", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    fsio.atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True, default=_json_default))


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def read_manifest(root: str, version: str) -> dict:
    path = fsio.join(version_dir(root, version), "manifest.json")
    if not fsio.exists(path):
        raise DataError(f"model version {version!r} not found under {models_dir(root)!r}")
    return json.loads(fsio.read_text(path))


def update_manifest(root: str, version: str, **fields) -> dict:
    m = read_manifest(root, version)
    m.update(fields)
    write_manifest(fsio.join(version_dir(root, version), "manifest.json"), m)
    return m


def list_versions(root: str) -> list[str]:
    """Complete versions (with a manifest), oldest first."""
    out = []
    for name in fsio.list_dir(models_dir(root)):
        if not name.startswith(".") and fsio.exists(fsio.join(models_dir(root), name, "manifest.json")):
            out.append(name)
    return sorted(out)


def current_version(root: str) -> str | None:
    path = fsio.join(root, CURRENT)
    return fsio.read_text(path).strip() or None if fsio.exists(path) else None


def resolve_version(root: str, version: str | None) -> str:
    """`None`/"current" -> the published version; "latest" -> the newest; else the name itself."""
    if version in (None, "current", CURRENT):
        cur = current_version(root)
        if not cur:
            raise DataError(f"no published version under {root!r} (CURRENT missing); pass a version")
        return cur
    if version == "latest":
        versions = list_versions(root)
        if not versions:
            raise DataError(f"no model version under {models_dir(root)!r}; run `recsys train` first")
        return versions[-1]
    read_manifest(root, version)
    return version


def load_vocabs(root: str, version: str) -> tuple[Vocabulary, Vocabulary]:
    d = version_dir(root, version)
    return Vocabulary.load(fsio.join(d, "users.txt")), Vocabulary.load(fsio.join(d, "items.txt"))


def load_weights(root: str, version: str) -> dict:
    path = fsio.join(version_dir(root, version), "weights.npz")
    if not fsio.exists(path):
        return {}
    with np.load(io.BytesIO(fsio.read_bytes(path))) as z:
        return {k: z[k] for k in z.files}


HISTORY = "publish_history.jsonl"


def publish_history(root: str) -> list[dict]:
    path = fsio.join(root, HISTORY)
    if not fsio.exists(path):
        return []
    return [json.loads(line) for line in fsio.read_text(path).splitlines() if line.strip()]


def publish(root: str, version: str, reason: str = "manual") -> None:
    """Point CURRENT at `version` (write + rename: readers see the old or the new name, never half)."""
    read_manifest(root, version)  # must be a complete version
    if not fsio.exists(fsio.join(version_dir(root, version), "manifest.json")):
        raise DataError(f"model version {version!r} is incomplete")
    entries = publish_history(root)
    entries.append({"version": version, "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "reason": reason})
    fsio.atomic_write_text(fsio.join(root, HISTORY), "".join(json.dumps(e) + "\n" for e in entries))
    fsio.atomic_write_text(fsio.join(root, CURRENT), version + "\n")


def previous_published(root: str) -> str | None:
    """The version published before the current one (what rollback goes back to)."""
    cur = current_version(root)
    for e in reversed(publish_history(root)):
        if e["version"] != cur and fsio.exists(fsio.join(version_dir(root, e["version"]), "manifest.json")):
            return e["version"]
    return None


def format_versions(root: str) -> str:
    """The `recsys versions` table."""
    cur = current_version(root)
    lines = [f"{'':2}{'version':<34}{'model':<11}{'created':<27}{'dataset':<18}{'recall@20':>10}{'ndcg@20':>9}"]
    for v in list_versions(root):
        m = read_manifest(root, v)
        met = m.get("test_metrics") or m.get("validation_metrics") or {}
        mark = "* " if v == cur else "  "
        lines.append(f"{mark}{v:<34}{m.get('model', ''):<11}{m.get('created_at', ''):<27}{m.get('dataset_id', ''):<18}"
                     f"{met.get('recall@20', float('nan')):>10.4f}{met.get('ndcg@20', float('nan')):>9.4f}")
    lines.append("(* = published; metrics: test split when evaluated, else validation)")
    return "\n".join(lines)
