"""The interface every model implements (`recsys.models.MODELS` maps a name to a class of it).

A model is fitted on a TrainSet or loaded from a version directory (recsys/version.py), and in both
states answers the same questions:
- `user_vectors(user_idx, history)`: query vectors of users the model knows (index into its user
  vocabulary), given the items each has interacted with so far (newest first, -1 padded);
- `history_vectors(history, user_idx)`: query vectors from a history alone (fresh items at request
  time, or a user the model has never seen; `user_idx` -1 then);
- `item_embeddings`: the item side, scored against query vectors by dot product;
- `popularity`: the fallback for requests with neither a known user nor a history.
A model that is not `personalized` (popularity) has no vectors: everyone gets the popularity order.

What gets saved: `item_embeddings`, `user_embeddings` (the precomputed vector of every known user, so
a request for a known user costs no model call), `weights()` (what the next version warm-starts from)
and `query_module()` (a TensorFlow module behind string lookups, saved as a SavedModel). The version
module decides where each goes; a model never touches files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np

from recsys.config import ModelConfig

Progress = Callable[[str], None]


@dataclass
class FitReport:
    """What a fit did: the manifest's `training` section."""
    epochs: list = field(default_factory=list)        # per epoch: loss, validation metrics, speed
    seconds: float = 0.0
    examples_per_second: float = 0.0
    best_epoch: int = 0
    warm_started: dict = field(default_factory=dict)  # table name -> rows carried over
    phases: dict = field(default_factory=dict)        # seconds by part: setup, epochs, validation, ...
    chosen: dict = field(default_factory=dict)        # what a rule chose on validation (its attribute, ...)
    refit_dropped: str = ""                           # why the time budget went to epochs, not a refit


@dataclass
class WarmStart:
    """A previous version's weights and the IDs their rows stand for (rows carry over by ID)."""
    version: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    weights: dict
    refit: bool = False          # that version was refit on train + validation


class Model:
    """Base class: attributes every model has, and the methods it must implement."""

    name: ClassVar[str] = ""
    personalized: ClassVar[bool] = True     # False: no vectors, popularity order for everyone
    uses_history: ClassVar[bool] = False    # the query vector depends on the user's recent items
    rule: ClassVar[bool] = False            # a rule (no training, no weights): what a model must beat

    def __init__(self, config: ModelConfig | None = None):
        self.config = config or ModelConfig()
        self.popularity = None                          # models.popularity.Popularity
        self.item_embeddings: np.ndarray | None = None  # [n_items, d]
        self.user_embeddings: np.ndarray | None = None  # [n_users, d], after save or load
        self.user_ids: np.ndarray = np.zeros(0, dtype=object)
        self.item_ids: np.ndarray = np.zeros(0, dtype=object)
        self.report = FitReport()

    # ---- training ------------------------------------------------------------------------------
    def fit(self, ts, ks=(10, 20, 50), previous: WarmStart | None = None, progress: Progress = print,
            stop_after: int | None = None, max_seconds: float | None = None, validate=None,
            refit_ratio: float | None = None) -> FitReport:
        """Fit on a TrainSet; early-stops on its validation EvalSet when it has one and `validate` is given.

        Args:
            ts: the TrainSet (recsys.data.trainset).
            ks: cutoffs of the per-epoch validation metrics.
            previous: a previous version's weights to start from (rows matched by ID).
            progress: receives one line per epoch.
            stop_after: run exactly this many epochs and keep the last weights (the refit).
            max_seconds: stop before an epoch that would end past this budget.
            refit_ratio: a refit on train + validation follows, each of its epochs this many times
                one here: the budget covers it too (`recsys.models.training.after_epoch`); models
                without epochs ignore it.
            validate: `validate(model, eval_set, ks, item_counts) -> {metric: mean}`, the metrics an
                epoch is chosen by (`recsys.evaluation.scorer.validation_metrics`); None: the loss.
        Returns:
            The FitReport (also kept as `self.report`).
        """
        raise NotImplementedError

    # ---- scoring -------------------------------------------------------------------------------
    def user_vectors(self, user_idx: np.ndarray, history: np.ndarray) -> np.ndarray:
        """Query vectors [n, d] of known users (`user_idx` >= 0) with their histories [n, L]."""
        raise NotImplementedError(f"{self.name} has no user vectors")

    def history_vectors(self, history: np.ndarray, user_idx: np.ndarray | None = None) -> np.ndarray:
        """Query vectors [n, d] from item histories [n, L] (-1 pads); `user_idx` -1 for unknown users."""
        raise NotImplementedError(f"{self.name} has no history vectors")

    def chosen_config(self) -> dict:
        """Model settings this fit chose on validation, for the refit on train + validation (which has
        no validation to choose on): e.g. the rule attribute_popularity's attribute."""
        return {}

    def own_items(self, user_idx: np.ndarray, history: np.ndarray, fresh: bool = False):
        """Items each row gets ahead of the ranking, by value (a sparse [n, n_items] matrix), or None:
        "buy again" puts a user's own items first. `user_idx` -1 for unknown users; `history` [n, L]
        of item indices (-1 pads), counted for unknown users, and for known ones when `fresh` (given
        at request time)."""
        return None

    # ---- saving --------------------------------------------------------------------------------
    def weights(self) -> dict:
        """{name: array} a later version warm-starts from (empty: nothing to carry over)."""
        return {}

    def query_module(self):
        """A tf.Module with a `serve(user_id, history)` signature on strings, or None."""
        return None

    def load_state(self, user_ids: np.ndarray, item_ids: np.ndarray, item_embeddings: np.ndarray | None,
                   user_embeddings: np.ndarray | None, query_model: Callable | None, history_length: int) -> None:
        """Take the saved state back (version.load calls this on a fresh instance).

        Args:
            user_ids, item_ids: the version's vocabularies (row i = index i).
            item_embeddings, user_embeddings: the saved arrays (None for a model without vectors).
            query_model: a callable that loads the saved query module (loaded only if called).
            history_length: the history length the model was trained with.
        """
        self.user_ids, self.item_ids = user_ids, item_ids
        self.item_embeddings, self.user_embeddings = item_embeddings, user_embeddings
