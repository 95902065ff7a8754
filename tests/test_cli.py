"""The `qw` command itself: help of every registered command, error reporting, and `qw scenes`."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from qw.cli import main
from qw.catalog import opengl_blocker
from qw.datagen.manifests import ManifestError, scene_paths


def all_commands(group: click.Group = main, path: tuple[str, ...] = ()):
    """(path, command) for the root and every command and group below it."""
    yield path, group
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from all_commands(command, (*path, name))
        else:
            yield (*path, name), command


COMMANDS = dict(all_commands())


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(("qw", *p)))
def test_every_command_has_useful_help(path):
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output
    help_text = COMMANDS[path].help or ""
    assert len(help_text.split()) >= 5, f"qw {' '.join(path)}: --help needs a description"


def test_the_pipeline_commands_are_registered():
    assert {("scenes",), ("datagen", "validate")} <= set(COMMANDS)


def test_console_script_runs_help_fast():
    """The installed `qw` starts without importing stage modules (torch, zarr …) for --help."""
    qw = Path(sys.executable).with_name("qw")
    result = subprocess.run([str(qw), "--help"], capture_output=True, text=True, timeout=60, check=True)
    assert "datagen" in result.stdout and "scenes" in result.stdout
    probe = "import sys, qw.cli; qw.cli.main(['--help']); print(sorted(m for m in ('torch', " \
            "'zarr', 'moderngl') if m in sys.modules))"
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert imported.stdout.strip().endswith("[]"), imported.stdout


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("qw, version ")


def test_user_errors_are_one_line_unless_debug(tmp_path):
    missing = str(tmp_path / "none.yaml")
    result = CliRunner().invoke(main, ["scenes", "--dataset", missing])
    assert result.exit_code == 2
    assert result.output == f"qw: error: {missing}: manifest file not found\n"
    result = CliRunner().invoke(main, ["--debug", "scenes", "--dataset", missing])
    assert isinstance(result.exception, ManifestError)  # raised through: the traceback is shown


# ------------------------------------------------------------------------------------------- qw scenes


def _scene_rows(output: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in output.splitlines()[1:] if not line.startswith(" ")}


def test_scenes_lists_every_manifest(monkeypatch):
    monkeypatch.delenv("QW_UE4_EDITOR", raising=False)
    result = CliRunner().invoke(main, ["scenes"])
    assert result.exit_code == 0, result.output
    rows = _scene_rows(result.output)
    assert set(rows) == set(scene_paths())
    assert rows["kite"][1] == "ue4" and rows["kite"][-1] == "no"
    assert "QW_UE4_EDITOR" in result.output


def test_stock_unreal_scenes_run_once_editor_and_projects_are_set(tmp_path, monkeypatch):
    """The four demo manifests need only the editor and the projects folder: qw authors their camera paths."""
    editor = tmp_path / "UE4Editor-Cmd"
    editor.write_text("#!/bin/sh\n")
    editor.chmod(0o755)
    monkeypatch.setenv("QW_UE4_EDITOR", str(editor))
    monkeypatch.setenv("QW_UE4_PROJECTS", str(tmp_path / "projects"))
    for folder in ("KiteDemo", "Infiltrator", "ShowdownDemo", "EpicZenGarden"):
        (tmp_path / "projects" / folder).mkdir(parents=True)
        (tmp_path / "projects" / folder / f"{folder}.uproject").write_text("{}")
    result = CliRunner().invoke(main, ["scenes"])
    rows = _scene_rows(result.output)
    assert [rows[name][-1] for name in ("kite", "infiltrator")] == ["yes", "yes"], result.output
    assert rows["showdown"][-1] == "no" and "ShowdownDemo/Config/DefaultEngine.ini" in result.output
    for folder in ("ShowdownDemo", "EpicZenGarden"):  # these two name their map in the project's ini
        (tmp_path / "projects" / folder / "Config").mkdir()
        (tmp_path / "projects" / folder / "Config" / "DefaultEngine.ini").write_text(
            "[/Script/EngineSettings.GameMapsSettings]\nGameDefaultMap=/Game/Maps/Demo.Demo\n")
    result = CliRunner().invoke(main, ["scenes"])
    rows = _scene_rows(result.output)
    assert result.exit_code == 0 and all(rows[name][-1] == "yes" for name in
                                         ("kite", "infiltrator", "showdown", "zengarden")), result.output


def test_builtin_scene_availability_follows_egl(tmp_path):
    (tmp_path / "scenes").mkdir()
    (tmp_path / "scenes" / "toy.yaml").write_text(yaml.safe_dump({
        "name": "toy", "backend": "builtin", "builtin": {"builder": "toy"},
        "capture": {"resolution": [64, 64], "fps": 30}, "shots": [{"name": "a", "start": 0, "end": 8}]}))
    result = CliRunner().invoke(main, ["scenes", "--manifests", str(tmp_path)])
    assert result.exit_code == 0, result.output
    blocker = opengl_blocker()
    assert _scene_rows(result.output)["toy"] == ["toy", "builtin", "1", "8", "1/0/0", "no" if blocker else "yes"]
    assert (blocker or "") in result.output


def test_egl_is_reported_missing_when_no_driver_loads():
    """With no EGL vendor (glvnd) and no Mesa driver to load, the builtin backend is blocked with a reason."""
    code = "from qw.catalog import opengl_blocker; print(opengl_blocker())"
    env = {**os.environ, "__EGL_VENDOR_LIBRARY_FILENAMES": "/nonexistent.json", "LIBGL_DRIVERS_PATH": "/nonexistent"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60).stdout
    assert "OpenGL" in out and "through EGL" in out, out


def test_help_lists_commands_in_pipeline_order():
    def listed(*path: str) -> list[str]:
        lines = CliRunner().invoke(main, [*path, "--help"]).output.split("Commands:\n", 1)[1].splitlines()
        return [line.split()[0] for line in lines if line.startswith("  ")]

    assert listed() == ["scenes", "datagen", "train", "model-stats", "quantize", "eval", "infer", "export", "demo"]
    assert listed("datagen") == ["capture", "import", "validate", "plan", "build", "inspect", "verify", "preview"]


@pytest.mark.parametrize("args,message", [
    (["train", "--bogus"], "No such option '--bogus'"),
    (["datagen", "build"], "Missing option '--dataset'"),
    (["eval", "--frames", "0", "--captures", ".", "--out", "x"], "Invalid value for '--frames'"),
])
def test_usage_errors_are_one_line_with_status_2(args, message):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("qw: error: ") and message in result.output
    assert "--help)" in result.output  # says where to look


def _levels(*args: str, monkeypatch) -> tuple[int, int]:
    """(root level, qw level) after `qw ARGS scenes --json` configured logging."""
    monkeypatch.setattr(logging.getLogger(), "level", logging.getLogger().level)  # restored after the test
    monkeypatch.setattr(logging.getLogger("qw"), "level", logging.getLogger("qw").level)
    assert CliRunner().invoke(main, [*args, "model-stats", "--summary"]).exit_code == 0
    return logging.getLogger().level, logging.getLogger("qw").level


def test_verbosity_levels_differ(monkeypatch):
    assert _levels(monkeypatch=monkeypatch) == (logging.WARNING, logging.INFO)    # qw's own messages only
    assert _levels("-v", monkeypatch=monkeypatch) == (logging.INFO, logging.INFO)  # and the libraries'
    assert _levels("-vv", monkeypatch=monkeypatch) == (logging.DEBUG, logging.DEBUG)
    assert _levels("-q", monkeypatch=monkeypatch) == (logging.WARNING, logging.WARNING)


def _fake_commands(monkeypatch, seen: dict) -> None:
    """Replace what capture, train, eval and infer call with recorders of their keyword arguments."""
    import qw.capture
    import qw.training.evaluation.evaluate as evaluate
    import qw.training.infer as infer
    import qw.training.train.loop as loop

    monkeypatch.setattr(qw.capture, "capture_scene", lambda *a, **kw: seen.update(kw) or [])
    monkeypatch.setattr(loop, "train_command", lambda *a, **kw: seen.update(kw))
    monkeypatch.setattr(evaluate, "evaluate_command", lambda *a, **kw: seen.update(kw) or {"overall": {}, "report": ""})
    monkeypatch.setattr(infer, "infer_command", lambda *a, **kw: seen.update(kw) or {"frames": [0, 1]})


@pytest.mark.parametrize("command", [
    ["datagen", "capture", "--scene", "builtin_fence", "--out", "{tmp}"],
    ["train", "--store", "{tmp}/s.zarr", "--out", "{tmp}/run"],
    ["eval", "--checkpoint", "{tmp}/a.pt", "--captures", "{tmp}", "--out", "{tmp}/report"],
    ["infer", "--checkpoint", "{tmp}/a.pt", "--input", "{tmp}", "--out", "{tmp}/out"],
], ids=lambda c: " ".join(c[:2]) if c[0] == "datagen" else c[0])
@pytest.mark.parametrize("quiet,progress", [(True, False), (False, True)])
def test_quiet_is_passed_down_not_set_in_the_environment(command, quiet, progress, monkeypatch, tmp_path):
    seen = {}
    _fake_commands(monkeypatch, seen)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    result = CliRunner().invoke(main, [*(["-q"] if quiet else []), *args])
    assert result.exit_code == 0, result.output
    assert seen["progress"] is progress and "TQDM_DISABLE" not in os.environ


def test_scenes_json_lists_every_manifest():
    rows = json.loads(CliRunner().invoke(main, ["scenes", "--json"]).output)
    assert {r["name"] for r in rows} == set(scene_paths())
    fence = next(r for r in rows if r["name"] == "builtin_fence")
    assert fence["backend"] == "builtin" and sum(fence["splits"].values()) == fence["shots"]


def test_model_stats_json_matches_the_table():
    from qw.training.config import load_config
    from qw.training.model.stats import model_stats

    data = json.loads(CliRunner().invoke(main, ["model-stats", "--config", "intel-sample", "--json"]).output)
    stats = model_stats(load_config("intel-sample"), 1088, 1920)
    assert data["params"] == stats.params and data["macs"] == stats.macs
    assert len(data["layers"]) == len(stats.layers) and abs(sum(data["share_by_precision"].values()) - 1) < 1e-9


def test_a_missing_extra_is_named_with_its_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # what an install without the extra sees
    result = CliRunner().invoke(main, ["datagen", "preview", str(tmp_path / "blocks.zarr"), "--block", "0", "--out",
                                       str(tmp_path / "block.mp4")])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "needs the 'video' extra" in result.output and "pip install 'qw-taa[video]'" in result.output


def test_missing_onnx_is_named_before_any_work(monkeypatch):
    from qw.datagen.errors import QwError, require_extra

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(QwError, match=r"qw export --format onnx needs the 'onnx' extra .*qw-taa\[onnx\]"):
        require_extra("onnxruntime", "onnx", "qw export --format onnx")


# ----------------------------------------------------------------------------------------------- --json


@pytest.fixture(scope="module")
def small_build(tmp_path_factory) -> dict:
    """Synthetic captures of two scenes with their manifests, a dataset file and the store the builder made."""
    from blocks_helpers import dataset, small_captures, write_dataset

    from qw.datagen.tile import build_store

    root = tmp_path_factory.mktemp("cli_json")
    captures, manifests = root / "captures", root / "manifests"
    small_captures(captures, manifests)
    data = dataset({"alpha": 6, "beta": 3})
    build_store(data, captures, str(root / "blocks.zarr"), workers=1, progress=False, manifests_root=manifests)
    return {"captures": captures, "manifests": manifests, "dataset": write_dataset(root / "dataset.yaml", data),
            "store": root / "blocks.zarr"}


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["-q", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.stdout


def test_plan_json_is_the_summary_of_the_plan_the_store_was_built_from(small_build, monkeypatch):
    import qw.datagen.plan

    monkeypatch.setattr(qw.datagen.plan, "MANIFEST_ROOT", small_build["manifests"])
    args = ["datagen", "plan", "--dataset", str(small_build["dataset"]), "--captures", str(small_build["captures"])]
    status, text = _run(*args)
    status_json, out = _run(*args, "--json")
    data = json.loads(out)
    assert status == status_json == 0
    assert data["blocks"] == 9 and data["shots"] == 2 and data["tile"] == 32 and data["seed"] == 0  # train only
    assert {r["scene"]: (r["budget"], r["blocks"], r["shots"]) for r in data["scenes"]} == \
        {"alpha": (6, 6, 1), "beta": (3, 3, 1)}
    assert data["splits"] == {"train": 9} and data["windows"] == sum(r["windows"] for r in data["scenes"])
    assert data["windows_crossing_cut"] == 0 and data["written_to"] is None
    assert data["digest"] == json.loads((small_build["store"] / "zarr.json").read_text())["attributes"]["plan_digest"]
    assert f"digest: {data['digest']}" in text


def test_inspect_json_carries_the_report_fields(small_build):
    status, out = _run("datagen", "inspect", str(small_build["store"]), "--json")
    data = json.loads(out)
    assert status == 0 and data["complete"] is True and data["incomplete_reason"] is None
    assert data["blocks"] == 9 and (data["frames"], data["tile"]) == (8, 32) and data["format"] == "qw-blocks/2"
    assert data["blocks_per_scene"] == {"alpha": 6, "beta": 3}
    assert sum(data["blocks_per_shot"].values()) == sum(data["blocks_per_split"].values()) == 9
    assert data["blocks_per_split"] == {"train": 9} and len(data["sources"]) == 2
    assert data["stored_bytes"] > 0 and data["raw_bytes"] > 0 and len(data["plan_digest"]) == 64
    _, text = _run("datagen", "inspect", str(small_build["store"]))
    assert f"plan:       {data['plan_digest']}" in text and "complete: yes" in text


def test_verify_json_lists_the_problems_and_keeps_the_exit_status(small_build, tmp_path):
    import shutil

    from qw.datagen.block_store import open_store

    status, out = _run("datagen", "verify", str(small_build["store"]), "--json")
    assert status == 0 and json.loads(out) == {"store": str(small_build["store"]), "format": "qw-blocks/2",
                                               "checksums": True, "blocks": 9,
                                               "arrays": ["color", "reference", "motion", "depth"], "problems": [],
                                               "ok": True}
    store = Path(shutil.copytree(small_build["store"], tmp_path / "blocks.zarr"))
    (store / open_store(str(store)).chunk_key("motion", 4)).unlink()
    status, text = _run("datagen", "verify", str(store))
    status_json, out = _run("datagen", "verify", str(store), "--json")
    data = json.loads(out)
    assert status == status_json == 1 and data["ok"] is False
    assert len(data["problems"]) == 1 and "block 4" in data["problems"][0] and "motion" in data["problems"][0]
    assert data["problems"][0] in text.splitlines()


def test_validate_json_gives_each_shot_its_result_and_problems(tmp_path):
    from capture_helpers import make_capture

    from qw.datagen.capture_format import META_FILE

    good, bad = tmp_path / "scene" / "a", tmp_path / "scene" / "b"
    make_capture(good, frames=2)
    make_capture(bad, frames=2)
    (bad / META_FILE).unlink()
    status, _ = _run("datagen", "validate", str(tmp_path))
    status_json, out = _run("datagen", "validate", str(tmp_path), "--json")
    data = json.loads(out)
    assert status == status_json == 1
    assert (data["passed"], data["failed"], data["skipped"], data["ok"]) == (1, 1, 0, False)
    shots = {Path(s["shot"]).name: s for s in data["shots"]}
    assert shots["a"]["result"] == "PASS" and shots["a"]["lowest_agreement"] == 1.0
    assert {c["status"] for c in shots["a"]["checks"].values()} == {"pass"}
    assert shots["b"]["result"] == "FAIL" and shots["b"]["checks"]["capture.json"]["status"] == "fail"
    assert shots["b"]["checks"]["capture.json"]["problems"] == [f"{bad / META_FILE}: missing (the capture is "
                                                                 f"incomplete or was interrupted)"]
    assert shots["b"]["checks"]["files"]["skipped"] == "needs a valid capture.json"
    status_good, out = _run("datagen", "validate", str(good), "--json")
    assert status_good == 0 and json.loads(out)["ok"] is True


@pytest.mark.parametrize("quiet,disable", [(True, True), (False, None)])
def test_quiet_turns_the_verify_and_validate_bars_off(small_build, monkeypatch, tmp_path, quiet, disable):
    """tqdm gets disable=True under -q, and None otherwise (a bar on a terminal only, none in a log file)."""
    import tqdm
    from capture_helpers import make_capture

    import qw.datagen.validate

    real, seen = tqdm.tqdm, []
    recorder = lambda *a, **kw: seen.append(kw.get("disable", False)) or real(*a, **kw)  # noqa: E731
    monkeypatch.setattr(tqdm, "tqdm", recorder)  # verify imports it when it runs
    monkeypatch.setattr(qw.datagen.validate, "tqdm", recorder)
    make_capture(tmp_path / "scene" / "a", frames=2)
    for command in (["datagen", "verify", str(small_build["store"])], ["datagen", "validate", str(tmp_path)]):
        result = CliRunner().invoke(main, [*(["-q"] if quiet else []), *command])
        assert result.exit_code == 0, result.output
    assert seen == [disable, disable]


def test_model_stats_counts_a_jitter_reading_model(tmp_path):
    # model.jitter_input adds two input channels: the first conv reads 12, and its MACs grow by 2/10
    config = tmp_path / "jitter.yaml"
    config.write_text("preset: paper\nmodel: {jitter_input: true}\n")
    result = CliRunner().invoke(main, ["model-stats", "--config", str(config), "--resolution", "64x32", "--json"])
    assert result.exit_code == 0, result.output
    first = next(layer for layer in json.loads(result.output)["layers"] if layer["name"] == "extractor.encoder.0.0.conv")
    assert first["macs"] == 64 * 32 * 32 * 12 * 9 and first["shape"].startswith("12->32 3x3")


@pytest.mark.parametrize("quiet", [False, True])
def test_quiet_demo_draws_no_progress_bars(tmp_path, monkeypatch, quiet):
    """`qw -q demo` hands "no bars" to the stages that draw them (training, fine-tuning, evaluation)."""
    from qw import demo
    from qw.training.evaluation import evaluate
    from qw.training.export import exporter

    seen = {}

    def stage(name, result):
        """A stage that records the progress setting it was given (its last argument, or `progress=`)."""
        return lambda *args, **kwargs: seen.setdefault(name, kwargs.get("progress", args[-1])) is None or result

    monkeypatch.setattr(demo, "capture_all", lambda plan, root: [tmp_path / "shot"])
    monkeypatch.setattr(demo, "build_demo_store", lambda captures, store: str(store))
    monkeypatch.setattr(demo, "train_demo", stage("train", tmp_path / "fp.pt"))
    monkeypatch.setattr(demo, "quantize_demo", stage("quantize", tmp_path / "q.pt"))
    monkeypatch.setattr(exporter, "export_command", lambda *a, **k: {"verify": {"max_abs_diff": 0.0,
                                                                                "max_output": 1.0}})
    monkeypatch.setattr(evaluate, "evaluate_command", stage("eval", {"report": "r", "overall": {}}))
    monkeypatch.setattr(evaluate, "markdown_table", lambda overall: "table")
    result = CliRunner().invoke(main, [*(["-q"] if quiet else []), "demo", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert seen == {"train": not quiet, "quantize": not quiet, "eval": not quiet}


def test_a_finished_run_lists_the_files_it_wrote(tmp_path, capsys):
    """`qw train` listed best.pt after a run without validation blocks, which writes none."""
    from qw.cli import _echo_run

    (tmp_path / "last.pt").write_bytes(b"")
    (tmp_path / "tb").mkdir()
    _echo_run(str(tmp_path), ("last.pt", "best.pt", "config.yaml", "tb"))
    assert capsys.readouterr().out == f"run: {tmp_path} (last.pt, tb/)\n"
