"""File access for artifacts: local paths, or any scheme Beam's filesystems support (gs://, s3://, ...).

The one place that knows how to write so that another process never reads half a file or half a
directory:
- `atomic_write_bytes` / `atomic_write_text`: a file, written to a temporary name and renamed;
- `atomic_dir`: a directory, filled under a temporary name and renamed when complete;
- `staged_dir` / `local_copy`: tools that only write or read local folders (TensorFlow SavedModel,
  ScaNN) go through a local folder that is uploaded or downloaded whole.

Local paths use the standard library only. Apache Beam's `FileSystems` is imported on the first URL,
so processes that never touch an object store (the HTTP service on a local artifact root) never load
Beam.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from typing import Iterator

from recsys.errors import RecsysError


def is_url(path: str) -> bool:
    """True for `scheme://...` paths (gs://, s3://, ...), which go through Beam's filesystems."""
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", path or "") is not None


# A version or dataset ID: a plain name, never a path (no separators, no "..", no leading dot).
PLAIN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
_PLAIN_NAME = re.compile(PLAIN_NAME_PATTERN)


def is_plain_name(name) -> bool:
    """A name that cannot point anywhere but inside its folder (see `child`)."""
    return isinstance(name, str) and bool(_PLAIN_NAME.fullmatch(name)) and ".." not in name


def child(parent: str, name, field: str) -> str:
    """`parent/name` for a name that must stay inside `parent`: every version and dataset ID goes
    through here, so no ID reads or writes outside the artifact root.

    Raises:
        DataError: `name` is not a plain name (letters, digits, '.', '_', '-'; no path, no '..').
    """
    from recsys.errors import DataError
    if not is_plain_name(name):
        raise DataError(f"{field}={name!r} is invalid: a plain name (letters, digits, '.', '_', '-') "
                        f"inside the artifact root, not a path")
    return join(parent, name)


def _filesystems():
    try:
        from apache_beam.io.filesystems import FileSystems   # only for URLs: Beam is a heavy import
    except ModuleNotFoundError as e:
        raise RecsysError(f"gs:// and s3:// paths need Apache Beam's filesystems ({e.name} is not installed): "
                          "pip install 'recsys[gcp]' or 'recsys[aws]'") from None
    if FileSystems._pipeline_options is None:
        # outside a pipeline Beam's S3 filesystem has no options and refuses every call ("Must provide
        # one of client or options"); defaults mean boto3's own credential chain and AWS_ENDPOINT_URL,
        # GCS's application default credentials
        from apache_beam.options.pipeline_options import PipelineOptions
        FileSystems.set_options(PipelineOptions([]))
    return FileSystems


def check_scheme(path: str) -> None:
    """One line if the filesystem of `path`'s scheme is not installed (Beam says "Unable to get
    filesystem from specified path" and nothing of the missing extra)."""
    if not is_url(path):
        return
    scheme = path.split("://", 1)[0].lower()
    extra = {"gs": "gcp", "s3": "aws"}.get(scheme)
    not_installed = RecsysError(f"{path}: no filesystem for {scheme}:// is installed: " + (
        f"pip install 'recsys[{extra}]'" if extra else "install the Beam extra that provides it"))
    try:
        _filesystems().get_filesystem(path)
    except (ValueError, ImportError, OSError):     # Beam: ValueError, or BeamIOError naming the extra
        raise not_installed from None
    # without credentials Beam retries every call with exponential backoff for about 8 minutes, then
    # fails ("Unable to locate credentials"); a service polling CURRENT would do that for ever
    if scheme == "s3":
        try:
            import boto3
        except ModuleNotFoundError:   # Beam registers its S3 filesystem without boto3 installed
            raise not_installed from None
        if boto3.session.Session().get_credentials() is None:
            raise RecsysError(f"{path}: no AWS credentials found (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                              "AWS_PROFILE or ~/.aws/credentials, or an instance or pod role)")
    elif scheme == "gs":
        try:
            import google.auth
            import google.auth.exceptions
        except ModuleNotFoundError:
            raise not_installed from None
        try:
            google.auth.default()
        except google.auth.exceptions.DefaultCredentialsError:
            raise RecsysError(f"{path}: no Google Cloud credentials found (GOOGLE_APPLICATION_CREDENTIALS, "
                              "gcloud auth application-default login, or the workload's service account)") from None


def join(*parts: str) -> str:
    """Join path parts (URL-aware)."""
    return _filesystems().join(*parts) if is_url(parts[0]) else os.path.join(*parts)


def exists(path: str) -> bool:
    """Whether a file or directory exists (in a bucket: an object, or objects under the prefix, since
    object stores have no folders)."""
    if not is_url(path):
        return os.path.exists(path)
    return _filesystems().exists(path) or bool(list_dir(path))


def makedirs(path: str) -> None:
    """Create a local directory and its parents (nothing for URLs)."""
    if is_url(path):
        return  # object stores have no directories
    os.makedirs(path, exist_ok=True)


# Beam decompresses these on read (by suffix); local files with them go through Beam too, so a
# gzipped input reads the same from a laptop and from a bucket.
_COMPRESSED = (".bz2", ".deflate", ".gz", ".zst", ".zstd", ".xz", ".lzma")


def open_read(path: str):
    """A binary file object for reading; compressed files (by suffix) are decompressed."""
    if is_url(path) or path.lower().endswith(_COMPRESSED):
        return _filesystems().open(path)
    return open(path, "rb")


def read_bytes(path: str) -> bytes:
    """The whole file (decompressed by suffix)."""
    with open_read(path) as fh:
        return fh.read()


def read_text(path: str) -> str:
    """The whole file as UTF-8 text."""
    return read_bytes(path).decode("utf-8")


def open_write(path: str):
    """A binary file object for writing (parent folders are created). Not atomic: see below."""
    if is_url(path):
        return _filesystems().create(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return open(path, "wb")


def write_bytes(path: str, data: bytes) -> None:
    """Write a file (not atomic: for files inside a directory that `atomic_dir` publishes)."""
    with open_write(path) as fh:
        fh.write(data)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write so that readers see the old content or the new one, never a partial file."""
    if is_url(path):  # an object store makes a single-object upload visible atomically
        write_bytes(path, data)
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def create_exclusive(path: str, text: str) -> bool:
    """Create `path` with `text` only if it does not exist; True if this call created it.

    Local files use O_CREAT | O_EXCL, so of two processes exactly one wins. Object stores have no such
    primitive here: there it is check-then-write, which two starts within a second can both pass.
    """
    if is_url(path):
        if exists(path):
            return False
        write_bytes(path, text.encode("utf-8"))
        return True
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return True


def atomic_write_text(path: str, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_dir(final: str, replace: bool = False) -> Iterator[str]:
    """Yield a directory to fill; when the block completes it becomes `final`, all at once.

    Locally the directory is a hidden sibling (`.tmp-<name>-<random>`, which listings skip) renamed to
    `final` at the end, and removed if the block (or the rename) fails. Object stores have no directory
    rename: there the block writes to `final` itself, and the caller writes a completion marker (a
    manifest, a stats.json) last. With `replace`, an existing `final` is renamed aside, the new one
    renamed in, and the old one deleted (between the two renames `final` is briefly absent, never a
    mix; if the second rename fails the old one is put back); on an object store the old objects are
    deleted first. Without `replace`, `final` must not exist.

    Args:
        final: the directory the caller wants to create.
        replace: replace an existing `final` instead of failing.
    Yields:
        The path to write into.
    """
    if is_url(final):
        if replace:
            delete(final)
        yield final
        return
    parent, name = os.path.split(final.rstrip("/"))
    os.makedirs(parent or ".", exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{name}-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        yield tmp
        if replace and os.path.exists(final):
            old = os.path.join(parent, f".old-{name}-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
            try:
                os.replace(tmp, final)
            except BaseException:
                os.replace(old, final)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)   # fails if `final` exists and is not empty
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def staged_dir(path: str) -> Iterator[str]:
    """A local folder for a tool that writes only to local disk; its files end up under `path`.

    A local `path` is used as it is; for a URL the tool writes to a temporary folder whose files are
    uploaded (same relative names) when the block completes.
    """
    if not is_url(path):
        os.makedirs(path, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="recsys-stage-") as tmp:
        yield tmp
        for dirpath, _, files in os.walk(tmp):
            for f in files:
                src = os.path.join(dirpath, f)
                with open(src, "rb") as fh:
                    write_bytes(join(path, os.path.relpath(src, tmp).replace(os.sep, "/")), fh.read())


@contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local folder holding the files under `path`, subfolders included (downloaded for a URL, removed
    after): for tools that read only local folders (ScaNN's index, TensorFlow's SavedModel without an
    s3 filesystem)."""
    if not is_url(path):
        yield path
        return
    prefix = path.rstrip("/") + "/"
    with tempfile.TemporaryDirectory(prefix="recsys-fetch-") as tmp:
        for src in match(prefix + "**"):
            rel = src[len(prefix):]
            if not rel or rel.endswith("/"):
                continue
            dst = os.path.join(tmp, *rel.split("/"))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with open(dst, "wb") as fh:
                fh.write(read_bytes(src))
        yield tmp


def match(pattern: str) -> list[str]:
    """Files matching a path or glob, sorted (deterministic input order).

    Beam's matcher for local paths too, so a `source.path` pattern picks the same files on a laptop
    and in a bucket (its `*`, `**` and dotfile rules differ from the glob module's).
    """
    result = _filesystems().match([pattern])[0]
    return sorted(m.path for m in result.metadata_list)


def list_dir(path: str) -> list[str]:
    """Names of the direct children of a directory (empty if it does not exist)."""
    if is_url(path):
        prefix = path.rstrip("/") + "/"
        # "**": object stores have no folders, so a child folder shows only through the files under it
        names = {p[len(prefix):].split("/")[0] for p in match(prefix + "**")}
        return sorted(n for n in names if n)
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def remove_leftovers(folder: str, older_than_seconds: float = 3600.0) -> list[str]:
    """Delete the temporary siblings `atomic_dir` leaves when a process dies mid-write (`.tmp-*`,
    `.old-*` under a local `folder`) once they are older than `older_than_seconds` (a live writer's
    are younger). Returns the names removed; object stores have none (nothing is renamed there)."""
    import time
    if is_url(folder) or not os.path.isdir(folder):
        return []
    removed = []
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if not name.startswith((".tmp-", ".old-")):
            continue
        try:
            # the newest file inside, not the folder's own time: a long build writes below the top level
            newest = max([os.path.getmtime(path)] + [os.path.getmtime(os.path.join(d, f))
                                                      for d, _, files in os.walk(path) for f in files])
            if time.time() - newest > older_than_seconds:
                delete(path)
                removed.append(name)
        except FileNotFoundError:
            continue   # renamed or removed meanwhile by its writer
    return sorted(removed)


def rename(src: str, dst: str) -> None:
    """Rename a file or directory (an atomic replace for local paths)."""
    if is_url(src):
        _filesystems().rename([src], [dst])
    else:
        os.replace(src, dst)


def delete(path: str) -> None:
    """Delete a file or a whole directory (nothing if it does not exist)."""
    if is_url(path):
        # an object store has no directories: a "directory" is every object under the prefix, which
        # Beam deletes recursively when the path ends with a slash
        for target in (path.rstrip("/"), path.rstrip("/") + "/"):
            if exists(target) or match(target + "*"):
                _filesystems().delete([target])
                return
    elif os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)
