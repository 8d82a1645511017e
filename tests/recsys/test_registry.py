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
    assert registry.current_version(root) == vs[0] and registry.previous_published(root) == vs[1]
    # keep 2: the oldest removable versions go; the published one and the one before it stay
    assert registry.prune(root, keep=2) == [vs[2], vs[3]]
    assert registry.list_versions(root) == vs[:2]
    lv = version.load(root, vs[0])
    assert lv.model_name == "popularity" and lv.popularity.order.tolist() == [1, 0]
