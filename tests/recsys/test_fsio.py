"""The one atomic directory write and its neighbours, on local paths."""
import os

import pytest

from recsys import fsio


def test_atomic_dir_appears_whole_or_not_at_all(tmp_path):
    final = str(tmp_path / "models" / "v1")
    with pytest.raises(RuntimeError):
        with fsio.atomic_dir(final) as d:
            fsio.write_bytes(os.path.join(d, "a.bin"), b"x")
            assert not os.path.exists(final)            # nothing visible under the final name yet
            raise RuntimeError("crash mid-write")
    assert not os.path.exists(final) and os.listdir(tmp_path / "models") == []   # and no temp left
    with fsio.atomic_dir(final) as d:
        fsio.write_bytes(os.path.join(d, "a.bin"), b"x")
    assert open(os.path.join(final, "a.bin"), "rb").read() == b"x"


def test_atomic_dir_replace_swaps_the_whole_directory(tmp_path):
    final = str(tmp_path / "recs")
    with fsio.atomic_dir(final) as d:
        fsio.write_bytes(os.path.join(d, "old-part"), b"1")
    with pytest.raises(OSError):
        with fsio.atomic_dir(final) as d:       # without replace, an existing directory is not overwritten
            fsio.write_bytes(os.path.join(d, "new-part"), b"2")
    with fsio.atomic_dir(final, replace=True) as d:
        fsio.write_bytes(os.path.join(d, "new-part"), b"2")
    assert os.listdir(final) == ["new-part"] and sorted(os.listdir(tmp_path)) == ["recs"]


def test_match_lists_files_only_sorted_and_a_folder_means_its_files(tmp_path):
    for name in ("b.csv", "a.csv", "sub/c.csv"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x")
    assert fsio.match(str(tmp_path / "*.csv")) == [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    assert fsio.match(str(tmp_path) + "/") == [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    assert fsio.match(str(tmp_path / "**" / "*.csv"))[-1] == str(tmp_path / "sub" / "c.csv")
    assert fsio.match(str(tmp_path / "nope*.csv")) == []


def test_gzipped_files_are_read_decompressed(tmp_path):
    import gzip
    path = tmp_path / "events.csv.gz"
    path.write_bytes(gzip.compress(b"user_id,item_id\n"))
    assert fsio.read_text(str(path)) == "user_id,item_id\n"


def test_is_url():
    assert fsio.is_url("gs://bucket/x") and fsio.is_url("s3://b/k") and not fsio.is_url("/tmp/x")
    assert not fsio.is_url("relative/path") and not fsio.is_url("")


def test_two_dataset_ids_in_the_same_second_differ():
    """Dataset ids had 1-second resolution: two builds in one second collided."""
    import datetime as dt
    from recsys.data.dataset import new_dataset_id
    t = dt.datetime(2026, 11, 26, 12, 0, 0, 1000, tzinfo=dt.timezone.utc)
    assert new_dataset_id(t) != new_dataset_id(t + dt.timedelta(milliseconds=5))
    assert fsio.is_plain_name(new_dataset_id(t))
