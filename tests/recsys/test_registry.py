"""The registry on versions written by recsys.version.write: resolve, publish, rollback, prune."""
import numpy as np
import pytest
import scipy.sparse as sp

from recsys import registry, version
from recsys.errors import DataError
from recsys.models import create
from recsys.models.popularity import Popularity


def write_popularity_version(root, vid):
    model = create("popularity")
    model.user_ids, model.item_ids = np.array(["u1"], dtype=object), np.array(["a", "b"], dtype=object)
    model.popularity = Popularity(2, np.array([3, 5]))
    return version.write_parts(root, model, sp.csr_matrix((1, 2)), {"dataset_id": "d"}, version=vid)


def test_resolve_publish_rollback_prune(tmp_path):
    root = str(tmp_path)
    with pytest.raises(DataError, match="no model version"):
        registry.resolve_version(root, "latest")
    with pytest.raises(DataError, match="CURRENT missing"):
        registry.resolve_version(root, None)
    vs = [write_popularity_version(root, f"2026010{i}T000000000Z-popularity") for i in range(1, 5)]
    assert registry.list_versions(root) == vs and registry.resolve_version(root, "latest") == vs[-1]
    with pytest.raises(DataError, match="already exists"):
        write_popularity_version(root, vs[0])
    with pytest.raises(DataError, match="not found"):
        registry.publish(root, "nope")
    with pytest.raises(DataError, match="no previously published"):
        registry.rollback(root)
    registry.publish(root, vs[0])
    registry.publish(root, vs[1])
    assert registry.current_version(root) == vs[1] and registry.rollback(root) == vs[0]
    # nothing was published before vs[0]: no further step back (vs[1], rolled back from, is kept by prune)
    assert registry.current_version(root) == vs[0] and registry.previous_published(root) is None
    # keep 2: the oldest removable versions go; the published one and the one before it stay
    assert registry.prune(root, keep=2) == [vs[2], vs[3]]
    assert registry.list_versions(root) == vs[:2]
    lv = version.load(root, vs[0])
    assert lv.model_name == "popularity" and lv.popularity.order.tolist() == [1, 0]


def test_rollback_steps_back_through_the_history_and_to_a_named_version(tmp_path):
    root = str(tmp_path)
    vs = [write_popularity_version(root, f"2026010{i}T000000000Z-popularity") for i in range(1, 6)]
    for v in vs[:4]:
        registry.publish(root, v)
    assert registry.rollback(root) == vs[2] and registry.rollback(root) == vs[1]   # two steps back, not a toggle
    registry.publish(root, vs[4])                                                  # a new night publishes
    assert registry.previous_published(root) == vs[1]
    assert registry.rollback(root, to=vs[0]) == vs[0] and registry.current_version(root) == vs[0]
    with pytest.raises(DataError, match="not a version published before"):
        registry.rollback(root, to=vs[4])     # published, but after: rolling "back" to it is a publish
    assert registry.previous_published(root) is None
