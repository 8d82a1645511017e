"""Models. `MODELS` maps each model name to its class; adding a model is one class (implementing
`recsys.models.base.Model`) plus one entry here, and nothing else branches on model names."""
from recsys.errors import ConfigError, DataError
from recsys.models.base import Model
from recsys.models.embedding import MF, TwoTower
from recsys.models.popularity import PopularityModel
from recsys.models.rules import AttributePopularity, Repeat

MODELS: dict[str, type[Model]] = {"two_tower": TwoTower, "mf": MF, "popularity": PopularityModel,
                                  "attribute_popularity": AttributePopularity, "repeat": Repeat}


def create(name: str, config=None) -> Model:
    """A new, unfitted model of this name.

    Raises:
        DataError: for a name not in MODELS.
    """
    if name not in MODELS:
        raise DataError(f"model={name!r} is invalid: allowed: {', '.join(MODELS)}")
    return MODELS[name](config)


def check_names(names, key: str = "nightly.models") -> None:
    """Raise ConfigError naming `key` unless every name is a key of MODELS (and there is one)."""
    if not names or any(n not in MODELS for n in names):
        raise ConfigError(key, list(names), f"a non-empty list of {', '.join(MODELS)}")
