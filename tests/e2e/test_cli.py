"""The command line: one-line errors with exit code 2, and the registry commands."""
import os

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


# ---- a CLI a new team is at home with ------------------------------------------------------------------
@pytest.fixture
def served_config(served, tmp_path):
    path = tmp_path / "recsys.yaml"
    path.write_text(f"artifacts:\n  root: {served['root']}\n")
    return str(path)


def test_version_flag_and_verbose_after_the_verb(capsys, served_config, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")   # -v turns TensorFlow's logs on for this process
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("recsys ")
    code, out, _ = run(["versions", "--config", served_config, "-v"], capsys)
    assert code == 0 and "version" in out


def test_a_forgotten_config_is_one_line_not_movielens_defaults(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RECSYS_CONFIG", raising=False)
    code, _, err = run(["versions"], capsys)
    assert code == 2 and err.count("\n") == 1 and "no config" in err
    (tmp_path / "recsys.yaml").write_text("artifacts:\n  root: art\n")
    assert run(["versions"], capsys)[0] == 0          # ./recsys.yaml is found


def test_version_aliases_published_latest_and_latest_of_a_model(served):
    root, v = served["root"], served["versions"]
    assert registry.resolve_version(root, "published") == registry.current_version(root)
    assert registry.resolve_version(root, "latest:mf") == v["mf"]
    assert registry.resolve_version(root, "latest:two_tower") == v["two_tower"]
    with pytest.raises(Exception, match="no model version of model 'nope'"):
        registry.resolve_version(root, "latest:nope")


def test_recommend_verb_prints_what_the_service_answers_and_json(served, served_config, capsys):
    import json
    from recsys.engine import Engine
    user = str(served["trainset"].user_ids[0])
    want = Engine.load(served["root"], served["versions"]["mf"]).recommend(user, 5)
    code, out, _ = run(["recommend", user, "-k", "5", "--version", "latest:mf", "--config", served_config, "--json"],
                       capsys)
    body = json.loads(out)
    assert code == 0 and body["items"] == want.items and body["source"] == "personalized" and len(body["titles"]) == 5
    code, out, _ = run(["recommend", "--history", want.items[0], "--version", "latest:mf", "--config", served_config],
                       capsys)
    assert code == 0 and "history" in out.splitlines()[0] and want.items[0] not in out.split("\n", 1)[1]


def test_evaluate_takes_the_version_as_an_argument_and_prints_json(served, served_config, capsys):
    import json
    code, out, _ = run(["evaluate", "latest:mf", "--config", served_config, "--json"], capsys)
    body = json.loads(out)
    assert code == 0 and body["version"] == served["versions"]["mf"] and "recall@20" in body["model"]
    code, out, _ = run(["versions", "--config", served_config, "--json"], capsys)
    assert {v["version"] for v in json.loads(out)} >= set(served["versions"].values())


def test_no_tensorflow_or_beam_noise_in_normal_output(served, served_config):
    import subprocess
    import sys
    user = str(served["trainset"].user_ids[0])
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "RECSYS_VERBOSE")}
    out = subprocess.run([sys.executable, "-m", "recsys.cli", "recommend", user, "--version", "latest:two_tower",
                          "--history", str(served["trainset"].item_ids[0]), "--config", served_config],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert "cuInit" not in out.stderr and "apitools" not in out.stderr and out.stderr.strip() == ""


def test_demo_samples_show_three_users_history_and_titled_recommendations(served, capsys):
    from recsys import cli
    from recsys.engine import Engine
    root, current = served["root"], served["versions"]["two_tower"]
    users = cli._print_samples(root, current, served["dataset"].id)
    out = capsys.readouterr().out.splitlines()
    titles = dict(zip(*[__import__("pandas").read_parquet(served["dataset"].item_features_path)[c]
                        for c in ("item", "title")]))
    assert len(users) == len(set(users)) == 3
    assert users == cli._print_samples(root, current, served["dataset"].id)        # seeded
    for n, user in enumerate(users):
        head = out[1 + n * 6]
        assert head.startswith(f"  user {user}, recently: ")
        want = Engine.load(root, current).recommend(user, 5).items
        assert [line.split(". ", 1)[1].rsplit("  (", 1)[0] for line in out[2 + n * 6: 7 + n * 6]] == \
            [titles[i] for i in want]


def test_evaluate_through_index_prints_exact_index_and_loss(served, served_config, capsys):
    import json
    code, out, _ = run(["evaluate", "latest:mf", "--through-index", "--config", served_config], capsys)
    assert code == 0 and "brute_force index" in out and "recall@20" in out and "overlap" in out
    code, out, _ = run(["evaluate", "latest:mf", "--through-index", "--json", "--config", served_config], capsys)
    body = json.loads(out)
    assert code == 0 and body["loss"]["recall@20"] == pytest.approx(0.0) and body["top_k_overlap"] == pytest.approx(1.0)


def test_inspect_reports_neighbour_agreement_against_random_and_writes_the_map(served, served_config, capsys,
                                                                               tmp_path):
    import json
    code, out, _ = run(["inspect", "latest:two_tower", "--out", str(tmp_path / "ins"), "--config", served_config],
                       capsys)
    assert code == 0 and "nearest neighbours" in out and "random items" in out
    assert (tmp_path / "ins" / "embedding_map.png").stat().st_size > 10_000
    body = json.loads((tmp_path / "ins" / "inspect.json").read_text())
    # clustered items: an item's neighbours share its cluster's genre far more often than random items do
    assert body["attribute"] == "genres" and body["neighbour_agreement"] > 2 * body["random_agreement"]
    code, out, _ = run(["inspect", "latest:popularity", "--config", served_config], capsys)
    assert code != 0 and "no item embeddings" in out + _


def test_a_reader_that_goes_away_is_quiet(served, tmp_path):
    """`recsys versions --json | head -1`: the reader closes the pipe; no "error: Broken pipe", exit 141
    (what a tool killed by SIGPIPE reports)."""
    import subprocess
    import sys
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"artifacts:\n  root: {served['root']}\n")
    proc = subprocess.Popen([sys.executable, "-m", "recsys.cli", "versions", "--json", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()            # gone before the command writes a byte
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert err.strip() == "", err


def test_help_states_each_default_once_and_never_none(capsys):
    import re
    for verb in ("build-dataset", "init", "evaluate", "compare", "batch-recommend"):
        with pytest.raises(SystemExit):
            cli.main([verb, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: None)" not in text, verb
        assert not re.search(r"\(default: [^()]*\) \(default:", text), verb     # "(default: x) (default: y)"


def test_log_lines_carry_a_utc_timestamp_and_the_logger(tmp_path):
    import re
    import subprocess
    import sys
    (tmp_path / "c.yaml").write_text(f"artifacts:\n  root: {tmp_path}\n")
    code = ("import logging, sys; from recsys import cli; cli.main(['versions', '--config', sys.argv[1] + '/c.yaml']); "
            "logging.getLogger('recsys.serving').warning('serving version v2 (was v1)')")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    line = out.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARNING recsys\.serving: serving version v2 \(was v1\)",
                        line), out.stderr


def test_a_host_that_configured_logging_keeps_its_handlers(tmp_path, capsys):
    # pytest, or a program embedding the CLI, may have put a handler without a formatter on the root logger
    import logging
    bare = logging.NullHandler()
    logging.getLogger().addHandler(bare)
    try:
        (tmp_path / "c.yaml").write_text(f"artifacts:\n  root: {tmp_path}\n")
        assert cli.main(["versions", "--config", str(tmp_path / "c.yaml")]) == 0
        assert bare in logging.getLogger().handlers and bare.formatter is None
    finally:
        logging.getLogger().removeHandler(bare)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_log_format_json_is_one_object_per_line(tmp_path, how):
    import json
    import subprocess
    import sys
    (tmp_path / "c.yaml").write_text(f"artifacts:\n  root: {tmp_path}\n")
    argv = ["versions", "--config", str(tmp_path / "c.yaml")] + (["--log-format", "json"] if how == "flag" else [])
    code = ("import logging, sys; from recsys import cli; cli.main(sys.argv[1:]); "
            "logging.getLogger('recsys.serving').warning('serving version v2')")
    env = dict(os.environ, RECSYS_LOG_FORMAT="json" if how == "env" else "text")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120, env=env)
    line = json.loads(out.stderr.strip().splitlines()[-1])
    assert line["logger"] == "recsys.serving" and line["message"] == "serving version v2" and line["level"] == "WARNING"
    assert line["time"].endswith("Z")


def test_an_unknown_log_format_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RECSYS_LOG_FORMAT", "xml")
    code, _, err = run(["versions", "--config", str(tmp_path / "c.yaml")], capsys)
    assert code == 2 and err.count("\n") == 1 and "'xml'" in err and "RECSYS_LOG_FORMAT" in err
