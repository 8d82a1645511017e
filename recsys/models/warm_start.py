"""Warm start: carry rows of a previous version's tables into a new model, matched by what they stand for.

Rows of ID tables carry over by ID string, rows of feature tables by token (genre, title token, user
feature), the year buckets and anything else only when the shape is unchanged. The names used here
are the stable layer names saved in the version's weights (`<side>.<layer>`, plus `<name>:names`
for the tokens of a feature table's rows).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from recsys.models.base import WarmStart

LAYERS = ("user_embedding", "history_embedding", "item_embedding", "genre_embedding", "token_embedding",
          "year_embedding", "user_feature_embedding", "item_bias")
_ROWS_BY = {"user_embedding": "user", "history_embedding": "item", "item_embedding": "item", "item_bias": "item",
            "genre_embedding": "genre", "token_embedding": "token", "user_feature_embedding": "user_feature"}


def named_layers(query_tower, candidate_tower):
    """(stable name, attribute, layer) for every weight-carrying layer of both towers."""
    for side, tower in (("query", query_tower), ("candidate", candidate_tower)):
        for attr in LAYERS:
            if hasattr(tower, attr):
                yield f"{side}.{attr}", attr, getattr(tower, attr)


def row_names(ts) -> dict:
    """Kind -> the string each table row (after the pad row 0) stands for, for the token-keyed tables."""
    out = {"user": ts.user_ids, "item": ts.item_ids}
    if ts.item_features is not None and ts.item_features.genre_names is not None:
        out["genre"], out["token"] = ts.item_features.genre_names, ts.item_features.token_names
    if ts.user_features is not None:
        out["user_feature"] = ts.user_features.names
    return out


def tower_weights(query_tower, candidate_tower, names: dict) -> dict:
    """{stable layer name: array} of both towers, plus '<name>:names' (the token of each row) for the
    feature tables: what a later version warm-starts from."""
    out = {name: table(layer) for name, _, layer in named_layers(query_tower, candidate_tower)}
    for name, attr, _ in named_layers(query_tower, candidate_tower):
        kind = _ROWS_BY.get(attr)
        if kind not in (None, "user", "item") and kind in names:
            out[f"{name}:names"] = np.asarray(names[kind], dtype=str)
    return out


def table(layer) -> np.ndarray:
    """An embedding layer's whole table (the row ranges of a table sharded over parameter servers,
    concatenated)."""
    parts = layer.get_weights()
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def set_table(layer, value: np.ndarray) -> None:
    """Write a whole table into an embedding layer, split into its shards' row ranges if sharded."""
    parts = layer.get_weights()
    if len(parts) == 1:
        layer.set_weights([value])
    else:
        layer.set_weights(np.split(value, np.cumsum([p.shape[0] for p in parts])[:-1]))


def warm_start(query_tower, candidate_tower, names: dict, previous: WarmStart | None) -> dict:
    """Copy rows of carried-over IDs and feature tokens from `previous`; returns {layer: rows copied}."""
    if previous is None:
        return {}
    weights = previous.weights
    copied = {}
    for name, attr, layer in named_layers(query_tower, candidate_tower):
        if name not in weights:
            continue
        old = weights[name]
        value = table(layer)
        kind = _ROWS_BY.get(attr)
        if kind is None:
            if old.shape == value.shape:
                set_table(layer, old)
            continue
        old_names = {"user": previous.user_ids, "item": previous.item_ids}.get(kind, weights.get(f"{name}:names"))
        if old_names is None or kind not in names or old.shape[1] != value.shape[1]:
            continue  # no names to match rows by, or the dimension changed: nothing carries over
        new_rows, old_rows = _row_map(names[kind], old_names)
        value[0] = old[0]  # out-of-vocabulary / padding row
        value[new_rows + 1] = old[old_rows + 1]
        set_table(layer, value)
        copied[name] = int(len(new_rows))
    return copied


def _row_map(new_ids: np.ndarray, old_ids: np.ndarray):
    pos = pd.Index(old_ids).get_indexer(pd.Index(new_ids))
    keep = pos >= 0
    return np.flatnonzero(keep), pos[keep]
