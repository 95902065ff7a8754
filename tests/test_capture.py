"""The capture stage with the builtin renderer: contract, determinism, resume after a kill, Dask, clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from qw.datagen import capture_format as cf
from qw.datagen.builtin.renderer import halton_jitter
from qw.datagen.capture import PROGRESS_FILE, select_shots
from qw.capture import capture_scene
from qw.datagen.errors import QwError
from qw.datagen.manifests import find_scene

QW = [sys.executable, "-m", "qw.cli"]
TINY = {"resolution": (64, 48), "reference_spp": 4}


def run_qw(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*QW, *args], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          cwd=Path(__file__).resolve().parent.parent, timeout=120, **kwargs)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_fixture_capture_follows_the_contract_and_passes_validate(builtin_captures):
    shots = cf.find_captures(builtin_captures)
    assert [s.relative_to(builtin_captures).as_posix() for s in shots] == [
        "builtin_fence/low_cut", "builtin_fence/rise", "builtin_specular/crane", "builtin_specular/orbit"]
    cut = cf.load_meta(builtin_captures / "builtin_fence/low_cut")
    assert cut.camera_cuts == [6] and cut.frame_count == 12 and (cut.width, cut.height) == (320, 256)
    assert cut.source_frames == list(range(96, 108)) and cut.reference.samples == 16
    np.testing.assert_allclose(cut.jitter_array(), [halton_jitter(f, 8) for f in cut.source_frames], atol=1e-7)
    assert len(cut.cameras) == 12 and cut.extra["split"] == "train"
    assert cf.load_meta(builtin_captures / "builtin_fence/rise").extra["split"] == "val"
    # zero motion at the cut (no valid history), real motion elsewhere
    assert not cf.read_frame(cut_dir := builtin_captures / "builtin_fence/low_cut", "motion", 6).any()
    assert np.abs(cf.read_frame(cut_dir, "motion", 5)).mean() > 0.5
    result = run_qw("datagen", "validate", str(builtin_captures))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path):
    scene = find_scene("builtin_crossing")
    for out in ("a", "b"):
        capture_scene(scene, tmp_path / out, shots=["cut"], frames="4:8", progress=False, **TINY)
    capture_scene(scene.model_copy(update={"seed": scene.seed + 1}), tmp_path / "c", shots=["cut"], frames="4:8",
                  progress=False, **TINY)
    a, b, c = (tree_bytes(tmp_path / x) for x in "abc")
    assert a == b and len(a) == 4 * 4 + 1
    assert a["builtin_crossing/cut/color/000000.exr"] != c["builtin_crossing/cut/color/000000.exr"]


def test_resume_after_kill_keeps_frames_and_completes_identically(tmp_path):
    args = ["datagen", "capture", "--scene", "builtin_fence", "--shot", "dolly", "--frames", "0:60",
            "--resolution", "96x64", "--reference-spp", "1"]
    shot = tmp_path / "killed/builtin_fence/dolly"
    proc = subprocess.Popen([*QW, *args, "--out", str(tmp_path / "killed")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = time.monotonic() + 60
        while len(list(shot.glob("reference/*.exr"))) < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = sorted(shot.glob("reference/*.exr"))
    assert 6 <= len(done) < 60 and not cf.is_complete(shot) and (shot / PROGRESS_FILE).is_file()
    kept = {p: p.stat().st_mtime_ns for p in done[:5]}
    (shot / "motion/000002.exr").unlink()  # a frame with a pass missing is rendered again
    (shot / "color/.000099.exr.abc.tmp").write_bytes(b"half-written")  # a killed writer's temp file
    result = run_qw(*args, "--out", str(tmp_path / "killed"))
    assert result.returncode == 0, result.stderr
    assert cf.is_complete(shot) and not (shot / PROGRESS_FILE).exists()
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items() if "000002" not in p.name)
    capture_scene("builtin_fence", tmp_path / "whole", shots=["dolly"], frames="0:60", resolution="96x64",
                  reference_spp=1, progress=False)
    assert tree_bytes(tmp_path / "killed") == tree_bytes(tmp_path / "whole")


def test_complete_shot_with_other_settings_is_refused_unfinished_one_restarts(tmp_path):
    capture_scene("builtin_street", tmp_path, shots=["fly"], frames="0:2", progress=False, **TINY)
    shot = tmp_path / "builtin_street/fly"
    complete = tree_bytes(tmp_path)
    with pytest.raises(QwError, match="already complete with other settings") as refused:
        capture_scene("builtin_street", tmp_path, shots=["fly"], frames="0:2", resolution=(80, 48),
                      reference_spp=4, progress=False)
    assert refused.value.exit_code == 2  # a request that conflicts with what exists; the capture itself is sound
    assert tree_bytes(tmp_path) == complete  # nothing finished is touched
    (shot / cf.META_FILE).unlink()  # now an unfinished shot of another run's settings: a retry is not blocked
    (shot / PROGRESS_FILE).write_text('{"resolution": [1, 1]}')
    capture_scene("builtin_street", tmp_path, shots=["fly"], frames="0:2", progress=False, **TINY)
    assert tree_bytes(tmp_path) == complete


def test_dask_cluster_renders_shots_as_tasks(tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        paths = capture_scene("builtin_specular", tmp_path / "dask", shots=["orbit", "crane"], frames="0:3",
                              scheduler=cluster.scheduler_address, progress=False, **TINY)
    assert [p.name for p in paths] == ["orbit", "crane"] and all(cf.is_complete(p) for p in paths)
    capture_scene("builtin_specular", tmp_path / "local", shots=["orbit", "crane"], frames="0:3", progress=False,
                  **TINY)
    assert tree_bytes(tmp_path / "dask") == tree_bytes(tmp_path / "local")


def test_unknown_scene_lists_the_known_ones():
    result = run_qw("datagen", "capture", "--scene", "no_such_scene")
    assert result.returncode == 2
    assert "unknown scene 'no_such_scene'" in result.stderr and "builtin_fence" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_egl_says_what_to_install(tmp_path):
    result = run_qw("datagen", "capture", "--scene", "builtin_fence", "--out", str(tmp_path), "--frames", "0:1",
                    env={"__EGL_VENDOR_LIBRARY_FILENAMES": "/nonexistent/egl_vendor.json"})
    assert result.returncode == 2
    assert "libegl1 libgl1-mesa-dri" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("*.exr"))


def test_option_errors_are_clear(tmp_path, monkeypatch):
    monkeypatch.delenv("QW_UE4_EDITOR", raising=False)
    with pytest.raises(QwError, match="apply only to builtin scenes"):
        capture_scene("kite", tmp_path, frames="0:4")
    with pytest.raises(QwError, match="apply only to Unreal scenes"):
        capture_scene("builtin_fence", tmp_path, editor="/opt/UE4Editor")
    with pytest.raises(QwError, match="QW_UE4_EDITOR"):  # Unreal scene, Unreal not configured
        capture_scene("kite", tmp_path)
    with pytest.raises(QwError, match="expected A:B"):
        capture_scene("builtin_fence", tmp_path, frames="7")
    with pytest.raises(QwError, match="outside shot 'dolly'"):
        capture_scene("builtin_fence", tmp_path, shots=["dolly"], frames="0:500")
    with pytest.raises(QwError, match="square number"):
        capture_scene("builtin_fence", tmp_path, reference_spp=10)
    with pytest.raises(QwError, match="WIDTHxHEIGHT"):
        capture_scene("builtin_fence", tmp_path, resolution="640")
    with pytest.raises(QwError, match="has no shot 'nope'"):
        capture_scene("builtin_fence", tmp_path, shots=["nope"])
    # 0 samples and an empty shot list were read as "the manifest's": a full capture of every shot (the bad
    # frames keep a regression from rendering: they are checked after these)
    with pytest.raises(QwError, match="reference samples 0: .*square number"):
        capture_scene("builtin_fence", tmp_path, reference_spp=0, frames="0:500")
    with pytest.raises(QwError, match="the list of shots is empty"):
        capture_scene("builtin_fence", tmp_path, shots=[], frames="0:500")
    with pytest.raises(QwError, match="the list of shots is empty"):
        capture_scene("kite", tmp_path, shots=[])
    assert not list(tmp_path.rglob("*.exr"))


def test_camera_cuts_must_match_the_camera_path(tmp_path):
    scene = find_scene("builtin_fence")
    shots = [s.model_copy(update={"camera_cuts": []}) if s.name == "low_cut" else s for s in scene.shots]
    with pytest.raises(QwError, match=r"camera_cuts \[\] differ from the cuts of the builder's camera path \[102\]"):
        capture_scene(scene.model_copy(update={"shots": shots}), tmp_path, shots=["low_cut"], frames="0:2",
                      progress=False, **TINY)


@pytest.mark.parametrize("change, message", [
    ({"frame": 102.5}, "camera cut at frame 102.5: a cut must be at a whole frame"),
    ({"target": [-2.0, 0.35, 3.5]}, "are the same point or straight above each other"),
    ({"eye": [0.0, 4.0, -2.0]}, "are the same point or straight above each other"),
    ({"eye": [-2.0, 0.35]}, "eye and target must be 3 finite numbers each"),
])
def test_bad_camera_keys_are_refused_before_rendering(tmp_path, change, message):
    # a cut between frames marked the frame before it as the cut (motion across the real cut, history valid);
    # a degenerate look-at gave NaN cameras and a traceback after every frame was rendered
    scene = find_scene("builtin_fence")
    keys = [dict(k) for k in scene.builtin.params["camera"]]
    keys[2].update(change)  # the cut key at frame 102 (eye [-2, 0.35, 3.5], target [0, 0.6, -2])
    params = {**scene.builtin.params, "camera": keys}
    bad = scene.model_copy(update={"builtin": scene.builtin.model_copy(update={"params": params})})
    with pytest.raises(QwError, match=f"scene 'builtin_fence': builder 'fence' failed on its params: .*{message}"):
        capture_scene(bad, tmp_path, shots=["low_cut"], frames="0:2", progress=False, **TINY)
    assert not list(tmp_path.rglob("*.exr"))


@pytest.mark.parametrize("params, message", [({"fov": 0}, "fov 0 must be between 0 and 180"),
                                             ({"fov": 200}, "fov 200 must be between 0 and 180"),
                                             ({"spheres": 80}, "made [0-9]+ materials and 3 point lights; .* at most 64 materials"),
                                             ({"lights": 9}, "made [0-9]+ materials and 9 point lights")])
def test_params_the_renderer_cannot_draw_are_refused_naming_the_scene(tmp_path, params, message):
    scene = find_scene("builtin_specular")
    bad = scene.model_copy(update={"builtin": scene.builtin.model_copy(
        update={"params": {**scene.builtin.params, **params}})})
    with pytest.raises(QwError, match=f"scene 'builtin_specular': builder 'specular' .*{message}"):
        capture_scene(bad, tmp_path, shots=["crane"], frames="0:1", progress=False, **TINY)
    assert not list(tmp_path.rglob("*.exr"))


def test_a_shot_named_twice_is_captured_once():
    # two jobs for one shot would race for its lock on a Dask cluster ("another process is writing this shot")
    scene = find_scene("builtin_fence")
    assert [s.name for s in select_shots(scene, ["rise", "dolly", "rise"])] == ["rise", "dolly"]


def test_cli_passes_unreal_options_to_the_unreal_backend(tmp_path):
    result = run_qw("datagen", "capture", "--scene", "kite", "--shot", "s1000", "--out", str(tmp_path), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "s1000" in result.stdout and not list(tmp_path.rglob("*.exr"))
