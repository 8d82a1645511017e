"""Looking at a version's learned item embeddings (`recsys inspect VERSION`, and the A/B report).

Two views: a 2-D map of the items coloured by their main categorical attribute (genre on MovieLens),
and an intrinsic check of what the geometry learned: for each item, the share of its k nearest
neighbours (by the dot product the service ranks with) that share an attribute value with it, against
the same share for random items. Items whose neighbours disagree most are listed: either cold items
the model knows little about, or items whose attribute says less than their audience does.

The map uses UMAP when `umap-learn` is installed, else t-SNE when scikit-learn is, else PCA (numpy);
the method is named on the plot.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recsys import version as version_mod
from recsys.errors import DataError


@dataclass
class Inspection:
    """What `inspect_version` found."""
    version: str
    model: str
    attribute: str                   # the categorical attribute neighbours are checked against
    k: int
    items: int                       # items with an attribute value (the ones checked)
    neighbour_agreement: float       # mean share of an item's k nearest neighbours sharing a value
    random_agreement: float          # the same share for k random items
    by_value: dict = field(default_factory=dict)      # value -> agreement of its items
    disagreeing: list = field(default_factory=list)   # [{item, title, value, agreement, train_count}]
    method: str = ""                 # how the 2-D map was made
    xy: np.ndarray | None = None     # [n_shown, 2]
    xy_values: list = field(default_factory=list)     # main value per shown point

    def to_dict(self) -> dict:
        """Plain data (no map coordinates)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("xy", "xy_values")}


def _values(feats, attribute: str) -> list:
    """Each row's attribute values as a set (multi-valued attributes have several)."""
    out = []
    for v in feats[attribute]:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out.append(frozenset())
        elif isinstance(v, str):
            out.append(frozenset([v]) if v else frozenset())
        else:
            out.append(frozenset(str(x) for x in v))
    return out


def main_attribute(feats) -> str | None:
    """The categorical attribute to colour by: genres if items have any, else the categorical or
    multi-valued attribute with the most items that have a value."""
    kinds = feats.attrs.get("kinds", {})
    candidates = (["genres"] if "genres" in feats and feats["genres"].map(len).gt(0).any() else []) + \
        [c for c, k in kinds.items() if k in ("categorical", "multi") and c in feats]
    best, best_n = None, 0
    for c in candidates:
        n = sum(1 for v in _values(feats, c) if v)
        if n > best_n:
            best, best_n = c, n
    return best


def _map_2d(x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    try:
        import umap
        return umap.UMAP(random_state=seed).fit_transform(x), "UMAP"
    except ImportError:
        pass
    try:
        from sklearn.manifold import TSNE
        return TSNE(2, random_state=seed, init="pca", perplexity=min(30.0, (len(x) - 1) / 3)).fit_transform(x), "t-SNE"
    except ImportError:
        pass
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T, "PCA (install umap-learn or scikit-learn for a non-linear map)"


def inspect_version(root: str, version: str, k: int = 10, attribute: str | None = None, max_items: int = 5000,
                    n_disagreeing: int = 10, seed: int = 0) -> Inspection:
    """Neighbour agreement and a 2-D map of a personalized version's item embeddings.

    Args:
        root: the artifact root.
        version: a version id.
        k: neighbours per item.
        attribute: the categorical attribute to check (default: `main_attribute`).
        max_items: items checked and drawn at most (a seeded sample above it).
        n_disagreeing: how many of the most disagreeing items to list.
        seed: the sampling seed.
    Raises:
        DataError: the version has no item vectors, no item attributes, or no categorical attribute.
    """
    lv = version_mod.load(root, version)
    if not lv.personalized:
        raise DataError(f"inspect: version {version} is a {lv.model_name} model: it has no item embeddings")
    feats = version_mod.load_item_attributes(root, version, None)
    if feats is None:
        raise DataError(f"inspect: version {version} has no item attributes (items.parquet)")
    attribute = attribute or main_attribute(feats)
    if attribute is None or attribute not in feats:
        raise DataError(f"inspect: version {version}'s items have no categorical attribute to check neighbours "
                        f"against (source.item_columns.attributes)")
    rows = lv.items.lookup(feats["item"].to_numpy(dtype=object))
    values_of = _values(feats, attribute)
    n = len(lv.items)
    values = [frozenset()] * n
    for r, v in zip(rows, values_of):
        if r >= 0:
            values[r] = v
    # a value every item has ("all") says nothing about neighbours: left out
    freq: dict = {}
    for v in values:
        for x in v:
            freq[x] = freq.get(x, 0) + 1
    n_with = sum(1 for v in values if v)
    everywhere = {x for x, c in freq.items() if c == n_with}
    if everywhere:
        values = [v - everywhere for v in values]
    emb = lv.model.item_embeddings
    has = np.flatnonzero([bool(v) for v in values])
    rng = np.random.default_rng(seed)
    checked = np.sort(rng.choice(has, min(max_items, len(has)), replace=False)) if len(has) else has
    # neighbours among every item with a value, by the service's dot product
    agree = np.zeros(len(checked))
    rand = np.zeros(len(checked))
    pool = emb[has]
    for s in range(0, len(checked), 1024):
        block = checked[s:s + 1024]
        scores = emb[block] @ pool.T
        scores[np.arange(len(block)), np.searchsorted(has, block)] = -np.inf   # not itself
        kk = min(k, len(has) - 1)
        top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk > 0 else np.zeros((len(block), 0), int)
        for j, item in enumerate(block):
            mine = values[item]
            agree[s + j] = np.mean([bool(mine & values[has[t]]) for t in top[j]]) if kk else 0.0
            others = rng.choice(has, kk, replace=False) if kk else []
            rand[s + j] = np.mean([bool(mine & values[t]) for t in others]) if kk else 0.0
    by_value: dict = {}
    for j, item in enumerate(checked):
        for v in values[item]:
            by_value.setdefault(v, []).append(agree[j])
    counts = lv.popularity.counts
    titles = dict(zip(feats["item"], feats["title"])) if "title" in feats else {}
    worst = np.argsort(agree, kind="stable")[:n_disagreeing]
    disagreeing = [{"item": str(lv.items.ids[checked[j]]), "title": titles.get(lv.items.ids[checked[j]], ""),
                    "value": ", ".join(sorted(values[checked[j]])), "agreement": float(agree[j]),
                    "train_count": int(counts[checked[j]])} for j in worst]
    if len(checked) < 10:
        raise DataError(f"inspect: only {len(checked)} items of version {version} have a {attribute}: too few "
                        f"to look at neighbours")
    xy, method = _map_2d(emb[checked].astype(np.float64), seed)
    return Inspection(version, lv.model_name, attribute, k, int(len(checked)), float(agree.mean()) if len(agree) else 0.0,
                      float(rand.mean()) if len(rand) else 0.0,
                      {v: float(np.mean(a)) for v, a in sorted(by_value.items(), key=lambda kv: -len(kv[1]))},
                      disagreeing, method, xy, [sorted(values[i])[0] for i in checked])


def map_png(ins: Inspection, max_legend: int = 8) -> bytes:
    """The 2-D map as PNG: the most frequent values in colour-blind-safe colours, the rest grey."""
    from recsys.evaluation.plotting import PALETTE, png, pyplot
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5.5))
    vals = np.asarray(ins.xy_values, dtype=object)
    common = [v for v, _ in sorted(((v, (vals == v).sum()) for v in set(ins.xy_values)), key=lambda t: -t[1])]
    shown = common[:max_legend]
    rest = ~np.isin(vals, shown)
    ax.scatter(ins.xy[rest, 0], ins.xy[rest, 1], s=6, c="#BBBBBB", label="other", alpha=0.6)
    for v, colour in zip(shown, PALETTE * 2):
        m = vals == v
        ax.scatter(ins.xy[m, 0], ins.xy[m, 1], s=8, c=colour, label=f"{v} ({m.sum()})", alpha=0.8)
    ax.set_xlabel(f"{ins.method.split(' (')[0]} dimension 1")
    ax.set_ylabel(f"{ins.method.split(' (')[0]} dimension 2")
    ax.set_title(f"{ins.model} item embeddings, {ins.items} items by {ins.attribute} ({ins.method})", fontsize=9)
    ax.legend(fontsize=7, markerscale=2, loc="best")
    return png(fig)


def summary(ins: Inspection) -> str:
    """Lines for the terminal and the report."""
    lines = [f"inspect {ins.version} ({ins.model}): {ins.items} items with {ins.attribute}",
             f"  share of an item's {ins.k} nearest neighbours sharing a value of {ins.attribute} with it: "
             f"{ins.neighbour_agreement:.3f} (random items: {ins.random_agreement:.3f}, "
             f"{ins.neighbour_agreement / max(ins.random_agreement, 1e-9):.1f}x)",
             f"  map: {ins.method}",
             "  most disagreeing items (agreement, training interactions):"]
    for d in ins.disagreeing[:10]:
        lines.append(f"    {d['item']:>10}  {d['agreement']:.2f}  {d['train_count']:>6}  {d['title'][:50]}  [{d['value']}]")
    return "\n".join(lines)
