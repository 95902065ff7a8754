"""The package as a user installs it: a wheel built from the repository, installed (not editable) into a fresh venv,
runs the pipeline from a folder that is not the checkout, with the manifests and presets it ships."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_listed_in_pyproject():
    """setuptools installs only the packages pyproject lists: a new subpackage left out would be missing from the
    wheel while the editable install (which maps whole folders) still finds it."""
    listed = set(PYPROJECT["packages"])
    found = set()
    for package, folder in PYPROJECT["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            if package == "qw" and parts:
                continue  # qw/ holds modules; its subpackages live in their own folders
            found.add(".".join((package, *parts)))
    assert found == listed


def _copy_source(dst: Path) -> Path:
    """The files git knows (tracked, or new and not ignored), so the build sees what a clone would."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dst / name)
    return dst


def _build_wheel(tmp: Path) -> Path:
    source = _copy_source(tmp / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp / "dist"), str(source)], check=True, timeout=300)
    return next((tmp / "dist").glob("qw_taa-*.whl"))


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    """A new venv with the wheel installed, not editable; the dependencies (torch ...) are reused from this test's
    environment through a .pth line, so the test stays offline. A path line in a .pth adds that folder to sys.path
    without running the .pth files inside it, so this environment's own (editable) qw is not seen."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "qw_test_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, timeout=300)
    return venv


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(wheel, venv, a working folder outside the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(tmp)
    work = tmp / "work"
    work.mkdir()
    return wheel, _fresh_venv(tmp, wheel), work


def _qw(venv: Path, work: Path, *args: str, timeout: int = 300) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "QW_MANIFESTS")}
    result = subprocess.run([str(venv / "bin" / "qw"), "-q", *args], cwd=work, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"qw {' '.join(args)}: {result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.slow
def test_wheel_ships_one_namespace_with_its_data(installed):
    wheel, _, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"qw"}  # no top-level cli, datagen, training or ue_capture to collide with other packages
    for data in ("qw/manifests/scenes/builtin_fence.yaml", "qw/manifests/datasets/builtin-demo.yaml",
                 "qw/training/configs/paper.yaml", "qw/ue_capture/editor_script.py", "qw/datagen/builtin/scenes.py"):
        assert data in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "qw = qw.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


@pytest.mark.slow
@pytest.mark.renderer
def test_installed_wheel_runs_the_pipeline_outside_the_checkout(installed):
    _, venv, work = installed
    where = subprocess.run([venv / "bin" / "python", "-c", "import qw.datagen; print(qw.datagen.__file__)"],
                           cwd=work, capture_output=True, text=True, check=True).stdout
    assert Path(where).is_relative_to(venv)  # the installed copy, not the checkout

    scenes = {row["name"]: row for row in json.loads(_qw(venv, work, "scenes", "--json"))}
    assert {"builtin_fence", "builtin_specular", "kite"} <= scenes.keys()  # the shipped manifests
    assert json.loads(_qw(venv, work, "model-stats", "--config", "paper", "--json"))["params"] > 1e6  # shipped preset

    _qw(venv, work, "datagen", "capture", "--scene", "builtin_specular", "--shot", "orbit", "--frames", "0:8",
        "--resolution", "128x128", "--reference-spp", "4", "--out", "captures")
    (work / "tiny.yaml").write_text(yaml.safe_dump({
        "name": "tiny", "seed": 0, "frames": 8, "tile": 64, "total_blocks": 2, "splits": ["train"],
        "scenes": [{"scene": "builtin_specular", "budget": 2}]}))
    _qw(venv, work, "datagen", "build", "--dataset", "tiny.yaml", "--captures", "captures", "--store", "blocks.zarr",
        "--workers", "1")
    (work / "run.yaml").write_text(yaml.safe_dump({
        "preset": "paper", "model": {"widths": [8, 12, 16, 20, 24]},
        "train": {"steps": 2, "batch_size": 1, "grad_accum": 1, "num_workers": 0, "log_every": 1, "val_every": 1000,
                  "val_blocks": 0, "ckpt_every": 1000}}))
    trained = _qw(venv, work, "train", "--store", "blocks.zarr", "--out", "run", "--config", "run.yaml")
    assert trained.startswith("run: run ") and (work / "run" / "last.pt").is_file()  # says where the run went
    _qw(venv, work, "eval", "--checkpoint", "run/last.pt", "--captures", "captures/builtin_specular/orbit", "--out",
        "eval", "--frames", "3", "--flip-crop", "32")
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    assert metrics["overall"]  # scored: QW-Net beside TAA and the input
