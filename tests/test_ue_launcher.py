"""The Unreal launcher on real processes: a fake editor executable (tests/fake_ue_editor.py) that runs the real
in-editor script against the `fake_unreal` stand-in and writes Unreal-format files, or fails in the ways editors
do: non-zero exit, hang, partial output, a crash then success. Plus dry run, missing editor, resume, Dask."""

from __future__ import annotations

import json
import stat
import sys
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from cli import main
from datagen.capture_format import META_FILE, load_meta
from datagen.errors import CaptureError, QwError
from datagen.manifests import SceneManifest
from datagen.validate import validate_capture
from ue_capture.launcher import EDITOR_ENV, capture_scene

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def editor(tmp_path) -> Path:
    """An executable that runs the fake editor with this interpreter (as a render node's editor path would)."""
    path = tmp_path / "bin" / "UE4Editor-Cmd"
    path.parent.mkdir()
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{TESTS / "fake_ue_editor.py"}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def scene(tmp_path) -> SceneManifest:
    project = tmp_path / "proj" / "Kite.uproject"
    project.parent.mkdir()
    project.write_text("{}")
    return SceneManifest.model_validate(dict(
        name="kite", backend="ue4", capture=dict(resolution=(32, 20), fps=30, mode="mrq", reference_samples=16),
        unreal=dict(engine_version="4.27", project="${QW_TEST_PROJECTS}/Kite.uproject",
                    map="/Game/Maps/GDC_Landscape_01", level_sequence="/Game/Cine/KiteSeq.KiteSeq", warm_up_frames=1),
        shots=[dict(name="a", start=10, end=14), dict(name="b", start=50, end=53, camera_cuts=[52])]))


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("QW_TEST_PROJECTS", str(tmp_path / "proj"))
    monkeypatch.delenv(EDITOR_ENV, raising=False)
    monkeypatch.setenv("FAKE_UE_BEHAVIOUR", "ok")


def logs(out: Path, shot: str) -> list[str]:
    return sorted(p.name for p in (out / ".unreal" / "kite" / shot).glob("editor-*.log"))


def test_capture_runs_editor_and_normalizes_validated_shots(tmp_path, scene, editor):
    out = tmp_path / "captures"
    paths = capture_scene(scene, out, editor=editor, progress=False, timeout=60)
    assert paths == [out / "kite" / "a", out / "kite" / "b"]
    for p in paths:
        assert validate_capture(p).ok
    meta = load_meta(out / "kite" / "b")
    assert meta.source_frames == [50, 51, 52] and meta.camera_cuts == [2]
    assert meta.backend.name == "ue4" and meta.backend.settings["mode"] == "mrq"
    assert meta.backend.settings["cvars"]["aliased"]["r.BasePassForceOutputsVelocity"] == 1
    assert meta.jitter.sequence == "none" and meta.reference.samples == 16 and meta.depth_units == "m"
    log = (out / ".unreal" / "kite" / "a" / "editor-0.log").read_text()
    assert str(tmp_path / "proj" / "Kite.uproject") in log  # ${QW_TEST_PROJECTS} expanded in the argv
    job = json.loads((out / ".unreal" / "kite" / "a" / "job.json").read_text())
    assert (job["start_frame"], job["end_frame"], job["reference_samples"]) == (10, 14, 16)


def test_bufvis_mode_records_engine_jitter(tmp_path, scene, editor):
    scene.capture.mode = "bufvis"
    out = tmp_path / "captures"
    [path] = capture_scene(scene, out, shots=["a"], editor=editor, progress=False, timeout=60)
    meta = load_meta(path)
    assert meta.jitter.sequence == "engine" and meta.extra["mode"] == "bufvis"
    # The fake engine's TemporalAAJitter is (0.004, -0.006) NDC: +0.064 px right, +0.06 px down at 32×20.
    assert meta.jitter.offsets[0] == pytest.approx((0.064, 0.06), abs=1e-6)
    assert validate_capture(path).ok


def test_nonzero_exit_is_retried_then_a_clear_error(tmp_path, scene, editor, monkeypatch):
    monkeypatch.setenv("FAKE_UE_BEHAVIOUR", "exit-nonzero")
    out = tmp_path / "captures"
    with pytest.raises(CaptureError, match=r"failed after 2 attempt\(s\); last: editor exited with status 3"):
        capture_scene(scene, out, shots=["a"], editor=editor, retries=1, progress=False, timeout=60)
    assert logs(out, "a") == ["editor-0.log", "editor-1.log"]
    assert "Critical error" in (out / ".unreal" / "kite" / "a" / "editor-1.log").read_text()
    assert not (out / "kite" / "a" / META_FILE).exists()


def test_hung_editor_is_killed_at_the_timeout(tmp_path, scene, editor, monkeypatch):
    monkeypatch.setenv("FAKE_UE_BEHAVIOUR", "hang")
    start = time.monotonic()
    with pytest.raises(CaptureError, match="editor timed out after 2 s"):
        capture_scene(scene, tmp_path / "c", shots=["a"], editor=editor, retries=0, timeout=2, progress=False)
    assert time.monotonic() - start < 20
    pid = int((tmp_path / "c" / ".unreal" / "kite" / "a" / "fake-hung.pid").read_text())
    assert not psutil.pid_exists(pid)  # killed (and reaped), not left rendering in the background


def test_partial_output_is_not_accepted(tmp_path, scene, editor, monkeypatch):
    monkeypatch.setenv("FAKE_UE_BEHAVIOUR", "partial")
    out = tmp_path / "c"
    with pytest.raises(CaptureError, match=r"output is incomplete: .*missing for frame\(s\) 12, 13 \(2 of 4\)"):
        capture_scene(scene, out, shots=["a"], editor=editor, retries=0, timeout=60, progress=False)
    assert not (out / "kite" / "a" / META_FILE).exists()
    assert not (out / ".unreal" / "kite" / "a" / "raw" / "status.json").exists()  # not mistaken for done later


def test_crash_then_success_on_retry(tmp_path, scene, editor, monkeypatch):
    monkeypatch.setenv("FAKE_UE_BEHAVIOUR", "crash-once")
    out = tmp_path / "c"
    [path] = capture_scene(scene, out, shots=["a"], editor=editor, retries=1, timeout=60, progress=False)
    assert validate_capture(path).ok
    assert "Segmentation fault" in (out / ".unreal" / "kite" / "a" / "editor-0.log").read_text()
    assert logs(out, "a") == ["editor-0.log", "editor-1.log"]


def test_resume_skips_complete_shots_and_renormalizes_raw_output(tmp_path, scene, editor, monkeypatch):
    out = tmp_path / "c"
    capture_scene(scene, out, editor=editor, timeout=60, progress=False)
    first = (out / "kite" / "a" / META_FILE).read_text()
    (out / "kite" / "b" / META_FILE).unlink()  # b: interrupted after the editor finished, before normalizing
    monkeypatch.setenv("FAKE_UE_BEHAVIOUR", "exit-nonzero")  # any editor run would now fail
    paths = capture_scene(scene, out, editor=editor, retries=0, timeout=60, progress=False)
    assert paths == [out / "kite" / "a", out / "kite" / "b"]
    assert (out / "kite" / "a" / META_FILE).read_text() == first
    assert validate_capture(out / "kite" / "b").ok
    assert logs(out, "a") == logs(out, "b") == ["editor-0.log"]  # the editor did not run again


def test_missing_editor_is_one_clear_error(tmp_path, scene):
    with pytest.raises(QwError, match=f"pass --editor PATH or set {EDITOR_ENV}"):
        capture_scene(scene, tmp_path / "c", progress=False)
    with pytest.raises(QwError, match="Unreal editor not found or not executable"):
        capture_scene(scene, tmp_path / "c", editor=tmp_path / "nope", progress=False)


def test_unfilled_manifest_fields_name_what_to_set(tmp_path, scene, editor, monkeypatch):
    scene.unreal.level_sequence = "FILL_IN"
    with pytest.raises(QwError, match="unreal.level_sequence still FILL_IN"):
        capture_scene(scene, tmp_path / "c", editor=editor, progress=False)
    scene.unreal.level_sequence = "/Game/S.S"
    monkeypatch.delenv("QW_TEST_PROJECTS")
    with pytest.raises(QwError, match=r"pass --project PATH.uproject or set the environment variable"):
        capture_scene(scene, tmp_path / "c", editor=editor, progress=False)


def test_dry_run_prints_argv_and_job_without_unreal(tmp_path, scene, capsys):
    assert capture_scene(scene, tmp_path / "c", shots=["b"], dry_run=True) == []
    text = capsys.readouterr().out
    argv = json.loads(next(line for line in text.splitlines() if line.startswith("argv: "))[6:])
    assert argv[0] == f"${EDITOR_ENV}" and argv[1] == str(tmp_path / "proj" / "Kite.uproject")
    assert any(a.startswith("-ExecutePythonScript=") and a.endswith("editor_script.py") for a in argv)
    job = json.loads(text[text.index("job: ") + 5:])
    assert job["shot"] == "b" and job["mode"] == "mrq"
    assert job["cvars"]["reference"]["r.DefaultFeature.AntiAliasing"] == 0
    assert not (tmp_path / "c").exists()


def test_cli_capture_dry_run_and_missing_editor(tmp_path, scene):
    manifest = tmp_path / "kite.yaml"
    manifest.write_text(json.dumps(scene.model_dump(mode="json")))  # JSON is YAML
    runner = CliRunner()
    result = runner.invoke(main, ["datagen", "capture", "--scene", str(manifest), "--dry-run",
                                  "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert "-ExecutePythonScript=" in result.output
    assert '"level_sequence": "/Game/Cine/KiteSeq.KiteSeq"' in result.output
    result = runner.invoke(main, ["datagen", "capture", "--scene", str(manifest), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and f"set {EDITOR_ENV}" in result.output


def test_scheduler_runs_shots_as_tasks_needing_ue_resource(tmp_path, scene, editor):
    from distributed import LocalCluster
    from distributed.diagnostics.plugin import SchedulerPlugin

    class Restrictions(SchedulerPlugin):
        def __init__(self) -> None:
            self.seen: dict[str, dict] = {}

        def transition(self, key, start, finish, *args, **kwargs) -> None:
            task = self.scheduler.tasks.get(key)
            if finish == "processing" and task is not None:
                self.seen[str(key)] = dict(task.resource_restrictions or {})

    plugin = Restrictions()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, resources={"ue": 1},
                      dashboard_address=":0") as cluster:
        plugin.scheduler = cluster.scheduler
        cluster.scheduler.add_plugin(plugin)
        paths = capture_scene(scene, tmp_path / "c", editor=editor, scheduler=cluster.scheduler_address,
                              timeout=60, progress=False)
    assert [p.name for p in paths] == ["a", "b"] and all(validate_capture(p).ok for p in paths)
    assert plugin.seen == {"ue-capture-kite-a": {"ue": 1}, "ue-capture-kite-b": {"ue": 1}}
