"""Faults around files and folders: names that escape, permissions, symlinks, concurrent writers, resumes that trust
damaged frames, full disks and bad input files. Each case runs the real `qw` command in its own process (real
renderer, real Dask cluster) and expects one line on stderr, exit status 2 for user errors, and nothing marked
complete."""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from blocks_helpers import capture_meta, dataset, write_dataset, write_scene_manifest, write_shot
from capture_helpers import make_capture
from cli_helpers import one_line_error

from qw.datagen import capture_format as cf
from qw.datagen.capture import PROGRESS_FILE
from qw.capture import capture_scene
from qw.cli import main
from qw.datagen.plan import load_captures
from qw.datagen.validate import validate_paths

QW = str(Path(sys.executable).with_name("qw"))
TINY = ["--frames", "0:2", "--resolution", "48x32", "--reference-spp", "1"]


def qw(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([QW, *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, **(env or {})}, **kwargs)


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------- names


def scene_manifest(tmp_path: Path, name: str = "fence", shot: str = "s1") -> Path:
    data = yaml.safe_load((Path(__file__).resolve().parent.parent / "manifests/scenes/builtin_fence.yaml").read_text())
    data.update(name=name, shots=[{"name": shot, "start": 0, "end": 4}])
    path = tmp_path / "scene.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("field, name", [("shot", "../../escaped"), ("shot", "/tmp/abs"), ("scene", ".."),
                                         ("scene", "a/b"), ("shot", ".hidden"), ("shot", "")])
def test_manifest_names_that_are_not_folder_names_are_refused(tmp_path, field, name):
    manifest = scene_manifest(tmp_path, **{("name" if field == "scene" else "shot"): name})
    out = tmp_path / "deep" / "out"
    error = one_line_error(qw("datagen", "capture", "--scene", str(manifest), "--out", str(out), *TINY))
    assert f"{manifest}: field " in error and "single folder names" in error
    assert not files(tmp_path / "deep") and sorted(os.listdir(tmp_path)) == ["scene.yaml"]


@pytest.mark.parametrize("option, name", [("--shot", "../x"), ("--scene", "/etc"), ("--scene", "..")])
def test_import_names_that_are_not_folder_names_are_refused(tmp_path, option, name):
    names = {"--scene": "S", "--shot": "s", option: name}
    src = tmp_path / "src"
    src.mkdir()
    error = one_line_error(qw("datagen", "import", str(src), "--layout", "mrq", "--out", str(tmp_path / "out"),
                              "--scene", names["--scene"], "--shot", names["--shot"]))
    assert f"{option} {name!r}" in error and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- permissions


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_capture_files_respect_the_umask(tmp_path, umask, mode):
    result = subprocess.run([QW, "datagen", "capture", "--scene", "builtin_street", "--shot", "fly",
                             "--out", str(tmp_path), *TINY], capture_output=True, text=True, timeout=180,
                            preexec_fn=lambda: os.umask(umask))
    assert result.returncode == 0, result.stderr
    written = files(tmp_path)
    assert len(written) == 4 * 2 + 1
    assert {stat.S_IMODE(p.stat().st_mode) for p in written} == {mode}


# ----------------------------------------------------------------------------------------------- symlinks


@pytest.fixture
def linked_captures(tmp_path) -> dict:
    """captures/synthetic/a is a folder, captures/synthetic/b a symlink to a shot on 'another disk', and
    captures/synthetic/loop a symlink back to captures/ (a loop). Both shots pass `validate`."""
    captures, manifests, elsewhere = tmp_path / "captures", tmp_path / "manifests", tmp_path / "other_disk"
    write_scene_manifest(manifests, "synthetic", {"a": (16, "train"), "b": (16, "train")}, (64, 48))
    make_capture(captures / "synthetic" / "a", frames=16, width=64, height=48)
    make_capture(elsewhere / "b", frames=16, width=64, height=48)
    (captures / "synthetic" / "b").symlink_to(elsewhere / "b", target_is_directory=True)
    (captures / "synthetic" / "loop").symlink_to(captures, target_is_directory=True)
    return {"captures": captures, "manifests": manifests, "root": tmp_path}


def test_one_symlink_rule_for_validate_plan_and_build(linked_captures):
    captures, manifests = linked_captures["captures"], linked_captures["manifests"]
    lines: list[str] = []
    assert validate_paths([captures], echo=lines.append)
    assert lines[-1] == "2 shot(s): 2 passed, 0 failed"
    assert sorted(c.path for c in load_captures(captures, manifests_root=manifests)) == ["synthetic/a",
                                                                                         "synthetic/b"]
    ds = write_dataset(linked_captures["root"] / "ds.yaml", dataset({"synthetic": 8}))
    result = qw("-q", "datagen", "build", "--dataset", str(ds), "--captures", str(captures),
                "--store", str(linked_captures["root"] / "s.zarr"), "--workers", "1",
                env={"QW_MANIFESTS": str(manifests)})
    assert result.returncode == 0, result.stderr
    inspect = qw("datagen", "inspect", str(linked_captures["root"] / "s.zarr")).stdout
    assert "synthetic/a (train)" in inspect and "synthetic/b (train)" in inspect


def test_validate_reports_unreadable_files_and_loops_and_checks_the_other_shots(linked_captures):
    shot_a = linked_captures["captures"] / "synthetic" / "a"
    (shot_a / "color" / "000003.exr").unlink()
    (shot_a / "color" / "000003.exr").symlink_to("000003.exr")  # a link to itself: ELOOP on open
    (shot_a / "motion" / "000005.exr").unlink()
    (shot_a / "motion" / "000005.exr").mkdir()  # EISDIR on open
    result = qw("datagen", "validate", str(linked_captures["captures"]))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    out = result.stdout
    assert "color/000003.exr: cannot read (Too many levels of symbolic links)" in out
    assert "motion/000005.exr: cannot read (Is a directory)" in out
    assert "2 shot(s): 1 passed, 1 failed" in out


# ----------------------------------------------------------------------------------------------- concurrency


def test_a_second_writer_of_a_shot_is_refused_while_the_first_finishes(tmp_path):
    args = ["datagen", "capture", "--scene", "builtin_fence", "--shot", "dolly", "--frames", "0:40",
            "--resolution", "96x64", "--reference-spp", "1", "--out", str(tmp_path)]
    shot = tmp_path / "builtin_fence" / "dolly"
    first = subprocess.Popen([QW, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(list(shot.glob("reference/*.exr"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        second = CliRunner().invoke(main, args)  # in this process: a second qw's start-up can outlast the shot
        assert first.poll() is None, "the first writer finished before the second started: make its shot longer"
        assert second.exit_code == 2 and "another process is writing this shot" in second.output, second.output
    finally:
        assert first.wait(timeout=180) == 0, first.stderr.read()
    lines: list[str] = []
    assert validate_paths([shot], echo=lines.append), lines
    assert not list(shot.parent.glob(".dolly.qw-lock"))  # released and removed


def test_a_killed_writer_does_not_block_its_resume(tmp_path):
    args = ["datagen", "capture", "--scene", "builtin_fence", "--shot", "dolly", "--frames", "0:40",
            "--resolution", "96x64", "--reference-spp", "1", "--out", str(tmp_path)]
    shot = tmp_path / "builtin_fence" / "dolly"
    proc = subprocess.Popen([QW, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(shot.glob("reference/*.exr"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (shot.parent / ".dolly.qw-lock").exists()  # left behind, but no longer locked
    assert qw(*args).returncode == 0 and cf.is_complete(shot)


# ----------------------------------------------------------------------------------------------- resume


def unfinished_record(shot: Path, **changes) -> dict:
    """The resume record (`PROGRESS_FILE`) the capture of complete `shot` kept while it was unfinished."""
    meta = cf.load_meta(shot)
    return {**meta.backend.settings, "backend_version": meta.backend.version, **changes}


def test_resume_renders_a_truncated_frame_again(tmp_path):
    whole, partial = tmp_path / "whole", tmp_path / "partial"
    capture_scene("builtin_street", whole, shots=["fly"], frames="0:3", resolution="48x32", reference_spp=1,
                  progress=False)
    shutil.copytree(whole, partial)
    shot = partial / "builtin_street" / "fly"
    (shot / PROGRESS_FILE).write_text(json.dumps(unfinished_record(shot)))  # same settings and renderer, as a
    (shot / cf.META_FILE).unlink()                                          # killed capture leaves the shot
    frame = shot / "color" / "000001.exr"
    frame.write_bytes(frame.read_bytes()[:200])  # truncated by something else
    capture_scene("builtin_street", partial, shots=["fly"], frames="0:3", resolution="48x32", reference_spp=1,
                  progress=False)
    assert {p.relative_to(partial): p.read_bytes() for p in files(partial)} == \
           {p.relative_to(whole): p.read_bytes() for p in files(whole)}


def test_unfinished_frames_of_other_settings_are_rendered_again(tmp_path):
    """Same size, other reference samples: a resume must not keep the old run's frames (they decode fine)."""
    def capture(out: Path, spp: int) -> None:
        capture_scene("builtin_street", out, shots=["fly"], frames="0:2", resolution="48x32", reference_spp=spp,
                      progress=False)

    capture(tmp_path / "old", 1)
    capture(tmp_path / "new", 4)
    shot = tmp_path / "old" / "builtin_street" / "fly"
    (shot / PROGRESS_FILE).write_text(json.dumps(unfinished_record(shot)))
    (shot / cf.META_FILE).unlink()  # the 1-sample run, unfinished
    capture(tmp_path / "old", 4)
    assert {p.relative_to(tmp_path / "old"): p.read_bytes() for p in files(tmp_path / "old")} == \
           {p.relative_to(tmp_path / "new"): p.read_bytes() for p in files(tmp_path / "new")}


def test_unfinished_frames_of_another_renderer_are_rendered_again(tmp_path, caplog):
    """Frames drawn by another OpenGL driver (another node of a cluster) or qw version are not mixed into a shot."""
    def resume(backend_version: str | None) -> set[Path]:
        """Alter the colour frames (stand-ins for another renderer's pixels), leave the shot unfinished with that
        renderer's record, resume it; the colour frames that were kept."""
        for i in range(2):
            cf.write_frame(shot, "color", i, cf.read_frame(shot, "color", i) * 1.5)
        altered = {p: p.read_bytes() for p in shot.glob("color/*.exr")}
        changes = {} if backend_version is None else {"backend_version": backend_version}
        (shot / PROGRESS_FILE).write_text(json.dumps(unfinished_record(shot, **changes)))
        (shot / cf.META_FILE).unlink()
        capture()
        return {p for p, b in altered.items() if p.read_bytes() == b}

    def capture() -> None:
        capture_scene("builtin_street", tmp_path, shots=["fly"], frames="0:2", resolution="48x32", reference_spp=1,
                      progress=False)

    capture()
    shot = tmp_path / "builtin_street" / "fly"
    whole = {p: p.read_bytes() for p in files(shot)}
    with caplog.at_level(logging.WARNING):
        assert resume("qw 0.1.0; llvmpipe (LLVM 1.0); OpenGL 4.5") == set()
    assert "by another renderer" in caplog.text
    assert {p: p.read_bytes() for p in files(shot)} == whole
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert len(resume(None)) == 2  # the same renderer: its frames are kept
    assert "by another renderer" not in caplog.text


# ----------------------------------------------------------------------------------------------- full disk


def file_size_limit(limit: int):
    """preexec_fn: writes beyond `limit` bytes fail with EFBIG (Python ignores SIGXFSZ), as on a full disk."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_full_disk_during_capture_is_one_line_and_a_retry_with_other_settings_works(tmp_path):
    args = ["-q", "datagen", "capture", "--scene", "builtin_street", "--shot", "fly", "--out", str(tmp_path)]
    result = subprocess.run([QW, *args, "--frames", "0:2", "--resolution", "160x120", "--reference-spp", "1"],
                            capture_output=True, text=True, timeout=180, preexec_fn=file_size_limit(20_000))
    error = one_line_error(result)
    assert "cannot write the EXR (File too large)" in error
    shot = tmp_path / "builtin_street" / "fly"
    assert not cf.is_complete(shot) and not list(shot.rglob(".*.tmp"))
    assert qw(*args, *TINY).returncode == 0  # other settings: the failed run's leftovers do not block it
    lines: list[str] = []
    assert validate_paths([shot], echo=lines.append), lines
    assert cf.load_meta(shot).width == 48


def test_a_full_disk_during_build_is_one_line_and_a_retry_with_other_settings_works(tmp_path):
    captures, manifests = tmp_path / "captures", tmp_path / "manifests"
    write_scene_manifest(manifests, "gamma", {"a": (16, "train")}, (64, 48))
    write_shot(captures, capture_meta("gamma", "a", 16, 64, 48))
    ds = write_dataset(tmp_path / "ds.yaml", dataset({"gamma": 4}))
    args = ["-q", "datagen", "build", "--dataset", str(ds), "--captures", str(captures), "--store",
            str(tmp_path / "s.zarr"), "--workers", "1"]
    env = {**os.environ, "QW_MANIFESTS": str(manifests)}
    result = subprocess.run([QW, *args], capture_output=True, text=True, timeout=180, env=env,
                            preexec_fn=file_size_limit(8_000))
    assert "cannot write the blocks of window" in one_line_error(result) and "File too large" in result.stderr
    assert "complete: NO" in qw("datagen", "inspect", str(tmp_path / "s.zarr")).stdout
    # a retry with other settings (another seed: another plan) is not blocked by the failed run's store
    assert subprocess.run([QW, *args, "--seed", "5"], env=env, capture_output=True, timeout=180).returncode == 0
    assert qw("datagen", "verify", str(tmp_path / "s.zarr")).returncode == 0


# ----------------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("content, message", [
    (bytes(range(256)) * 4, "not a text file"),
    (b"\xef\xbb\xbfname: [unclosed", "not valid YAML"),
    (b"- a\n- list\n", "expected a mapping"),
    (b"[" * 5000, "not valid YAML"),
])
def test_binary_and_odd_manifest_files_are_one_line(tmp_path, content, message):
    (tmp_path / "scenes").mkdir()
    (tmp_path / "scenes" / "odd.yaml").write_bytes(content)
    assert message in one_line_error(qw("scenes", "--manifests", str(tmp_path)))
    (tmp_path / "ds.yaml").write_bytes(content)
    assert message in one_line_error(qw("datagen", "plan", "--dataset", str(tmp_path / "ds.yaml"),
                                        "--captures", str(tmp_path)))


def test_negative_seeds_are_one_line(tmp_path):
    ds = write_dataset(tmp_path / "ds.yaml", dataset({"gamma": 4}))
    data = yaml.safe_load(ds.read_text())
    ds.write_text(yaml.safe_dump({**data, "seed": -1}))
    assert "field seed: Input should be greater than or equal to 0" in one_line_error(
        qw("datagen", "plan", "--dataset", str(ds), "--captures", str(tmp_path)))
    manifest = scene_manifest(tmp_path)
    manifest.write_text(manifest.read_text().replace("seed: 11", "seed: -1"))
    assert "field seed" in one_line_error(qw("datagen", "capture", "--scene", str(manifest), "--out",
                                             str(tmp_path / "out"), *TINY))
    usage = qw("datagen", "plan", "--dataset", str(ds), "--captures", str(tmp_path), "--seed", "-1")
    assert usage.returncode == 2 and "-1 is not in the range x>=0" in usage.stderr


def test_model_stats_of_tiny_and_impossible_frames(tmp_path):
    tiny = qw("model-stats", "--resolution", "1x1", "--summary")
    assert tiny.returncode == 0 and "frame: 16x16" in tiny.stdout, tiny.stderr
    assert "must be positive" in one_line_error(qw("model-stats", "--resolution", "0x5"))
