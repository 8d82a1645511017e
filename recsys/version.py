"""A model version: the directory `<root>/models/<version>/`, how it is written and how it is loaded.

This is the only module that knows the directory's file names:
```
manifest.json          model, config, dataset_id, metrics, training, package version, created_at
users.txt items.txt    ID lists (row i of every array below stands for line i)
popularity.npy         training interaction count per item (fallback and baseline)
seen.npz               known users x items they interacted with (excluded from their answers)
own_items.npz          known users x their own items by frequency + recency (the `repeat` rule only)
items.parquet          item attributes for filters (copied from the dataset)
item_embeddings.npy    [n_items, d] float32                     (personalized models)
user_embeddings.npy    [n_users, d] float32, every known user    (personalized models)
weights.npz            tower weights by stable layer name (what the next version warm-starts from)
query_model/           SavedModel: serving_default(user_id: string[B], history: string[B, L]) -> embedding
metrics.json           what `recsys evaluate` measured, by split
index/                 the item index (recsys.retrieval.index), with index.json: its kind and parameters
recommendations/       batch top-N for every known user (pipelines/batch_recommend.py)
```
A version is written whole under a temporary name and renamed when complete (`fsio.atomic_dir`), with
`manifest.json` last, so a crash never leaves a half-written version that looks complete.
"""
from __future__ import annotations

import datetime as _dt
import io
import json
from dataclasses import dataclass

import numpy as np

from recsys import __version__, fsio
from recsys.config import Config, exclusion_rule
from recsys.data.dataset import read_items
from recsys.data.vocab import Vocabulary
from recsys.errors import DataError
from recsys.models import MODELS, Model
from recsys.models.base import WarmStart
from recsys.models.popularity import Popularity
from recsys.retrieval import index as index_mod

MANIFEST = "manifest.json"
USERS, ITEMS = "users.txt", "items.txt"
POPULARITY = "popularity.npy"
SEEN = "seen.npz"
OWN_ITEMS = "own_items.npz"
ITEM_ATTRIBUTES = "items.parquet"
ITEM_EMBEDDINGS, USER_EMBEDDINGS = "item_embeddings.npy", "user_embeddings.npy"
WEIGHTS = "weights.npz"
QUERY_MODEL = "query_model"
METRICS = "metrics.json"
INDEX = "index"
INDEX_META = "index.json"   # inside index/: the kind and what its loader needs
RECOMMENDATIONS = "recommendations"
# What `write_parts` may put in a version (the manifest lists what it did write, under "files"); the index
# and the batch recommendations are added later by their own steps.
_FILES = (USERS, ITEMS, POPULARITY, SEEN, OWN_ITEMS, ITEM_ATTRIBUTES, ITEM_EMBEDDINGS, USER_EMBEDDINGS, WEIGHTS,
          QUERY_MODEL)
_ALWAYS = (USERS, ITEMS, POPULARITY, SEEN)


# ---- where things are -------------------------------------------------------------------------
def models_dir(root: str) -> str:
    """`<root>/models`: where versions live."""
    return fsio.join(root, "models")


def version_dir(root: str, version: str) -> str:
    """The directory of one version.

    Raises:
        DataError: `version` is not a plain name (it would point outside the root).
    """
    return fsio.child(models_dir(root), version, "version")


def _index_dir(root: str, version: str) -> str:
    return fsio.join(version_dir(root, version), INDEX)


def recommendations_dir(root: str, version: str) -> str:
    """Where the batch job writes the version's top-N for every user."""
    return fsio.join(version_dir(root, version), RECOMMENDATIONS)


def new_version_id(model_name: str, now: _dt.datetime | None = None) -> str:
    """A sortable id for a new version: UTC time to the millisecond, then the model name."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%S')}{now.microsecond // 1000:03d}Z-{model_name}"


def is_complete(root: str, version: str) -> bool:
    """A version directory with its manifest (written last)."""
    return fsio.exists(fsio.join(version_dir(root, version), MANIFEST))


# ---- manifest and metrics -------------------------------------------------------------------------
def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def _write_manifest(path: str, manifest: dict) -> None:
    manifest = dict(manifest)
    manifest.setdefault("package_version", __version__)
    manifest.setdefault("created_at", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    fsio.atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True, default=_json_default))


def read_manifest(root: str, version: str) -> dict:
    """The version's manifest.json.

    Raises:
        DataError: the version does not exist (or is incomplete).
    """
    path = fsio.join(version_dir(root, version), MANIFEST)
    if not fsio.exists(path):
        raise DataError(f"model version {version!r} not found under {models_dir(root)!r}")
    try:
        manifest = json.loads(fsio.read_text(path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"model version {version!r}: {MANIFEST} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise DataError(f"model version {version!r}: {MANIFEST} is not a JSON object")
    return manifest


def setting(manifest: dict, section: str, key: str, default=None):
    """A value of the config a version was trained with (`manifest["config"][section][key]`), or
    `default` when the version predates it or has none."""
    value = ((manifest.get("config") or {}).get(section) or {}).get(key)
    return default if value is None else value


def exclusion(manifest: dict, target_events=None) -> str:
    """The exclusion rule a version serves and is evaluated with (`config.exclusion_rule` of its config;
    `target_events` None: its own evaluation.target_events)."""
    if target_events is None:
        target_events = setting(manifest, "evaluation", "target_events", ())
    return exclusion_rule((manifest.get("config") or {}).get("exclusion", "auto"), target_events)


def update_manifest(root: str, version: str, **fields) -> dict:
    """Merge `fields` into the manifest (atomic rewrite); returns the new manifest."""
    m = read_manifest(root, version)
    m.update(fields)
    _write_manifest(fsio.join(version_dir(root, version), MANIFEST), m)
    return m


def write_metrics(root: str, version: str, split: str, entry: dict) -> str:
    """Record one split's evaluation in the version's metrics.json; returns its path."""
    path = fsio.join(version_dir(root, version), METRICS)
    existing = json.loads(fsio.read_text(path)) if fsio.exists(path) else {}
    existing[split] = entry
    fsio.atomic_write_text(path, json.dumps(existing, indent=2, sort_keys=True, default=_json_default))
    return path


# ---- arrays ------------------------------------------------------------------------------------
def _save_npy(path: str, array: np.ndarray) -> None:
    _write_with(path, lambda fh: np.save(fh, array, allow_pickle=False))


def _write_with(path: str, write) -> None:
    """`write(file object)` into `path`: a local file is written in place (no copy of it in memory; the
    50M-event two_tower save held its 1.5 GB of weights three times over: arrays, an in-memory zip, its
    bytes), a URL through a buffer (a remote stream may not seek, which zip and npy writers expect)."""
    if not fsio.is_url(path):
        with fsio.open_write(path) as fh:
            write(fh)
        return
    buf = io.BytesIO()
    write(buf)
    fsio.write_bytes(path, buf.getvalue())


def _load_npy(path: str, mmap: bool = False) -> np.ndarray:
    """An array file; with `mmap`, a local file is memory-mapped read-only instead of read: loading a
    1M x 64 embedding table then takes no time (and holds no lock a serving thread waits for), pages
    come in as they are used, and versions swapped in and out share nothing they do not touch."""
    if mmap and not fsio.is_url(path):
        return np.load(path, mmap_mode="r", allow_pickle=False)
    return np.load(io.BytesIO(fsio.read_bytes(path)), allow_pickle=False)


def load_vocabs(root: str, version: str) -> tuple[Vocabulary, Vocabulary]:
    """(users, items) of a version."""
    d = version_dir(root, version)
    return Vocabulary.load(fsio.join(d, USERS)), Vocabulary.load(fsio.join(d, ITEMS))


def load_embeddings(root: str, version: str, mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(item_embeddings, user_embeddings) of a personalized version (read-only memory maps with `mmap`)."""
    d = version_dir(root, version)
    return _load_npy(fsio.join(d, ITEM_EMBEDDINGS), mmap), _load_npy(fsio.join(d, USER_EMBEDDINGS), mmap)


# in weights.npz of a refit version: the tables of the fit that chose its epochs (before the refit saw
# validation), under this prefix, with that fit's vocabularies
SELECTION = "selection:"


def load_warm_start(root: str, version: str, selection: bool = False) -> WarmStart | None:
    """A version's weights and vocabularies, for the next version to start from.

    Args:
        root: the artifact root.
        version: the version id.
        selection: the tables of the fit that chose a refit version's epochs (trained on its train
            split only) instead of the version's own.
    Returns:
        The WarmStart; None when `selection` is asked of a version that kept no such tables.
    """
    path = fsio.join(version_dir(root, version), WEIGHTS)
    weights, sizes = {}, None
    if fsio.exists(path):
        # a local npz is read from the file, member by member: the other lineage's tables are never
        # read (a remote one comes whole, as `_load_npy` reads it)
        source = open(path, "rb") if not fsio.is_url(path) else io.BytesIO(fsio.read_bytes(path))
        with source as fh, np.load(fh) as z:
            if selection and SELECTION + ":users" in z.files:
                # the choosing fit's vocabularies are a prefix of the version's (a refit appends users)
                sizes = int(z[SELECTION + ":users"]), int(z[SELECTION + ":items"])
                weights = {k[len(SELECTION):]: z[k] for k in z.files
                           if k.startswith(SELECTION) and not k.startswith(SELECTION + ":")}
            elif not selection:
                weights = {k: z[k] for k in z.files if not k.startswith(SELECTION)}
    if selection and sizes is None:
        return None
    users, items = load_vocabs(root, version)
    if selection:
        return WarmStart(version, users.ids[:sizes[0]], items.ids[:sizes[1]], weights)
    return WarmStart(version, users.ids, items.ids, weights, refit="refit" in read_manifest(root, version))


# ---- writing -------------------------------------------------------------------------------------
def save_fitted(model: Model, ts, cfg: Config, root: str, dataset=None, extra: dict | None = None,
                version: str | None = None, selection: tuple | None = None) -> str:
    """Write a fitted model as a new version directory, atomically.

    Computes what serving needs beside the model: every known user's vector (with the history a
    service would know: train, then validation), the seen items, the item attributes.

    Args:
        model: a fitted model (any entry of MODELS).
        ts: the TrainSet it was fitted on (vocabularies, interactions for seen items and histories).
        cfg: the config, recorded in the manifest.
        root: the artifact root.
        dataset: the Dataset `ts` came from (validation/test rows join the seen items, validation
            rows the stored histories, items.parquet the filters), or None.
        extra: more manifest fields.
        version: the version id (default: a new timestamped id).
        selection: (weights, user IDs, item IDs) of the fit that chose a refit model's epochs, kept
            in weights.npz for the next version's epoch choice to start from (`load_warm_start`);
            its vocabularies must be a prefix of the model's (a refit only appends users), else
            they are not kept and the next choice starts cold.
    Returns:
        The version id.
    Raises:
        DataError: a version of this id already exists.
    """
    import time
    from recsys.data.trainset import seen_items, user_histories
    manifest = {"dataset_id": ts.dataset_id, "config": cfg.to_dict()}
    phases = {}
    if model.personalized:
        t0 = time.time()
        L = cfg.model.history_length
        hist = user_histories(ts, L, dataset) if model.uses_history else np.full((ts.n_users, 1), -1, np.int32)
        model.user_embeddings = model.user_vectors(np.arange(ts.n_users, dtype=np.int64), hist).astype(np.float32)
        phases["user_vectors"] = round(time.time() - t0, 2)
        r = model.report
        manifest.update({"history_length": L,
                         "training": {"seconds": round(r.seconds, 1), "best_epoch": r.best_epoch,
                                      "examples_per_second": round(r.examples_per_second),
                                      "epochs": r.epochs, "warm_started_rows": r.warm_started,
                                      "phases": r.phases, **({"chosen": r.chosen} if r.chosen else {})}})
    attributes = None
    if dataset is not None and fsio.exists(dataset.item_features_path):
        attributes = fsio.read_bytes(dataset.item_features_path)
    t0 = time.time()
    targets = cfg.evaluation.target_events
    seen = seen_items(ts, dataset, exclusion_rule(cfg.exclusion, targets), targets)
    phases["seen_items"] = round(time.time() - t0, 2)
    manifest.update(extra or {})
    manifest["save_phases"] = phases
    return write_parts(root, model, seen, manifest, attributes, version, selection)


def write_parts(root: str, model: Model, seen, manifest: dict, item_attributes: bytes | None = None,
                version: str | None = None, selection: tuple | None = None) -> str:
    """Write a model's state as a new version directory, atomically (`save_fitted` computes the parts
    from a fit; benchmarks and tests give them directly).

    Args:
        root: the artifact root.
        model: a model with vocabularies (`user_ids`, `item_ids`), `popularity` and, if personalized,
            `item_embeddings` and `user_embeddings`.
        seen: CSR users x items to exclude as seen.
        manifest: manifest fields (version, model, sizes, dim, package version and time are added).
        item_attributes: the bytes of an items.parquet, or None.
        version: the version id (default: a new timestamped id).
        selection: see `save_fitted`.
    Returns:
        The version id.
    Raises:
        DataError: a version of this id already exists.
    """
    import scipy.sparse as sp
    version = version or new_version_id(model.name)
    if is_complete(root, version):
        raise DataError(f"model version {version!r} already exists")
    manifest = {"version": version, "model": model.name, "n_users": len(model.user_ids),
                "n_items": len(model.item_ids), **manifest}
    with fsio.atomic_dir(version_dir(root, version)) as d:
        Vocabulary(model.user_ids).save(fsio.join(d, USERS))
        Vocabulary(model.item_ids).save(fsio.join(d, ITEMS))
        _save_npy(fsio.join(d, POPULARITY), model.popularity.counts.astype(np.int64))
        _write_with(fsio.join(d, SEEN), lambda fh: sp.save_npz(fh, seen.tocsr()))
        if item_attributes is not None:
            fsio.write_bytes(fsio.join(d, ITEM_ATTRIBUTES), item_attributes)
        if getattr(model, "own", None) is not None:
            _write_with(fsio.join(d, OWN_ITEMS), lambda fh: sp.save_npz(fh, model.own.tocsr()))
        if model.personalized:
            manifest["dim"] = int(model.item_embeddings.shape[1])
            # (asarray: no copy of float32 tables; 3.25M users x 64 is 832 MB at 50M events)
            _save_npy(fsio.join(d, ITEM_EMBEDDINGS), np.asarray(model.item_embeddings, dtype=np.float32))
            _save_npy(fsio.join(d, USER_EMBEDDINGS), np.asarray(model.user_embeddings, dtype=np.float32))
            kept = {}
            if selection is not None:
                weights, users, items = selection
                # stored as counts: the choosing fit's vocabularies must be a prefix of the version's
                if (len(users) <= len(model.user_ids) and len(items) <= len(model.item_ids)
                        and np.array_equal(np.asarray(users, dtype=object), np.asarray(model.user_ids[:len(users)], dtype=object))
                        and np.array_equal(np.asarray(items, dtype=object), np.asarray(model.item_ids[:len(items)], dtype=object))):
                    kept = {SELECTION + k: v for k, v in weights.items()}
                    kept[SELECTION + ":users"], kept[SELECTION + ":items"] = np.int64(len(users)), np.int64(len(items))
            tables = model.weights()
            _write_with(fsio.join(d, WEIGHTS), lambda fh: np.savez(fh, **tables, **kept))
            tables = kept = None   # not held through the SavedModel's export below
            module = model.query_module()
            if module is not None:
                import tensorflow as tf
                with fsio.staged_dir(fsio.join(d, QUERY_MODEL)) as local:
                    tf.saved_model.save(module, local, signatures={"serving_default": module.serve})
        manifest["files"] = sorted(name for name in _FILES if fsio.exists(fsio.join(d, name)))
        _write_manifest(fsio.join(d, MANIFEST), manifest)   # last: it marks the version complete
    return version


# ---- validation ----------------------------------------------------------------------------------
def _npy_shape(path: str) -> tuple:
    """The shape in a .npy file's header (the array is not read)."""
    with fsio.open_read(path) as fh:
        major, _ = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        return read(fh)[0]


def _count_lines(path: str) -> int:
    return fsio.read_bytes(path).count(b"\n")


def validate(root: str, version: str) -> dict:
    """Check a version is whole and consistent before it is published or served: manifest readable,
    a known model, every file the manifest lists (and every file the model needs) present, and array
    shapes consistent with the ID lists and with each other. Reads headers, not whole arrays.

    Returns:
        The manifest.
    Raises:
        DataError: one line naming the version and the first problem found.
    """
    manifest = read_manifest(root, version)
    name = manifest.get("model")
    if name not in MODELS:
        raise DataError(f"model version {version!r}: model={name!r} is unknown (known: {', '.join(MODELS)})")
    d = version_dir(root, version)
    needed = set(_ALWAYS) | set(manifest.get("files") or ())
    if MODELS[name].personalized:
        needed |= {ITEM_EMBEDDINGS, USER_EMBEDDINGS}
    missing = sorted(f for f in needed if not fsio.exists(fsio.join(d, f)))
    if missing:
        raise DataError(f"model version {version!r} is incomplete: missing {', '.join(missing)}")

    def problem(what: str):
        return DataError(f"model version {version!r} is inconsistent: {what}")
    try:
        n_users, n_items = _count_lines(fsio.join(d, USERS)), _count_lines(fsio.join(d, ITEMS))
        for key, n in (("n_users", n_users), ("n_items", n_items)):
            if key in manifest and manifest[key] != n:
                raise problem(f"manifest {key}={manifest[key]} but the ID list has {n}")
        popularity = _npy_shape(fsio.join(d, POPULARITY))
        if popularity != (n_items,):
            raise problem(f"{POPULARITY} has shape {popularity}, expected ({n_items},)")
        # only the shape member of the archive is read, not the matrix
        with fsio.open_read(fsio.join(d, SEEN)) as fh, np.load(fh) as z:
            seen_shape = tuple(int(x) for x in z["shape"])
        if seen_shape != (n_users, n_items):
            raise problem(f"{SEEN} has shape {seen_shape}, expected {(n_users, n_items)}")
        if MODELS[name].personalized:
            items, users = _npy_shape(fsio.join(d, ITEM_EMBEDDINGS)), _npy_shape(fsio.join(d, USER_EMBEDDINGS))
            if len(items) != 2 or items[0] != n_items:
                raise problem(f"{ITEM_EMBEDDINGS} has shape {items}, expected ({n_items}, dim)")
            if len(users) != 2 or users[0] != n_users or users[1] != items[1]:
                raise problem(f"{USER_EMBEDDINGS} has shape {users}, expected ({n_users}, {items[1]})")
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - an unreadable file: one line naming it
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"model version {version!r} has an unreadable file: {msg}") from exc
    return manifest


# ---- loading -------------------------------------------------------------------------------------
@dataclass
class LoadedVersion:
    """A version in memory: its manifest, vocabularies and model (vectors, popularity)."""
    root: str
    version: str
    manifest: dict
    users: Vocabulary
    items: Vocabulary
    model: Model

    @property
    def model_name(self) -> str:
        """The model's name (a key of MODELS)."""
        return self.model.name

    @property
    def personalized(self) -> bool:
        """Whether the model has vectors (else popularity order for everyone)."""
        return self.model.personalized

    @property
    def popularity(self) -> Popularity:
        """The version's popularity counts (fallback for requests without a user or history)."""
        return self.model.popularity

    @property
    def history_length(self) -> int:
        """How many recent items the model's history inputs hold."""
        return int(self.manifest.get("history_length", 20))


def load(root: str, version: str) -> LoadedVersion:
    """Load a version for scoring. Anything missing or corrupt raises here, not on a later request.

    Raises:
        DataError: the version does not exist, names a model this package does not have, or one of
            its files is missing or unreadable (the message names the version and the problem).
    """
    try:
        return _load(root, version)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file: one line naming the version
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DataError(f"model version {version!r} cannot be loaded: {type(exc).__name__}: {msg}") from exc


def _load(root: str, version: str) -> LoadedVersion:
    manifest = validate(root, version)   # a known model, its files present, shapes consistent
    name = manifest["model"]
    d = version_dir(root, version)
    users, items = load_vocabs(root, version)
    model = MODELS[name]()
    # what the query side needs to know of how the vectors were built (mf's fold-in skips the bias column)
    model.config.item_bias = bool(((manifest.get("config") or {}).get("model") or {}).get("item_bias", False))
    model.popularity = Popularity(len(items), _load_npy(fsio.join(d, POPULARITY)))
    item_emb = user_emb = None
    if model.personalized:
        item_emb, user_emb = load_embeddings(root, version, mmap=True)

    def query_model():
        import tensorflow as tf
        # in a bucket: downloaded first (TensorFlow reads gs:// but not s3:// without tensorflow-io);
        # the variables are in memory once loaded, so the copy can go
        with fsio.local_copy(fsio.join(d, QUERY_MODEL)) as local:
            return tf.saved_model.load(local).signatures["serving_default"]
    model.load_state(users.ids, items.ids, item_emb, user_emb, query_model, int(manifest.get("history_length", 20)))
    if OWN_ITEMS in manifest.get("files", ()):
        import scipy.sparse as sp
        model.own = sp.load_npz(io.BytesIO(fsio.read_bytes(fsio.join(d, OWN_ITEMS)))).tocsr()
    return LoadedVersion(root, version, manifest, users, items, model)


def save_index(root: str, version: str, idx: "index_mod.Index") -> None:
    """Save an item index into the version (its files, then index.json, which marks it complete)."""
    directory = _index_dir(root, version)
    meta = {"kind": idx.kind, **idx.save(directory)}
    fsio.atomic_write_text(fsio.join(directory, INDEX_META), json.dumps(meta))


def has_index(root: str, version: str) -> bool:
    """Whether an index was saved in the version."""
    return fsio.exists(fsio.join(_index_dir(root, version), INDEX_META))


def load_index(root: str, version: str, embeddings) -> "index_mod.Index":
    """The version's saved item index over `embeddings`.

    Raises:
        DataError: the version has no index, or one of a kind this package does not know.
    """
    directory = _index_dir(root, version)
    if not has_index(root, version):
        raise DataError(f"index: version {version!r} has no index; run `recsys index {version}`")
    meta = json.loads(fsio.read_text(fsio.join(directory, INDEX_META)))
    kind = index_mod.KINDS.get(meta.get("kind"))
    if kind is None:
        raise DataError(f"index: version {version!r} has an index of kind {meta.get('kind')!r}, unknown "
                        f"(known: {', '.join(index_mod.KINDS)})")
    return kind.load(directory, meta, embeddings)


def load_seen(root: str, version: str):
    """Known users x items they interacted with (CSR), or None for a version saved without it."""
    path = fsio.join(version_dir(root, version), SEEN)
    if not fsio.exists(path):
        return None
    import scipy.sparse as sp
    return sp.load_npz(io.BytesIO(fsio.read_bytes(path))).tocsr()


def load_item_attributes(root: str, version: str, columns: list[str] | None, exclude=()):
    """Columns (None: all but `exclude`) of the version's items.parquet as a pandas frame with
    `attrs["kinds"]` (dataset.read_items), or None without one."""
    path = fsio.join(version_dir(root, version), ITEM_ATTRIBUTES)
    if not fsio.exists(path):
        return None
    return read_items(fsio.read_bytes(path), columns, exclude)
