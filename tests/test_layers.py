"""The import graph of qw's own modules: acyclic, one namespace, and every import points down the layers.

Layers, lowest first: `qw.datagen` (the data: captures, manifests, block store) → `qw.ue_capture` (the Unreal
backend) and `qw.training` (QW-Net), which do not know each other → `qw` itself (the API, the CLI, the capture
dispatch and scene catalog that join both backends). Inside `qw.training`, libraries never import workflows (the
bodies of `qw` commands). Module names come from pyproject's package-dir mapping, as installed.
"""

import ast
import graphlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OLD_TOP_LEVEL = {"cli", "datagen", "training", "ue_capture"}  # bare names the namespace replaced

# A workflow is what a user runs (a `qw` command's body); libraries are what workflows are built from.
WORKFLOWS = {"qw.training.train.loop", "qw.training.quantization.qat", "qw.training.export.exporter",
             "qw.training.evaluation.evaluate", "qw.training.infer"}
LIBRARIES = {"qw.training.config", "qw.training.model.hdr", "qw.training.model.warp", "qw.training.model.qwnet",
             "qw.training.losses", "qw.training.quantization.fake_quant", "qw.training.export.qwq",
             "qw.training.export.integer_ref", "qw.training.export.onnx_graph", "qw.training.model.fast",
             "qw.training.model.stats", "qw.training.data", "qw.training.sequences", "qw.training.evaluation.metrics",
             "qw.training.evaluation.taa", "qw.training.train.ddp", "qw.training.train.checkpoints",
             "qw.training.train.run_log", "qw.training.train.schedule"}
# layer -> the layers it may import (itself included)
MAY_IMPORT = {"qw.datagen": {"qw.datagen"},
              "qw.ue_capture": {"qw.datagen", "qw.ue_capture"},
              "qw.training": {"qw.datagen", "qw.training"},
              "qw": {"qw", "qw.datagen", "qw.ue_capture", "qw.training"}}


def package_dirs() -> dict[str, Path]:
    """Installed package name -> folder in the checkout, from pyproject's package-dir (the data-only manifests
    package has no code)."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return {name: ROOT / folder for name, folder in mapping.items() if name.count(".") <= 1 and name != "qw.manifests"}


def own_modules() -> dict[str, Path]:
    modules = {}
    for package, folder in package_dirs().items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if package == "qw" and len(parts) > 1:
                continue  # qw/ holds modules only; its subpackages live in their own folders
            modules[".".join((package, *parts)).removesuffix(".__init__")] = path
    return modules


def imported_names(path: Path, module: str) -> set[str]:
    """Every dotted name `path` imports, lazy (function-level) imports included, relative ones made absolute."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = own_modules()
    graph = {}
    for module, path in modules.items():
        deps = set()
        for name in imported_names(path, module):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                deps.add(name)
        graph[module] = deps
    return graph


def layer(module: str) -> str:
    return next((p for p in ("qw.datagen", "qw.ue_capture", "qw.training") if module.startswith(p + ".")
                 or module == p), "qw")


def test_every_training_module_has_a_role():
    training = {m for m in own_modules() if m.startswith("qw.training.") and not m.endswith(
        ("qw.training.model", "qw.training.quantization", "qw.training.export", "qw.training.evaluation",
         "qw.training.train"))}
    assert training <= WORKFLOWS | LIBRARIES, f"unclassified: {sorted(training - WORKFLOWS - LIBRARIES)}"


def test_imports_point_down_the_layers():
    upward = sorted(f"{m} imports {d}" for m, deps in import_graph().items() for d in deps
                    if layer(d) not in MAY_IMPORT[layer(m)])
    assert not upward, "\n".join(upward)


def test_libraries_never_import_workflows():
    graph = import_graph()
    upward = sorted(f"{lib} imports {dep}" for lib in LIBRARIES & graph.keys() for dep in graph[lib] & WORKFLOWS)
    assert not upward, "\n".join(upward)


def test_import_graph_is_acyclic():
    graphlib.TopologicalSorter(import_graph()).prepare()  # raises CycleError naming the cycle


@pytest.mark.parametrize("folder", ["qw", "datagen", "training", "ue_capture", "tests", "benchmarks"])
def test_no_import_uses_the_old_top_level_names(folder):
    """Everything imports through the `qw` namespace: a bare `datagen`/`training` import would only work from a
    checkout, and would load a second copy of the module beside `qw.datagen`."""
    old = sorted(f"{path.relative_to(ROOT)}: {name}" for path in (ROOT / folder).rglob("*.py")
                 for name in imported_names(path, "tests.x") if name.split(".")[0] in OLD_TOP_LEVEL)
    assert not old, "\n".join(old)
