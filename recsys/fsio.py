"""File access for artifacts: local paths or any scheme Beam's filesystems support (gs://, s3://, ...).

Anything another process reads is written atomically: to a temporary name, then renamed.
"""
from __future__ import annotations

import os
import uuid

from apache_beam.io.filesystems import FileSystems

from recsys.config import is_url


def join(*parts: str) -> str:
    return FileSystems.join(*parts) if is_url(parts[0]) else os.path.join(*parts)


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def makedirs(path: str) -> None:
    if is_url(path):
        return  # object stores have no directories
    os.makedirs(path, exist_ok=True)


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path) as fh:
        return fh.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def open_write(path: str):
    if not is_url(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return FileSystems.create(path)


def write_bytes(path: str, data: bytes) -> None:
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


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def match(pattern: str) -> list[str]:
    """Files matching a path or glob, sorted (deterministic input order)."""
    result = FileSystems.match([pattern])[0]
    return sorted(m.path for m in result.metadata_list)


def list_dir(path: str) -> list[str]:
    """Names of the direct children of a local directory (empty if it does not exist)."""
    if is_url(path):
        prefix = path.rstrip("/") + "/"
        names = {p[len(prefix):].split("/")[0] for p in match(prefix + "*")}
        return sorted(n for n in names if n)
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def rename(src: str, dst: str) -> None:
    if is_url(src):
        FileSystems.rename([src], [dst])
    else:
        os.replace(src, dst)


def delete(path: str) -> None:
    if exists(path):
        FileSystems.delete([path])
