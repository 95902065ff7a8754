"""The import graph of qw's own modules: acyclic, and libraries never reach up into workflows."""

import ast
import graphlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cli", "datagen", "training", "ue_capture", "qw")

# What a user runs (a `qw` command's body) versus what those workflows are built from.
WORKFLOWS = {"qw.training.train.loop", "qw.training.quantization.qat", "qw.training.export.exporter", "qw.training.evaluation.evaluate", "qw.training.infer",
             "qw.training.demo", "cli", "qw"}
LIBRARIES = {"qw.training.config", "qw.training.model.hdr", "qw.training.model.warp", "qw.training.model.qwnet", "qw.training.losses",
             "qw.training.quantization.fake_quant", "qw.training.export.qwq", "qw.training.export.integer_ref", "qw.training.export.onnx_graph", "qw.training.model.fast",
             "qw.training.model.stats", "qw.training.data", "qw.training.sequences", "qw.training.evaluation.metrics", "qw.training.evaluation.taa"}


def own_modules() -> dict[str, Path]:
    files = [ROOT / "qw/cli.py"] + [p for pkg in PACKAGES[1:] for p in (ROOT / pkg).rglob("*.py")]
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p for p in files}


def imports(path: Path, module: str, known: set[str]) -> set[str]:
    """Every own module `path` imports, lazy (function-level) imports included."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = own_modules()
    return {m: imports(p, m, set(modules)) for m, p in modules.items()}


def test_every_training_module_has_a_layer():
    training = {m for m in own_modules() if m.startswith("training.")}
    assert training <= WORKFLOWS | LIBRARIES, f"unclassified: {sorted(training - WORKFLOWS - LIBRARIES)}"


def test_libraries_never_import_workflows():
    graph = import_graph()
    upward = {(lib, dep) for lib in LIBRARIES & graph.keys() for dep in graph[lib] & WORKFLOWS}
    assert not upward


def test_import_graph_is_acyclic():
    graphlib.TopologicalSorter(import_graph()).prepare()  # raises CycleError naming the cycle
