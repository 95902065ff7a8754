"""The Unreal launcher on real processes: a fake editor executable (tests/fake_ue_editor.py) that runs the real
in-editor script against the `fake_unreal` stand-in of a chosen engine version, quits as soon as the script
returns (as UE 4.27's -ExecutePythonScript does), then renders the saved queue like Movie Render Queue's -game
command line, or fails in the ways editors do: non-zero exit, hang, partial output, a crash then success. Plus dry
run, missing editor, resume, Dask."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path, PureWindowsPath

import fake_ue_editor
import numpy as np
import psutil
import pytest
from click.testing import CliRunner
from ue_formats import camera_velocity, mrq_spatial_shift, scene_colour, trace_world

from qw.cli import main
from qw.datagen.capture_format import META_FILE, load_meta, read_exr, read_frame, shot_lock
from qw.datagen.errors import CaptureError, QwError
from qw.datagen.manifests import SceneManifest
from qw.datagen.validate import reprojected_motion, validate_capture
from qw.ue_capture import launcher
from qw.ue_capture.launcher import EDITOR_ENV, capture_scene

TESTS = Path(__file__).resolve().parent
W, H, N = 32, 20, 4
UPROJECT = {"FileVersion": 3, "Plugins": [{"Name": "PythonScriptPlugin", "Enabled": True},
                                          {"Name": "EditorScriptingUtilities", "Enabled": True},
                                          {"Name": "MovieRenderPipeline", "Enabled": True}]}


@pytest.fixture
def editor(tmp_path) -> Path:
    """An executable that runs the fake editor with this interpreter (as a render node's editor path would); the
    fake switches into the executable's folder as the engine does (FAKE_UE_BASE_DIR)."""
    path = tmp_path / "bin" / "UE4Editor-Cmd"
    path.parent.mkdir()
    path.write_text(f'#!/bin/sh\nexport FAKE_UE_BASE_DIR="{path.parent}"\n'
                    f'exec "{sys.executable}" "{TESTS / "fake_ue_editor.py"}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def camera(fps: float = 30) -> dict:
    """A path that turns, tilts, rolls and moves fast enough for a wrong sign to show in the reprojection check."""
    return dict(fps=fps, fov=75, keys=[dict(frame=0, position=(0, 0, 150), rotation=(0, 0, 0)),
                                       dict(frame=20, position=(800, 100, 180), rotation=(-20, 40, 0)),
                                       dict(frame=60, position=(1600, 600, 250), rotation=(-10, 100, 5))])


@pytest.fixture
def scene(tmp_path) -> SceneManifest:
    project = tmp_path / "proj" / "Kite.uproject"
    project.parent.mkdir()
    project.write_text(json.dumps(UPROJECT))
    umap = project.parent / "Content" / "Maps" / "GoldenPath" / "GDC_Landscape_01.umap"
    umap.parent.mkdir(parents=True)
    umap.write_text("")  # the map the fake editor can load
    return SceneManifest.model_validate(dict(
        name="kite", backend="ue4",
        capture=dict(resolution=(W, H), fps=30, mode="mrq", reference_samples=4, jitter_cycle=N),
        unreal=dict(engine_version="4.27", project="${QW_TEST_PROJECTS}/Kite.uproject",
                    map="/Game/Maps/GoldenPath/GDC_Landscape_01", camera=camera(),
                    warm_up_frames=fake_ue_editor.SIMULATION_SETTLE_TICKS),
        shots=[dict(name="a", start=10, end=15), dict(name="b", start=50, end=53, camera_cuts=[52])]))


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("QW_TEST_PROJECTS", str(tmp_path / "proj"))
    monkeypatch.delenv(EDITOR_ENV, raising=False)
    monkeypatch.setenv("FAKE_UE_BEHAVIOUR", "ok")
    monkeypatch.setenv("FAKE_UE_VERSION", "4.27")


def keyed_poses(tmp_path: Path) -> dict[int, tuple[float, ...]]:
    """frame → (x, y, z, roll, pitch, yaw) of the camera the prepare stage keyed in the saved Level Sequence."""
    seq = json.loads((tmp_path / "proj" / "Content" / "QW" / "Sequences" / "QW_kite.uasset.json").read_text())
    channels = seq["keys"][:6]
    return {frame: tuple(c[k][1] for c in channels) for k, (frame, _, _) in enumerate(channels[0])}


def shifts(samples: int, gaussian: bool = True) -> list[tuple[float, float]]:
    return [mrq_spatial_shift(k, samples, gaussian) for k in range(samples)]


def logs(out: Path, shot: str, stage: str = "render") -> list[str]:
    return sorted(p.name for p in (out / ".unreal" / "kite" / shot).glob(f"editor-{stage}-*.log"))


@pytest.mark.parametrize("version", ["4.27", "5.5"])
def test_capture_completes_although_the_editor_quits_when_the_script_returns(tmp_path, scene, editor, monkeypatch,
                                                                             version):
    """The fake editor quits as soon as the prepare script returns; the render is a second, -game process."""
    monkeypatch.setenv("FAKE_UE_VERSION", version)
    scene.unreal.engine_version = version
    out = tmp_path / "captures"
    paths = capture_scene(scene, out, editor=editor, progress=False, timeout=60)
    assert paths == [out / "kite" / "a", out / "kite" / "b"]
    result = CliRunner().invoke(main, ["-q", "datagen", "validate", str(out / "kite")])
    assert result.exit_code == 0 and "2 shot(s): 0 passed, 0 failed, 2 with checks SKIPPED" in result.output, \
        result.output  # no camera matrices: reprojection cannot run
    prepare_log = (out / ".unreal" / "kite" / "a" / "editor-prepare-0.log").read_text()
    assert "QUIT_EDITOR (the script returned)" in prepare_log
    meta = load_meta(out / "kite" / "a")
    assert meta.source_frames == [10, 11, 12, 13, 14] and load_meta(out / "kite" / "b").camera_cuts == [2]
    assert meta.engine.version.startswith(version) and meta.engine.cvars["r.TemporalAAFilterSize"] == 1.0
    gaussian = version != "5.5"
    assert meta.reference.filter.startswith("gaussian" if gaussian else "box")
    # Frame i is MRQ's spatial sample i mod N; its pixels saw the scene at centre + the recorded offset.
    assert meta.jitter.sequence == "engine" and meta.jitter.cycle == N
    for i in range(meta.frame_count):
        shift = mrq_spatial_shift(i % N, N, gaussian)
        assert meta.jitter.offsets[i] == pytest.approx((-shift[0], -shift[1]), abs=1e-9)
        y, x = np.mgrid[0:H, 0:W] + 0.5
        expected = scene_colour(x + meta.jitter.offsets[i][0], y + meta.jitter.offsets[i][1], 10 + i)
        np.testing.assert_allclose(read_frame(out / "kite" / "a", "color", i), expected, rtol=2e-3)
    depth = read_frame(out / "kite" / "a", "depth", 1)[..., 0]
    _, truth = trace_world(keyed_poses(tmp_path)[11], 75, W, H, shifts(N, gaussian)[1])
    np.testing.assert_allclose(depth, truth / 100, rtol=1e-5)
    assert depth.max() > 655.5  # past float16's 65504 cm: kept because the passes are 32-bit
    job = json.loads((out / ".unreal" / "kite" / "a" / "job.json").read_text())
    assert job["passes"]["aliased"]["spatial_samples"] == N and job["passes"]["reference"]["spatial_samples"] == 4


def test_existing_sequence_and_unjittered_input(tmp_path, scene, editor):
    """A project's own Level Sequence instead of authored keys; jitter 'none' renders 1 sample, unjittered."""
    scene.unreal.camera, scene.unreal.level_sequence = None, "/Game/Cine/KiteSeq"
    scene.capture.jitter = "none"
    asset = tmp_path / "proj" / "Content" / "Cine" / "KiteSeq.uasset.json"
    asset.parent.mkdir(parents=True)
    asset.write_text(json.dumps({"class": "LevelSequence", "display_rate": [30, 1]}))
    [path] = capture_scene(scene, tmp_path / "c", shots=["a"], editor=editor, progress=False, timeout=60)
    meta = load_meta(path)
    assert meta.jitter.sequence == "none" and validate_capture(path).ok
    assert meta.extra["level_sequence"] == "/Game/Cine/KiteSeq.KiteSeq"
    asset.write_text(json.dumps({"class": "LevelSequence", "display_rate": [24, 1]}))
    with pytest.raises(QwError, match=r"prepare refused: .*plays at 24/1 fps, the manifest at 30"):
        capture_scene(scene, tmp_path / "d", shots=["a"], editor=editor, retries=0, progress=False, timeout=60)


def test_prepare_failure_is_reported_with_the_scripts_reason(tmp_path, scene, editor, monkeypatch):
    monkeypatch.setenv("FAKE_UE_CVARS", json.dumps({"r.BasePassOutputsVelocity": 0}))
    out = tmp_path / "c"
    with pytest.raises(QwError, match=r"prepare refused: project setting missing.*r\.BasePassOutputsVelocity=1.*"
                                      r"DefaultEngine\.ini"):
        capture_scene(scene, out, shots=["a"], editor=editor, progress=False, timeout=60)
    assert logs(out, "a") == [] and logs(out, "a", "prepare") == ["editor-prepare-0.log"]  # not retried
    monkeypatch.setenv("FAKE_UE_VERSION", "5.5")
    with pytest.raises(QwError, match=r"the editor is Unreal 5\.5\.4.*engine_version '4\.27'"):
        capture_scene(scene, out, shots=["a"], editor=editor, progress=False, timeout=60)


def test_nonzero_exit_is_retried_then_a_clear_error(tmp_path, scene, editor, monkeypatch):
    monkeypatch.setenv("FAKE_UE_BEHAVIOUR", "exit-nonzero")
    out = tmp_path / "captures"
    with pytest.raises(CaptureError, match=r"failed after 2 attempt\(s\); last: render: editor exited with status 3"):
        capture_scene(scene, out, shots=["a"], editor=editor, retries=1, progress=False, timeout=60)
    assert logs(out, "a") == ["editor-render-0.log", "editor-render-1.log"]
    assert "Critical error" in (out / ".unreal" / "kite" / "a" / "editor-render-1.log").read_text()
    assert not (out / "kite" / "a" / META_FILE).exists()


def test_hung_editor_is_killed_at_the_timeout(tmp_path, scene, editor, monkeypatch):
    monkeypatch.setenv("FAKE_UE_BEHAVIOUR", "hang")
    start = time.monotonic()
    with pytest.raises(CaptureError, match="render: editor timed out after 4 s"):
        capture_scene(scene, tmp_path / "c", shots=["a"], editor=editor, retries=0, timeout=4, progress=False)
    assert time.monotonic() - start < 30
    pid = int((tmp_path / "proj" / "Saved" / "fake-hung.pid").read_text())
    assert not psutil.pid_exists(pid)  # killed (and reaped), not left rendering in the background


def test_partial_output_is_not_accepted(tmp_path, scene, editor, monkeypatch):
    monkeypatch.setenv("FAKE_UE_BEHAVIOUR", "partial")
    out = tmp_path / "c"
    with pytest.raises(CaptureError, match=r"output is incomplete: .*color missing for sample .*\(2, 2\), \(3, 3\), "
                                           r"\(4, 0\) \(3 of 5\)"):
        capture_scene(scene, out, shots=["a"], editor=editor, retries=0, timeout=60, progress=False)
    assert not (out / "kite" / "a" / META_FILE).exists()
    assert not (out / ".unreal" / "kite" / "a" / "raw" / "render-done.json").exists()  # not mistaken for done


def test_crash_then_success_on_retry(tmp_path, scene, editor, monkeypatch):
    monkeypatch.setenv("FAKE_UE_BEHAVIOUR", "crash-once")
    out = tmp_path / "c"
    [path] = capture_scene(scene, out, shots=["a"], editor=editor, retries=1, timeout=60, progress=False)
    assert validate_capture(path).ok
    assert "Segmentation fault" in (out / ".unreal" / "kite" / "a" / "editor-render-0.log").read_text()
    assert logs(out, "a") == ["editor-render-0.log", "editor-render-1.log"]


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
    assert logs(out, "a") == logs(out, "b") == ["editor-render-0.log"]  # the editor did not run again


def test_a_second_writer_of_a_shot_is_refused_before_any_editor_starts(tmp_path, scene, editor):
    out = tmp_path / "c"
    with shot_lock(out / "kite" / "a"):  # another capture of this shot is running
        with pytest.raises(QwError, match="another process is writing this shot"):
            capture_scene(scene, out, shots=["a"], editor=editor, timeout=60, progress=False)
    assert logs(out, "a", "prepare") == [] and logs(out, "a") == []


def test_output_rendered_with_other_settings_is_never_reused(tmp_path, scene, editor):
    out = tmp_path / "c"
    capture_scene(scene, out, shots=["a"], editor=editor, timeout=60, progress=False)
    scene.capture.resolution = (40, 25)
    scene.shots[0].end = 14
    with pytest.raises(QwError, match="already complete with other settings") as refused:
        capture_scene(scene, out, shots=["a"], editor=editor, timeout=60, progress=False)
    assert refused.value.exit_code == 2
    shot = out / "kite" / "a"
    os.replace(shot / META_FILE, shot / f"{META_FILE}.invalid")  # e.g. it failed validation: the user edits, reruns
    capture_scene(scene, out, shots=["a"], editor=editor, timeout=60, progress=False)
    meta = load_meta(shot)
    assert (meta.width, meta.height, meta.frame_count) == (40, 25, 4)
    assert (meta.backend.settings["width"], meta.backend.settings["end_frame"]) == (40, 14)
    assert read_frame(shot, "color", 0).shape[:2] == (25, 40) and validate_capture(shot).ok


def test_a_shot_of_an_older_job_format_is_refused_naming_the_format(tmp_path, scene, editor, monkeypatch, caplog):
    """After the job format changed (an upgrade of qw), nothing the user set differs: the refusal of a complete shot
    and the warning that discards raw output must say what does, not only "other settings"."""
    out = tmp_path / "c"
    with monkeypatch.context() as older:
        older.setattr(launcher, "JOB_FORMAT", "qw-ue-job/2")
        capture_scene(scene, out, editor=editor, timeout=60, progress=False)
    (out / "kite" / "b" / META_FILE).unlink()  # b: rendered, not yet normalized
    with pytest.raises(QwError, match=r"kite/a: already complete with other settings \(format "
                                      r"'qw-ue-job/2' → 'qw-ue-job/3'\); delete it or use another --out"):
        capture_scene(scene, out, shots=["a"], editor=editor, timeout=60, progress=False)
    capture_scene(scene, out, shots=["b"], editor=editor, timeout=60, progress=False)
    assert "rendered with other settings (format 'qw-ue-job/2' → 'qw-ue-job/3')" in caplog.text
    assert load_meta(out / "kite" / "b").backend.settings["format"] == "qw-ue-job/3"


def test_missing_editor_is_one_clear_error(tmp_path, scene):
    with pytest.raises(QwError, match=f"pass --editor PATH or set {EDITOR_ENV}"):
        capture_scene(scene, tmp_path / "c", progress=False)
    with pytest.raises(QwError, match="Unreal editor not found or not executable"):
        capture_scene(scene, tmp_path / "c", editor=tmp_path / "nope", progress=False)


def test_unfilled_manifest_fields_name_what_to_set(tmp_path, scene, editor, monkeypatch):
    scene.unreal.camera, scene.unreal.level_sequence = None, "FILL_IN"
    with pytest.raises(QwError, match="unreal.level_sequence still FILL_IN"):
        capture_scene(scene, tmp_path / "c", editor=editor, progress=False)
    scene.unreal.level_sequence = "/Game/S.S"
    monkeypatch.delenv("QW_TEST_PROJECTS")
    with pytest.raises(QwError, match=r"pass --project PATH.uproject or set the environment variable"):
        capture_scene(scene, tmp_path / "c", editor=editor, progress=False)


def test_dry_run_prints_every_stage_without_unreal(tmp_path, scene, capsys):
    assert capture_scene(scene, tmp_path / "c", shots=["b"], dry_run=True) == []
    text = capsys.readouterr().out
    prepare = json.loads(next(line for line in text.splitlines() if line.startswith("prepare: "))[9:])
    render = json.loads(next(line for line in text.splitlines() if line.startswith("render: "))[8:])
    project = str(tmp_path / "proj" / "Kite.uproject")
    assert prepare[:2] == [f"${EDITOR_ENV}", project] and prepare[2].endswith("editor_script.py")
    assert prepare[2].startswith("-ExecutePythonScript=")
    assert render[:5] == [f"${EDITOR_ENV}", project, "MoviePipelineEntryMap", "-game",
                          "-MoviePipelineConfig=MovieRenderPipeline/QW_kite_b.utxt"]
    queue = tmp_path / "proj" / "Saved" / "MovieRenderPipeline" / "QW_kite_b.utxt"
    assert f"queue: {queue} (loaded by the render as -MoviePipelineConfig=MovieRenderPipeline/QW_kite_b.utxt)" \
        in text
    assert "-RenderOffScreen" in render and "-unattended" in render
    job = json.loads(text[text.index("job: ") + 5:])
    assert job["shot"] == "b" and job["level_sequence"] == "/Game/QW/Sequences/QW_kite.QW_kite"
    assert job["passes"]["reference"]["cvars"]["r.DefaultFeature.AntiAliasing"] == 0
    assert not (tmp_path / "c").exists()


def test_project_default_map_is_read_from_the_project_ini(tmp_path, scene, capsys):
    scene.unreal.map = "project-default"
    ini = tmp_path / "proj" / "Config" / "DefaultEngine.ini"
    ini.parent.mkdir()
    ini.write_text("[/Script/EngineSettings.GameMapsSettings]\nEditorStartupMap=/Game/Maps/Menu\n"
                   "GameDefaultMap=/Game/Maps/Garden.Garden\n")
    capture_scene(scene, tmp_path / "c", shots=["b"], dry_run=True)
    assert '"map": "/Game/Maps/Garden.Garden"' in capsys.readouterr().out
    ini.write_text("[/Script/Engine.RendererSettings]\nr.BasePassOutputsVelocity=1\n")
    with pytest.raises(QwError, match=r"DefaultEngine.ini: no GameDefaultMap=/Game/\.\.\. under"):
        capture_scene(scene, tmp_path / "c", shots=["b"], dry_run=True)


def test_cli_capture_dry_run_and_missing_editor(tmp_path, scene):
    manifest = tmp_path / "kite.yaml"
    manifest.write_text(json.dumps(scene.model_dump(mode="json")))  # JSON is YAML
    runner = CliRunner()
    result = runner.invoke(main, ["datagen", "capture", "--scene", str(manifest), "--dry-run",
                                  "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert "-ExecutePythonScript=" in result.output and "-MoviePipelineConfig=" in result.output
    result = runner.invoke(main, ["datagen", "capture", "--scene", str(manifest), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and f"set {EDITOR_ENV}" in result.output


def test_scheduler_runs_shots_as_tasks_needing_ue_resource(tmp_path, scene, editor, monkeypatch):
    from distributed import LocalCluster
    from distributed.diagnostics.plugin import SchedulerPlugin

    from qw.ue_capture import launcher

    prepares = {"running": 0, "most": 0, "runs": 0}  # prepare stages' editor runs in flight, at most, in all
    count = threading.Lock()
    run_editor = launcher.run_editor

    def counted_run_editor(argv, env, log_path, timeout):
        if "prepare" not in log_path.name:
            return run_editor(argv, env, log_path, timeout)
        with count:
            prepares["running"] += 1
            prepares["most"] = max(prepares["most"], prepares["running"])
            prepares["runs"] += 1
        try:
            time.sleep(0.5)  # both shots start at once on the two workers: without turns, their prepares overlap
            return run_editor(argv, env, log_path, timeout)
        finally:
            with count:
                prepares["running"] -= 1

    monkeypatch.setattr(launcher, "run_editor", counted_run_editor)

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
    # two shots of one project on one node: their prepares take turns, since the editor saves every queue to one
    # fixed file before the script copies it to the shot's own (a shot could otherwise render the other's queue)
    assert prepares["runs"] == 2 and prepares["most"] == 1


@pytest.mark.parametrize("version, quits", [("4.27", True), ("5.5", False)])
def test_fake_editor_models_the_auto_quit(tmp_path, editor, version, quits):
    """After -ExecutePythonScript the editor quits on the next tick; UE5 scripts can ask to stay alive, which
    4.27 has no function for (the script fails and the editor quits anyway)."""
    script = tmp_path / "stay.py"
    script.write_text("import unreal\nunreal.EditorPythonScripting.set_keep_python_script_alive(True)\n")
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "Kite.uproject").write_text(json.dumps(UPROJECT))
    proc = subprocess.Popen([str(editor), str(tmp_path / "proj" / "Kite.uproject"), f"-ExecutePythonScript={script}"],
                            env={**os.environ, "FAKE_UE_VERSION": version}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=6)
        assert quits and "EditorPythonScripting does not exist" in output
    except subprocess.TimeoutExpired:
        assert not quits  # still running: kept alive
    finally:
        proc.kill()
        proc.wait()


# ----------------------------------------------------------------------------------------------- engine behaviour
# Each test below has the fake engine act out one behaviour of the engine sources (cited in the fake) and checks
# that qw's capture comes out right in spite of it.


def run_fake_render(editor: Path, project: Path, config: str) -> subprocess.CompletedProcess:
    argv = [str(editor), str(project), "MoviePipelineEntryMap", "-game", f"-MoviePipelineConfig={config}"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_queue_is_saved_where_the_render_can_load_it(tmp_path, scene, editor):
    """The render loads the queue as a text package: only a file that converts to a package name loads."""
    out = tmp_path / "c"
    [path] = capture_scene(scene, out, shots=["a"], editor=editor, progress=False, timeout=60)
    project = tmp_path / "proj" / "Kite.uproject"
    queue = project.parent / "Saved" / "MovieRenderPipeline" / "QW_kite_a.utxt"
    assert json.loads((out / ".unreal" / "kite" / "a" / "job.json").read_text())["queue_manifest"] == str(queue)
    assert load_meta(path).backend.settings["queue_config"] == "MovieRenderPipeline/QW_kite_a.utxt"
    for bad in (out / ".unreal" / "kite" / "a" / "queue.utxt",  # outside the project's mounted folders
                project.parent / "Saved" / "MovieRenderPipeline" / "QW.kite.utxt",  # a '.' in the package name
                project.parent / "Saved" / ".unreal" / "queue.utxt"):
        bad.parent.mkdir(parents=True, exist_ok=True)
        bad.write_text(queue.read_text())
        result = run_fake_render(editor, project, str(bad))
        assert result.returncode != 0 and "Could not parse text asset package" in result.stderr, bad
    assert run_fake_render(editor, project, "MovieRenderPipeline/QW_kite_a.utxt").returncode == 0


def test_a_relative_project_path_reaches_the_editor_absolute(tmp_path, scene, editor, monkeypatch):
    """The editor opens its project, and its Python writes the shot's queue, from its own Binaries folder, not
    from the directory qw was started in: a relative project (and output) path must reach it absolute."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QW_TEST_PROJECTS", "proj")
    [path] = capture_scene(scene, Path("c"), shots=["a"], editor=editor, progress=False, timeout=60, retries=0)
    job = json.loads((tmp_path / "c" / ".unreal" / "kite" / "a" / "job.json").read_text())
    assert job["queue_manifest"] == str(tmp_path / "proj" / "Saved" / "MovieRenderPipeline" / "QW_kite_a.utxt")
    prepare_log = (tmp_path / "c" / ".unreal" / "kite" / "a" / "editor-prepare-0.log").read_text()
    assert "QUIT_EDITOR (the script returned)" in prepare_log
    assert validate_capture(tmp_path / path).ok


@pytest.mark.parametrize("version, folder", [("4.27", "Program Files"), ("5.5", ".pyenv")])
def test_an_editor_script_path_the_engine_cannot_take_still_runs(tmp_path, scene, editor, monkeypatch, version,
                                                                 folder):
    """qw installed under a folder with a space (4.27 runs the -ExecutePythonScript value up to its first space) or
    with '.py' in a folder name (5.5 ends the file at the first '.py'): the script still runs and the shot renders."""
    monkeypatch.setenv("FAKE_UE_VERSION", version)
    scene.unreal.engine_version = version
    script = tmp_path / folder / "qw" / "ue_capture" / "editor_script.py"
    script.parent.mkdir(parents=True)
    script.write_text(launcher.EDITOR_SCRIPT.read_text())
    monkeypatch.setattr(launcher, "EDITOR_SCRIPT", script)
    [path] = capture_scene(scene, tmp_path / "c", shots=["a"], editor=editor, progress=False, timeout=60, retries=0)
    assert validate_capture(path).ok
    copy = tmp_path / "proj" / "Content" / "Python" / "qw_editor_script.py"
    assert copy.read_text() == script.read_text()


@pytest.mark.parametrize("version", ["4.27", "5.5"])
def test_windows_command_line_of_an_editor_script_under_program_files(tmp_path, scene, capsys, monkeypatch, version):
    """subprocess on Windows joins the argv with list2cmdline; the engine splits it back (CommandLineToArgvW) and
    re-quotes it, then reads -ExecutePythonScript: the file it runs must be the script, not a garbled path."""
    script = r"C:\Program Files\Python311\Lib\site-packages\qw\ue_capture\editor_script.py"
    monkeypatch.setattr(launcher, "EDITOR_SCRIPT", PureWindowsPath(script))
    scene.unreal.engine_version = version
    capture_scene(scene, tmp_path / "c", shots=["a"], dry_run=True)
    argv = json.loads(next(line for line in capsys.readouterr().out.splitlines() if line.startswith("prepare: "))[9:])
    assert fake_ue_editor.execute_python_script(argv[1:], version)[1] == "qw_editor_script.py"
    assert " -ExecutePythonScript=qw_editor_script.py " in subprocess.list2cmdline(argv)


def test_leftward_and_upward_motion_survive(tmp_path, scene, editor):
    """The engine clamps Emissive at 0 unless the material was compiled allowing negative emissive colour."""
    [path] = capture_scene(scene, tmp_path / "c", shots=["a"], editor=editor, progress=False, timeout=60)
    poses = keyed_poses(tmp_path)
    for i in range(1, load_meta(path).frame_count):
        velocity, _ = camera_velocity(poses[9 + i], poses[10 + i], 75, W, H, shifts(N)[i % N])
        truth = np.stack([velocity[..., 0] * W / 2, -velocity[..., 1] * H / 2], axis=-1)
        assert (truth < -0.05).any(axis=(0, 1)).all()  # leftward and upward motion to lose
        np.testing.assert_allclose(read_frame(path, "motion", i), truth, atol=1e-4)


def test_unreal_cameras_are_recorded_and_motion_passes_the_reprojection_check(tmp_path, scene, editor):
    """The poses qw baked and the script keyed become capture.json cameras; validate's reprojection check then
    compares the engine's velocity with depth + cameras, as for builtin captures. Unjittered, the two agree to
    float precision (shot b also rolls)."""
    scene.capture.jitter = "none"
    paths = capture_scene(scene, tmp_path / "c", editor=editor, progress=False, timeout=60)
    for path in paths:
        meta = load_meta(path)
        assert meta.cameras is not None and len(meta.cameras) == meta.frame_count
        report = validate_capture(path)
        assert report.ok and report.lowest_agreement == 1.0, report.problems
        for i in np.flatnonzero(meta.history_valid()):
            expected = reprojected_motion(read_frame(path, "depth", i), meta.cameras[i - 1], meta.cameras[i], W, H)
            np.testing.assert_allclose(read_frame(path, "motion", i), expected, atol=2e-3)
    keys = json.loads((tmp_path / "c" / ".unreal" / "kite" / "a" / "job.json").read_text())["camera"]["keys"]
    assert [k["frame"] for k in keys] == list(range(0, 61))  # baked: every frame keyed, linear between keys
    assert keys[30]["position"] == pytest.approx([1000, 225, 197.5]) and keys[30]["rotation"] == pytest.approx(
        [-17.5, 55, 1.25])


def test_first_frame_motion_is_zero_and_has_no_history(tmp_path, scene, editor):
    """Without camera-cut warm-up MRQ fakes frame 0's previous position: its velocity is about −truth."""
    [path] = capture_scene(scene, tmp_path / "c", shots=["a"], editor=editor, progress=False, timeout=60)
    meta = load_meta(path)
    assert not read_frame(path, "motion", 0).any() and not meta.history_valid()[0]
    assert meta.extra["motion_zeroed_frames"] == [0]


def test_a_crash_on_shutdown_after_a_complete_render_keeps_the_render(tmp_path, scene, editor, monkeypatch):
    """The files decide: a render that wrote everything and then crashed is not thrown away and redone."""
    monkeypatch.setenv("FAKE_UE_BEHAVIOUR", "crash-on-exit")
    out = tmp_path / "c"
    [path] = capture_scene(scene, out, shots=["a"], editor=editor, retries=2, timeout=60, progress=False)
    assert validate_capture(path).ok and logs(out, "a") == ["editor-render-0.log"]


def test_a_project_without_the_scripting_plugins_is_refused_at_once(tmp_path, scene, editor):
    """Without PythonScriptPlugin a UE5 editor ignores -ExecutePythonScript and stays open (4.27's, which reads the
    flag in EditorScriptingUtilities, logs an error and quits): refuse before it starts."""
    project = tmp_path / "proj" / "Kite.uproject"
    project.write_text(json.dumps({"FileVersion": 3, "Plugins": [{"Name": "EditorScriptingUtilities", "Enabled": True},
                                                                   {"Name": "MovieRenderPipeline", "Enabled": True}]}))
    start = time.monotonic()
    with pytest.raises(QwError, match=r"Kite\.uproject: plugin\(s\) PythonScriptPlugin not enabled; add "
                                      r"\{\"Name\": \"PythonScriptPlugin\", \"Enabled\": true\}"):
        capture_scene(scene, tmp_path / "c", shots=["a"], editor=editor, retries=0, timeout=20, progress=False)
    assert time.monotonic() - start < 10 and logs(tmp_path / "c", "a", "prepare") == []
    argv = [str(editor), str(project), f"-ExecutePythonScript={tmp_path / 'any.py'}"]
    quits = subprocess.run(argv, env={**os.environ, "FAKE_UE_VERSION": "4.27"}, capture_output=True, text=True,
                           timeout=60)
    assert "cannot be used without a valid Python Script Plugin" in quits.stdout
    proc = subprocess.Popen(argv, env={**os.environ, "FAKE_UE_VERSION": "5.5"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with pytest.raises(subprocess.TimeoutExpired):  # the fake, like the editor, never quits
            proc.wait(timeout=3)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("version", ["4.27", "5.5"])
def test_a_project_without_movie_render_queue_is_refused_at_once(tmp_path, scene, editor, monkeypatch, version):
    """MovieRenderPipeline.uplugin says "EnabledByDefault": false (4.27 and 5.5): without it the script has no
    unreal.MoviePipelineQueue and the render no -MoviePipelineConfig, so qw refuses before any editor starts instead
    of retrying a prepare stage that can only fail."""
    monkeypatch.setenv("FAKE_UE_VERSION", version)
    project = tmp_path / "proj" / "Kite.uproject"
    project.write_text(json.dumps({"FileVersion": 3, "Plugins": UPROJECT["Plugins"][:2]}))
    with pytest.raises(QwError, match=r"Kite\.uproject: plugin\(s\) MovieRenderPipeline not enabled; add "
                                      r"\{\"Name\": \"MovieRenderPipeline\", \"Enabled\": true\}"):
        capture_scene(scene, tmp_path / "c", shots=["a"], editor=editor, retries=0, timeout=60, progress=False)
    assert logs(tmp_path / "c", "a", "prepare") == []


def test_both_jobs_render_at_one_fixed_exposure(tmp_path, scene, editor):
    """A map's post-process volume turns eye adaptation back on whatever r.DefaultFeature.AutoExposure says, and
    jobs with different sample counts then adapt differently; r.EyeAdaptationQuality 0 fixes it for both."""
    [path] = capture_scene(scene, tmp_path / "c", shots=["a"], editor=editor, progress=False, timeout=60)
    meta = load_meta(path)
    assert meta.extra["exposure"] == {"r.EyeAdaptationQuality": 0, "r.DefaultFeature.AutoExposure": 0}
    y, x = np.mgrid[0:H, 0:W] + 0.5
    for i in range(meta.frame_count):
        colour = scene_colour(x + meta.jitter.offsets[i][0], y + meta.jitter.offsets[i][1], 10 + i)
        np.testing.assert_allclose(read_frame(path, "color", i), colour, rtol=2e-3)
        ratio = read_frame(path, "reference", i).mean() / scene_colour(x, y, 10 + i).mean()
        assert ratio == pytest.approx(1.0, abs=5e-3)


def test_first_frame_is_captured_after_the_maps_particles_have_settled(tmp_path, scene, editor):
    """Each job loads its map, and MRQ's warm-up must let world time pass before frame 0: engine warm-up frames tick
    the world (game-thread particles, physics), and rendering them runs GPU particles. Render warm-up samples alone
    all fall in one tick, so frame 0 would show the fake map's particle systems still spawning."""
    out = tmp_path / "c"
    [path] = capture_scene(scene, out, shots=["a"], editor=editor, progress=False, timeout=60)
    meta = load_meta(path)
    y, x = np.mgrid[0:H, 0:W] + 0.5
    settled = scene_colour(x + meta.jitter.offsets[0][0], y + meta.jitter.offsets[0][1], 10)
    np.testing.assert_allclose(read_frame(path, "color", 0), settled, rtol=2e-3)
    truth = np.mean([scene_colour(x + ox, y + oy, 10) for ox, oy in meta.reference.offsets], axis=0)
    np.testing.assert_allclose(read_frame(path, "reference", 0), truth, rtol=2e-3)

    # The same saved job rendered again with less warm-up: the fake's simulation tells the settings apart.
    spec = json.loads((out / ".unreal" / "kite" / "a" / "job.json").read_text())
    aliased = json.loads(Path(spec["queue_manifest"]).read_text())["jobs"][0]
    quarter = W // 4

    def first_sample(**warm_up) -> np.ndarray:
        folder = tmp_path / "again" / "-".join(f"{k}={v}" for k, v in warm_up.items())
        settings = aliased["settings"]
        job = {**aliased, "settings": {**settings, "MoviePipelineAntiAliasingSetting": {
            **settings["MoviePipelineAntiAliasingSetting"], **warm_up}, "MoviePipelineOutputSetting": {
            **settings["MoviePipelineOutputSetting"], "output_directory": {"path": str(folder)}}}}
        fake_ue_editor.render_job(tmp_path / "proj" / "Kite.uproject", job, "4.27", 1)
        return read_exr(folder / "FinalImage_SS_0_TS_0_TileX_0_TileY_0.0.exr", ("R", "G", "B"))

    np.testing.assert_allclose(first_sample(), settled, rtol=2e-3)  # the settings qw saved
    old = first_sample(engine_warm_up_count=0, render_warm_up_frames=False)  # render_warm_up_count only
    unrendered = first_sample(render_warm_up_frames=False)
    for image, left_settled, right_settled in ((old, False, False), (unrendered, True, False)):
        assert np.allclose(image[:, :quarter], settled[:, :quarter], rtol=2e-3) == left_settled
        assert np.allclose(image[:, W - quarter:], settled[:, W - quarter:], rtol=2e-3) == right_settled
        np.testing.assert_allclose(image[:, quarter:W - quarter], settled[:, quarter:W - quarter], rtol=2e-3)


def test_reference_is_the_mean_of_its_samples_not_the_accumulators_splat(tmp_path, scene, editor):
    """MRQ's accumulated frame splats every sample bilinearly (a wider footprint); qw averages the samples."""
    out = tmp_path / "c"
    [path] = capture_scene(scene, out, shots=["a"], editor=editor, progress=False, timeout=60)
    meta = load_meta(path)
    assert meta.reference.samples == 4 and meta.reference.filter.endswith("mean taken by qw "
                                                                          "(r.TemporalAAFilterSize=1)")
    y, x = np.mgrid[0:H, 0:W] + 0.5
    accumulated = out / ".unreal" / "kite" / "a" / "raw" / "reference" / "accumulated"
    for i in range(meta.frame_count):
        truth = np.mean([scene_colour(x + ox, y + oy, 10 + i) for ox, oy in meta.reference.offsets], axis=0)
        stored = read_frame(path, "reference", i)
        np.testing.assert_allclose(stored, truth, rtol=2e-3)
        splat = read_exr(accumulated / f"FinalImage.{10 + i:04d}.exr", ("R", "G", "B"))[1:-1, 1:-1]
        assert np.abs(splat - truth[1:-1, 1:-1]).max() > 10 * np.abs(stored - truth).max()


def test_complete_raw_output_without_its_record_is_normalized_not_rendered_again(tmp_path, scene, editor):
    """The launcher stopped between a complete render and its record: the files decide, no editor runs."""
    out = tmp_path / "c"
    capture_scene(scene, out, shots=["a"], editor=editor, timeout=60, progress=False)
    (out / "kite" / "a" / META_FILE).unlink()
    (out / ".unreal" / "kite" / "a" / "raw" / "render-done.json").unlink()
    tripwire = tmp_path / "bin" / "Tripwire-Cmd"  # an "editor" that records being started, and fails
    tripwire.write_text(f'#!/bin/sh\ntouch "{tmp_path / "started"}"\nexit 1\n')
    tripwire.chmod(0o755)
    [path] = capture_scene(scene, out, shots=["a"], editor=tripwire, retries=0, timeout=60, progress=False)
    assert validate_capture(path).ok and not (tmp_path / "started").exists()


@pytest.mark.parametrize("fps, rate", [(30, [30, 1]), (60.0, [60, 1]), (12.5, [25, 2]), (23.976, [24000, 1001]),
                                       (29.97, [30000, 1001]), (59.94, [60000, 1001])])
def test_manifest_fps_is_the_engine_frame_rate(fps, rate):
    """Unreal's NTSC rates are n·1000/1001 (a sequence at 23.976 fps holds 24000/1001, which the prepare stage
    compares exactly); 23.976 read as 2997/125 refused every such sequence."""
    assert launcher.frame_rate(fps) == rate
