"""ID vocabularies: string ID -> dense index, stable across nightly runs."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from recsys import fsio


class Vocabulary:
    """An ordered list of IDs; the position of an ID is its index. Index -1 means unknown."""

    def __init__(self, ids: Iterable[str]):
        self.ids = np.asarray(list(ids), dtype=object)
        self._index = pd.Index(self.ids)
        if not self._index.is_unique:
            raise ValueError("vocabulary IDs must be unique")

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self, ids) -> np.ndarray:
        """Indices of `ids` (int64), -1 for IDs not in the vocabulary."""
        return self._index.get_indexer(pd.Index(np.asarray(ids, dtype=object))).astype(np.int64)

    def extended(self, new_ids: Iterable[str]) -> "Vocabulary":
        """This vocabulary with unseen IDs appended in sorted order: existing indices never move."""
        new = pd.Index(np.asarray(sorted(set(new_ids)), dtype=object))
        added = new[self._index.get_indexer(new) < 0]
        return Vocabulary(np.concatenate([self.ids, added.to_numpy(dtype=object)]))

    def save(self, path: str) -> None:
        """Write one ID per line, atomically."""
        fsio.atomic_write_text(path, "".join(f"{i}\n" for i in self.ids))

    @classmethod
    def load(cls, path: str) -> "Vocabulary":
        """Read a vocabulary written by `save`."""
        text = fsio.read_text(path)
        return cls(text.split("\n")[:-1] if text else [])
