"""Most-interacted items: the baseline every report shows and the fallback for unknown users.

`Popularity` is the ranking (counts, ordered by `recsys.ranking`'s tie rule); `PopularityModel` is the model
entry `popularity` of `recsys.models.MODELS` built on it.
"""
from __future__ import annotations

import numpy as np

from recsys import ranking
from recsys.models.base import FitReport, Model


class Popularity:
    """Scores every item by its interaction count (optionally only the most recent `window` rows).

    Ties are broken by the lower item index, everywhere: in `scores` (a tiny index-based offset,
    for score matrices) and in `order` (for top-k without scoring).
    """

    def __init__(self, n_items: int, counts: np.ndarray | None = None):
        self.n_items = n_items
        self.counts = np.zeros(n_items, dtype=np.float64) if counts is None else np.asarray(counts, np.float64)
        self._order = None

    def fit(self, item_idx: np.ndarray, timestamps: np.ndarray | None = None, window_days: int = 0) -> "Popularity":
        """Count interactions per item.

        Args:
            item_idx: item index per interaction.
            timestamps: epoch seconds per interaction, or None (data without time).
            window_days: > 0 with timestamps: count only the rows of the last `window_days` before
                the newest row (`model.popularity_window_days`).
        Returns:
            self.
        """
        if window_days and timestamps is not None and len(timestamps):
            item_idx = item_idx[timestamps >= timestamps.max() - int(window_days) * 86400]
        self.counts = np.bincount(item_idx, minlength=self.n_items).astype(np.float64)
        self._order = None
        return self

    @property
    def scores(self) -> np.ndarray:
        """Counts with a tiny index-based tie-break so rankings are deterministic."""
        return self.counts - np.arange(self.n_items) * 1e-9

    @property
    def order(self) -> np.ndarray:
        """All items, most popular first (ties: lower index first)."""
        if self._order is None:
            self._order = ranking.order(self.counts)
        return self._order

    def score_rows(self, n_rows: int) -> np.ndarray:
        """The popularity scores repeated for `n_rows` rows (a read-only view)."""
        return np.broadcast_to(self.scores.astype(np.float32), (n_rows, self.n_items))


def fit_popularity(ts, window_days: int = 0) -> Popularity:
    """Popularity over a TrainSet's rows, or only those of the last `window_days` before its newest row
    (`model.popularity_window_days`; data without timestamps counts everything)."""
    return Popularity(ts.n_items).fit(ts.item_idx, ts.timestamp, window_days)


class PopularityModel(Model):
    """The `popularity` model: the same ranking for everyone, seen items excluded at request time."""

    name = "popularity"
    personalized = False
    rule = True

    def fit(self, ts, ks=(10, 20, 50), previous=None, progress=print, stop_after=None, max_seconds=None,
            validate=None, refit_ratio=None) -> FitReport:
        """Count interactions per item over the TrainSet (see `Model.fit`)."""
        self.user_ids, self.item_ids = ts.user_ids, ts.item_ids
        self.popularity = fit_popularity(ts, self.config.popularity_window_days)
        self.report = FitReport()
        return self.report
