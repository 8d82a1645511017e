"""The layer order of docs/ARCHITECTURE.md, enforced: every import inside `recsys/` (at the top of a
module or inside a function) points to the same layer or one below, and the import graph has no circle.

Read from the source with `ast`, so an import added anywhere is seen without running it."""
import ast
import fnmatch
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# bottom first; a module may import its own layer and the ones before it (docs/ARCHITECTURE.md)
LAYERS = [
    ("foundation", ["recsys", "recsys.errors", "recsys.schema", "recsys.progress", "recsys.ranking", "recsys.logs"]),
    ("files", ["recsys.fsio"]),
    ("config", ["recsys.config"]),
    ("data", ["recsys.data", "recsys.data.*"]),
    ("index", ["recsys.retrieval", "recsys.retrieval.native_logs", "recsys.retrieval.index"]),
    ("models", ["recsys.models", "recsys.models.*"]),
    ("scoring", ["recsys.evaluation", "recsys.evaluation.metrics", "recsys.evaluation.scorer"]),
    ("version", ["recsys.version"]),
    ("registry", ["recsys.registry"]),
    ("engine and evaluation", ["recsys.engine", "recsys.evaluation.evaluate"]),
    ("comparison", ["recsys.evaluation.compare", "recsys.evaluation.plotting", "recsys.evaluation.inspection"]),
    ("report", ["recsys.evaluation.report"]),
    ("jobs", ["recsys.jobs"]),
    ("commands", ["recsys.init_config", "recsys.cli"]),
]


def modules() -> dict:
    """Every module of the recsys package: dotted name -> path."""
    out = {}
    for directory, _, files in os.walk(os.path.join(REPO, "recsys")):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(directory, f)
                name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                out[name[:-len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


def imports(path: str, known: dict) -> set:
    """The recsys modules a file imports, anywhere in it (`from recsys.models import base` is the
    module recsys.models.base; `from recsys.models import MODELS` is recsys.models)."""
    out = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "recsys")
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "recsys":
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out.add(full if full in known else node.module)
    return {m for m in out if m in known}


def layer_of(name: str) -> int:
    hits = [i for i, (_, patterns) in enumerate(LAYERS) if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    assert hits, f"{name} is in no layer: add it to LAYERS here and to docs/ARCHITECTURE.md"
    return hits[-1]


def graph() -> dict:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_no_import_runs_back_up_the_layers():
    upward = [f"{name} ({LAYERS[layer_of(name)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})"
              for name, deps in sorted(graph().items()) for dep in sorted(deps) if layer_of(dep) > layer_of(name)]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_circle():
    g = graph()
    state: dict = {}

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(g[node]):
            if state.get(dep) == "open":
                pytest.fail("circle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for node in sorted(g):
        if node not in state:
            visit(node, [node])


def test_the_check_sees_an_upward_import(tmp_path):
    """The reader finds imports inside functions too (where upward imports used to hide)."""
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from recsys.models import MODELS\n    import recsys.cli\n")
    assert imports(str(f), modules()) == {"recsys.models", "recsys.cli"}
    assert layer_of("recsys.models") > layer_of("recsys.config")


def test_the_architecture_document_states_this_order():
    """docs/ARCHITECTURE.md lists the same layers, bottom first."""
    text = open(os.path.join(REPO, "docs", "ARCHITECTURE.md")).read()
    positions = [text.find(f"`{patterns[-1]}`") for _, patterns in LAYERS]
    assert all(p >= 0 for p in positions), [LAYERS[i][1][-1] for i, p in enumerate(positions) if p < 0]
    section = text[text.index("## Layers"):]
    order = [section.find(f"`{patterns[-1]}`") for _, patterns in LAYERS]
    assert all(p >= 0 for p in order) and order == sorted(order), order
