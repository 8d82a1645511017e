"""An artifact root in a bucket: s3:// through moto's fake S3 (in process, so Beam's own S3 filesystem
and boto3 run for real against it); missing credentials and a missing filesystem are one line."""
import os

import boto3
import pytest
from moto import mock_aws

from recsys import cli, registry
from recsys.engine import Engine

BUCKET = "recsys-artifacts"


@pytest.fixture
def bucket(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        yield s3


def _upload(s3, local_root: str, prefix: str, version: str) -> None:
    folder = os.path.join(local_root, "models", version)
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            s3.upload_file(path, BUCKET, f"{prefix}/models/{version}/{os.path.relpath(path, folder)}")


def test_versions_publish_rollback_and_serving_from_an_s3_root(served, bucket, tmp_path, capsys):
    root = f"s3://{BUCKET}/recsys"
    mf, tt = served["versions"]["mf"], served["versions"]["two_tower"]
    for v in (mf, tt):
        _upload(bucket, served["root"], "recsys", v)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"artifacts:\n  root: {root}\n")
    assert cli.main(["publish", mf, "--config", str(cfg)]) == 0
    assert cli.main(["publish", tt, "--config", str(cfg)]) == 0
    assert registry.current_version(root) == tt
    capsys.readouterr()
    assert cli.main(["versions", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"* {tt}" in out and mf in out
    # the engine loads the published version from the bucket and answers as it does from local files
    remote, local = Engine.load(root), Engine.load(served["root"], tt)
    assert remote.version == tt
    for user in ("u1", "u7", "someone new"):
        assert remote.recommend(user, k=10).items == local.recommend(user, k=10).items
    # a fresh history runs the query tower, whose SavedModel came down from the bucket
    history = list(local.lv.items.ids[:3])
    assert remote.recommend_for_history(history, k=10).items == local.recommend_for_history(history, k=10).items
    assert cli.main(["rollback", "--config", str(cfg)]) == 0
    assert registry.current_version(root) == mf
    # CURRENT is an object written whole (a reader never sees half of it)
    assert bucket.get_object(Bucket=BUCKET, Key="recsys/CURRENT")["Body"].read().decode().strip() == mf


def test_no_credentials_is_one_line_not_eight_minutes_of_retries(tmp_path, capsys, monkeypatch):
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"artifacts:\n  root: s3://{BUCKET}/recsys\n")
    assert cli.main(["versions", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no AWS credentials found" in err


def test_a_bucket_scheme_without_its_filesystem_names_the_extra(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("artifacts:\n  root: gs://my-bucket/recsys\n")
    assert cli.main(["versions", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    # without apache-beam[gcp] (make install has none): the extra; with it, no credentials on this machine
    assert err.count("\n") == 1 and "gs://my-bucket/recsys" in err
    assert "pip install 'recsys[gcp]'" in err or "no Google Cloud credentials" in err


def test_s3_without_boto3_names_the_extra(tmp_path, capsys, monkeypatch):
    # Beam registers its S3 filesystem whether or not boto3 is installed
    import sys
    monkeypatch.setitem(sys.modules, "boto3", None)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"artifacts:\n  root: s3://{BUCKET}/recsys\n")
    assert cli.main(["versions", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'recsys[aws]'" in err
