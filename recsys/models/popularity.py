"""Most-interacted items: the baseline every report shows and the fallback for unknown users."""
from __future__ import annotations

import numpy as np


def fit_popularity(ts, window_days: int = 0) -> "Popularity":
    """Popularity over a TrainSet's rows, or only those of the last `window_days` before its newest row
    (`model.popularity_window_days`; data without timestamps counts everything)."""
    return Popularity(ts.n_items).fit(ts.item_idx, ts.timestamp, window_days)


class Popularity:
    """Scores every item by its interaction count (optionally only the most recent `window` rows)."""

    def __init__(self, n_items: int):
        self.n_items = n_items
        self.counts = np.zeros(n_items, dtype=np.float64)

    def fit(self, item_idx: np.ndarray, timestamps: np.ndarray | None = None, window_days: int = 0):
        """Counts over all rows, or with `window_days` and timestamps (epoch seconds) only over those of
        the last `window_days` before the newest row."""
        if window_days and timestamps is not None and len(timestamps):
            item_idx = item_idx[timestamps >= timestamps.max() - int(window_days) * 86400]
        self.counts = np.bincount(item_idx, minlength=self.n_items).astype(np.float64)
        return self

    @property
    def scores(self) -> np.ndarray:
        """Counts with a tiny index-based tie-break so rankings are deterministic."""
        return self.counts - np.arange(self.n_items) * 1e-9

    def score_rows(self, n_rows: int) -> np.ndarray:
        return np.broadcast_to(self.scores.astype(np.float32), (n_rows, self.n_items))
