"""`make demo` as a newcomer sees it: the nightly on the embedded MovieLens data, a significant verdict
of the best model over popularity under the documented protocol, three users' samples, and the A/B
report with every section and plot; `recsys inspect` on the demo's versions."""
import os
import re

import pytest
import yaml

from recsys import cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_the_demo_ends_with_a_significant_verdict_and_writes_the_full_report(tmp_path, capsys):
    conf = yaml.safe_load(open(os.path.join(REPO, "data", "recsys.yaml")))
    data = os.path.join(REPO, "data")
    conf["source"]["path"] = os.path.join(data, conf["source"]["path"])
    conf["source"]["items_path"] = os.path.join(data, conf["source"]["items_path"])
    conf["artifacts"]["root"] = str(tmp_path / "artifacts")
    (tmp_path / "recsys.yaml").write_text(yaml.safe_dump(conf))
    assert cli.main(["demo", "--config", str(tmp_path / "recsys.yaml")]) == 0
    out = capsys.readouterr().out.splitlines()
    verdict = out[-1]
    assert re.match(r"A/B (two_tower|mf) \(B\) vs popularity \(A\): B is better on recall@20", verdict), verdict
    p = re.search(r"p (?:< 0\.001|= ([0-9.]+))", verdict)
    assert p and (p.group(1) is None or float(p.group(1)) < 0.05)
    assert sum(line.startswith("  user ") for line in out) == 3
    html = open(out[-2].split("report: ", 1)[1]).read()
    for section in ("What was compared", "Metrics", "Segments", "Popularity bias", "Sample recommendations",
                    "Item embeddings of"):
        assert f"<h2>{section}" in html, section
    assert html.count("data:image/png;base64,") >= 6 and "Benjamini-Hochberg" in html
    capsys.readouterr()
    assert cli.main(["inspect", "published", "--config", str(tmp_path / "recsys.yaml")]) == 0
    inspected = capsys.readouterr().out
    agree, rand = map(float, re.search(r"with it: ([0-9.]+) \(random items: ([0-9.]+)", inspected).groups())
    assert agree > rand
