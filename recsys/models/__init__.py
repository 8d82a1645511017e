"""Models: two_tower and mf share one retrieval model and trainer; popularity is the baseline."""
from recsys.models.popularity import Popularity  # noqa: F401
