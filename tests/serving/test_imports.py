"""What the service loads, and the direction of imports between the three packages."""
import ast
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SERVE_AND_LIST_MODULES = """
import json, sys
from fastapi.testclient import TestClient
from serving.holder import EngineHolder
from serving.main import create_app
from serving.settings import Settings
root, versions = sys.argv[1], json.loads(sys.argv[2])
holder = EngineHolder(root, poll_seconds=0)
with TestClient(create_app(Settings(root=root, poll_seconds=0), holder)) as c:
    for v in versions:
        changed, msg = holder.reload(v)
        assert holder.engine.version == v, msg
        assert c.get("/v1/users/u1/recommendations?k=5").status_code == 200
        assert c.post("/v1/recommendations", json={"history": ["i1", "i2"], "k": 5}).status_code == 200
        assert c.get("/v1/items/i1/similar?k=5").status_code == 200
# what the `train` extra brings: the service image (`recsys[serve]`) does not have them. (tf_keras is
# left out of the check: TensorFlow loads it when it is installed, and a serve-only install without it
# loads and serves all three model kinds, measured in a fresh venv; docs/OPERATIONS.md)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules}
                        & {"apache_beam", "tensorflow_recommenders", "matplotlib"})))
"""


def test_the_service_never_imports_what_only_the_train_extra_installs(served):
    """Every model kind loaded and queried in a fresh process: no Beam, TFRS or matplotlib module in
    sys.modules (the Docker image installs `.[serve]` without them)."""
    versions = [served["versions"][k] for k in ("popularity", "mf", "two_tower")]
    out = subprocess.run([sys.executable, "-c", _SERVE_AND_LIST_MODULES, served["root"], json.dumps(versions)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def _imports(path):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_recsys_never_imports_pipelines_or_serving():
    """pipelines/ and serving/ depend on recsys/, never the reverse (the CLI reaches them through
    `recsys.cli._outside`, by name, at run time)."""
    bad = []
    for dirpath, _, files in os.walk(os.path.join(REPO, "recsys")):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                bad += [(os.path.relpath(path, REPO), m) for m in _imports(path)
                        if m.split(".")[0] in ("pipelines", "serving")]
    assert bad == []


def test_serving_and_pipelines_do_not_import_each_other():
    for pkg, other in (("serving", "pipelines"), ("pipelines", "serving")):
        for f in os.listdir(os.path.join(REPO, pkg)):
            if f.endswith(".py"):
                assert not [m for m in _imports(os.path.join(REPO, pkg, f)) if m.split(".")[0] == other], (pkg, f)


def test_the_image_installs_the_serve_extra_and_checks_readiness():
    """The Dockerfile installs the project's metadata (`.[serve]` with constraints.txt), not a hand-made
    list, and its health check is /readyz (200 only with a version loaded), not /healthz; the serve
    install leaves the train extra out."""
    import configparser
    text = open(os.path.join(REPO, "Dockerfile")).read()
    assert "ARG EXTRAS=serve\n" in text and '-c constraints.txt ".[${EXTRAS}]"' in text     # serve by default
    assert "/readyz" in text and "/healthz" not in text.split("HEALTHCHECK")[1]
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    base = cfg["options"]["install_requires"] + cfg["options.extras_require"]["serve"]
    assert not any(name in base for name in ("apache-beam", "tensorflow-recommenders", "matplotlib", "tf-keras"))
