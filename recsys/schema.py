"""Names the config, the dataset and evaluation share, kept at the bottom of the layers so that
`recsys.config` can validate against them without importing the modules that use them."""
from __future__ import annotations

# items.parquet columns recsys writes itself; a catalog attribute may not take one of these names
ITEM_FIXED_COLUMNS = ("item", "item_idx", "title", "year", "genres", "train_count")

# per-user ranking metrics (recsys.evaluation.metrics computes each at every k of evaluation.ks;
# any of them can be the nightly's primary metric, which every comparison pairs)
RANKING_METRICS = ("recall", "recall_norm", "ndcg", "hit_rate", "map", "mrr")
# metrics of the lists as a whole (no per-user value to pair, except novelty's per-user mean)
LIST_METRICS = ("coverage", "novelty")
