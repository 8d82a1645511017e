"""The command line: one-line errors with exit code 2, and the registry commands."""
import pytest

from recsys import cli, registry


def run(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bad_config_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("split:\n  test_fraction: 2\n")
    code, out, err = run(["build-dataset", "--config", str(bad)], capsys)
    assert code == 2 and err.count("\n") == 1 and "split.test_fraction=2" in err


def test_missing_config_file(tmp_path, capsys):
    code, _, err = run(["train", "--model", "mf", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "file not found" in err


def test_no_dataset_yet(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("artifacts:\n  root: art\n")
    code, _, err = run(["train", "--model", "mf", "--config", str(cfg)], capsys)
    assert code == 2 and "no dataset" in err


def test_registry_commands(served, tmp_path, capsys):
    root = served["root"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"artifacts:\n  root: {root}\n")
    before = registry.current_version(root)
    code, out, _ = run(["versions", "--config", str(cfg)], capsys)
    assert code == 0 and all(v in out for v in served["versions"].values()) and f"* {before}" in out
    target = served["versions"]["mf"]
    assert run(["publish", target, "--config", str(cfg)], capsys)[0] == 0
    assert registry.current_version(root) == target
    code, out, _ = run(["rollback", "--config", str(cfg)], capsys)
    assert code == 0 and registry.current_version(root) == before
    code, _, err = run(["publish", "no-such-version", "--config", str(cfg)], capsys)
    assert code == 2 and "not found" in err and registry.current_version(root) == before


def test_an_unwritable_artifact_root_is_one_line(tmp_path, capsys):
    data = tmp_path / "e.csv"
    data.write_text("user_id,item_id,timestamp\n" + "".join(f"u{u},i{i},{u * 10 + i}\n" for u in range(5) for i in range(4)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"source: {{path: {data}, format: csv, items_format: none}}\nfeedback: {{mode: implicit}}\n"
                   f"artifacts: {{root: /proc/recsys-cannot-write-here}}\n")
    code, _, err = run(["build-dataset", "--config", str(cfg)], capsys)
    assert code == 2 and err.count("\n") == 1 and "/proc/recsys-cannot-write-here" in err
