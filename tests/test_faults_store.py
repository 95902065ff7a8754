"""Faults of a built block store: missing, truncated and altered chunks are found and named, never read as numbers.

A store is built once by the real builder (Dask LocalCluster) from small synthetic captures; each test damages a
copy of it the way a partial copy, a sync or a bad disk would, and runs the real `qw` command in its own process.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import zarr
from zarr.core.sync import sync as zarr_sync
from blocks_helpers import capture_meta, dataset, expected_crop, write_scene_manifest, write_shot
from cli_helpers import one_line_error

from qw.datagen.block_store import CHECKSUMS, IMAGE_ARRAYS, open_store
from qw.datagen.errors import QwError
from qw.datagen.tile import build_store, done_tasks
from qw.training.data import BlockDataset, open_training_store

QW = str(Path(sys.executable).with_name("qw"))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("faults_store")
    captures, manifests = root / "captures", root / "manifests"
    write_scene_manifest(manifests, "gamma", {"a": (16, "train"), "b": (16, "train")}, (64, 48))
    for shot in ("a", "b"):
        write_shot(captures, capture_meta("gamma", shot, 16, 64, 48))
    store = root / "blocks.zarr"
    build_store(dataset({"gamma": 6}), captures, str(store), workers=1, progress=False, manifests_root=manifests)
    return {"store": store, "captures": captures, "manifests": manifests}


@pytest.fixture
def store(built, tmp_path) -> Path:
    """A private copy of the built store, free to damage."""
    return Path(shutil.copytree(built["store"], tmp_path / "blocks.zarr"))


def qw(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([QW, *args], capture_output=True, text=True, timeout=120)


def chunk(store: Path, name: str, index: int) -> Path:
    return store / open_store(str(store), require_complete=False).chunk_key(name, index)


def flip_bytes(path: Path, at: float = 0.5, count: int = 4) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i:i + count] = bytes(b ^ 0xFF for b in data[i:i + count])
    path.write_bytes(bytes(data))


def test_recorded_checksums_are_the_crc32c_of_the_source_crops(built):
    """The writer's checksum of each block equals an independent crc32c of that block's crop of the source frames."""
    s = open_store(str(built["store"]))
    shots, sums = s.attrs["shots"], s.small_array(CHECKSUMS)
    for i, (_, shot, start, y, x) in enumerate(s.origins()):
        for k, name in enumerate(IMAGE_ARRAYS):
            crop = expected_crop(built["captures"] / shots[shot]["path"], name, start, 8, y, x, 32)
            assert int(sums[i, k]) == google_crc32c.value(crop.tobytes()), (i, name)


def test_verify_names_missing_truncated_and_altered_blocks(store):
    ok = qw("datagen", "verify", str(store))
    assert ok.returncode == 0 and "6 blocks × 4 arrays: intact" in ok.stdout, ok.stdout + ok.stderr
    chunk(store, "color", 1).unlink()  # a partial copy
    data = chunk(store, "reference", 2).read_bytes()
    chunk(store, "reference", 2).write_bytes(data[:len(data) // 2])  # an interrupted sync
    flip_bytes(chunk(store, "motion", 3))  # a bad disk
    flip_bytes(chunk(store, "depth", 4), at=0.9, count=1)
    result = qw("datagen", "verify", str(store))
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert any("block 1: color chunk color/c.1.0.0.0.0 is missing" in line for line in lines), lines
    # refused from its header, before c-blosc (which trusts the header's size) reads past the chunk's end
    half = len(data) // 2
    assert any(f"block 2: reference chunk reference/c.2.0.0.0.0 cannot be read (ValueError: Blosc chunk of {half} "
               f"bytes whose header says {len(data)} (truncated or altered))" in line for line in lines), lines
    assert any("block 3: motion chunk" in line and ("altered" in line or "cannot be read" in line)
               for line in lines), lines
    assert any("block 4: depth chunk" in line for line in lines), lines
    assert lines[-1].endswith("4 problem(s)"), lines


def test_inspect_never_reports_a_store_with_a_missing_chunk_complete(store):
    assert "complete: yes" in qw("datagen", "inspect", str(store)).stdout
    chunk(store, "depth", 5).unlink()
    result = qw("datagen", "inspect", str(store))
    assert result.returncode == 0, result.stderr
    assert "complete: NO (1 chunk(s) missing, first: depth block 5; run qw datagen verify" in result.stdout


def test_an_all_zero_block_without_a_chunk_is_not_missing(tmp_path):
    """zarr stores no chunk for a block equal to the fill value; its checksum says that is right."""
    from train_helpers import make_store

    url = make_store(tmp_path / "s.zarr", n_train=2, n_val=1)  # depth is never written: all zero, no chunks
    assert not any((tmp_path / "s.zarr" / "depth").glob("c.*"))
    result = qw("datagen", "verify", url)
    assert result.returncode == 0, result.stdout
    store = open_store(url)
    assert store.read_block(0, ("depth",))["depth"].max() == 0
    assert store.missing_blocks() == {}  # what inspect reports: nothing missing
    (tmp_path / "s.zarr" / "color" / "c.1.0.0.0.0").unlink()
    assert open_store(url).missing_blocks() == {"color": [1]}


@pytest.mark.parametrize("damage, message", [
    ("delete", "is missing"), ("truncate", "cannot be read"), ("flip", r"(is altered|cannot be read)")])
def test_training_reader_fails_naming_the_block(store, damage, message):
    path = chunk(store, "color", 2)
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    else:
        flip_bytes(path)
    data = BlockDataset(str(store), crop=16)
    data[1]  # an intact block still reads
    with pytest.raises(QwError, match=rf"blocks.zarr: block 2: color chunk color/c\.2\.0\.0\.0\.0 {message}"):
        data[2]


def test_training_on_a_store_without_its_colour_chunks_stops_with_one_line(tmp_path):
    """The issue's case: every colour and reference chunk deleted used to train to loss 0.0 and exit 0."""
    import yaml
    from train_helpers import make_store

    url = make_store(tmp_path / "s.zarr", n_train=2, n_val=1)
    for name in ("color", "reference"):
        for path in (tmp_path / "s.zarr" / name).glob("c.*"):
            path.unlink()
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"preset": "paper", "model": {"widths": [8, 12, 16, 20, 24]},
                                      "train": {"steps": 2, "batch_size": 1, "grad_accum": 1, "num_workers": 0,
                                                "val_every": 1000, "val_blocks": 0, "ckpt_every": 1000}}))
    result = qw("-q", "train", "--store", url, "--out", str(tmp_path / "run"), "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "chunk color/c." in result.stderr and "is missing" in result.stderr
    assert not (tmp_path / "run" / "last.pt").exists()


def test_preview_of_a_damaged_chunk_is_one_line(store, tmp_path):
    data = chunk(store, "motion", 0).read_bytes()
    chunk(store, "motion", 0).write_bytes(data[:len(data) // 3])
    out = tmp_path / "p.png"
    result = qw("datagen", "preview", str(store), "--block", "0", "--out", str(out))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "block 0: motion chunk" in result.stderr and not out.exists()


@pytest.mark.parametrize("name", ["jitter", "history_valid", "origin", CHECKSUMS])
def test_a_damaged_per_block_array_is_named(store, name):
    flip_bytes(next((store / name).glob("c.*")), at=0.6)
    result = qw("datagen", "verify", str(store))
    named = rf"array {name!r} (does not match its recorded checksum|cannot be read)"
    assert result.returncode == 1 and re.search(named, result.stdout), result.stdout + result.stderr
    with pytest.raises(QwError, match=named):
        open_store(str(store)).small_array(name)


def test_a_version_1_store_is_still_read_unverified(store, caplog):
    group = zarr.open_group(str(store), mode="r+")
    group.attrs["format"] = "qw-blocks/1"
    del group.attrs["integrity"]
    shutil.rmtree(store / CHECKSUMS)  # version 1 had no checksum table
    s = open_store(str(store))
    assert not s.verified and "records no checksums" in caplog.text
    assert s.read_block(0, ("color",))["color"].dtype == np.float16
    chunk(store, "color", 3).unlink()
    result = qw("datagen", "verify", str(store))
    assert result.returncode == 1 and "block 3: color chunk color/c.3.0.0.0.0 is missing" in result.stdout


def test_a_store_with_nested_chunk_keys_reads_lists_and_verifies(built, tmp_path, monkeypatch):
    """Stores from earlier qw versions have zarr's nested keys (color/c/<block>/0/0/0/0): same blocks, same checks."""
    from qw.datagen import block_store

    monkeypatch.setattr(block_store, "CHUNK_KEY_ENCODING", {"name": "default", "separator": "/"})
    store = tmp_path / "old.zarr"
    build_store(dataset({"gamma": 6}), built["captures"], str(store), workers=1, progress=False,
                manifests_root=built["manifests"])
    old, new = open_store(str(store)), open_store(str(built["store"]))
    assert old.chunk_key("color", 1) == "color/c/1/0/0/0/0" and (store / "color/c/1/0/0/0/0").is_file()
    assert new.chunk_key("color", 1) == "color/c.1.0.0.0.0"
    assert all((old.read_block(i)["color"] == new.read_block(i)["color"]).all() for i in range(6))
    assert old.stored_blocks("motion") == set(range(6))
    (store / "color/c/1/0/0/0/0").unlink()
    assert open_store(str(store)).missing_blocks() == {"color": [1]}
    result = qw("datagen", "verify", str(store))
    assert result.returncode == 1 and "block 1: color chunk color/c/1/0/0/0/0 is missing" in result.stdout


def test_a_complete_version_2_store_without_checksums_is_refused(store):
    group = zarr.open_group(str(store), mode="r+")
    del group.attrs["integrity"]
    with pytest.raises(QwError, match="records no checksums"):
        open_store(str(store))


@pytest.mark.parametrize("edit", ["dtype", "attribute"])
def test_changed_metadata_is_refused(store, edit):
    """A dtype changed in an array's zarr.json reads intact chunks as other numbers; an edited attribute changes
    what blocks mean. Both are covered by the description checksum recorded when the store was sealed."""
    import json

    path = store / ("color/zarr.json" if edit == "dtype" else "zarr.json")
    meta = json.loads(path.read_text())
    if edit == "dtype":
        meta["data_type"] = "int16"
    else:
        meta["attributes"]["block_shape"] = [8, 16, 64]
    path.write_text(json.dumps(meta))
    result = qw("datagen", "verify", str(store))
    assert result.returncode == 2 and "changed after it was written" in result.stderr, result.stderr


def test_an_origin_outside_the_scene_or_shot_table_is_one_line(store):
    """An unverified store (version 1, no checksums) with a damaged origin array crashed inspect and the loader's
    split selection with an IndexError."""
    group = zarr.open_group(str(store), mode="r+")
    group.attrs["format"] = "qw-blocks/1"
    del group.attrs["integrity"]
    shutil.rmtree(store / CHECKSUMS)
    origin = group["origin"][:]
    origin[2, 1] = len(group.attrs["shots"])
    group["origin"][:] = origin
    message = f"block 2's origin names shots row {origin[2, 1]}, but the shots table has {origin[2, 1]} rows"
    with pytest.raises(QwError, match=re.escape(message)):
        open_store(str(store)).split_indices("train")
    result = qw("datagen", "inspect", str(store))
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_the_blosc_header_check_reads_every_store_chunk_and_refuses_a_wrong_size(store):
    """Every chunk the builder writes passes the check (its header's compressed size is its length); a chunk
    longer or shorter than its header says, or shorter than a header, is refused with the reason."""
    from qw.datagen.checked_blosc import blosc_frame_problem

    frames = [p.read_bytes() for name in IMAGE_ARRAYS for p in (store / name).glob("c.*")]
    assert len(frames) == 6 * 4 and all(blosc_frame_problem(f) is None for f in frames)
    assert blosc_frame_problem(frames[0] + b"\0") == (f"Blosc chunk of {len(frames[0]) + 1} bytes whose header says "
                                                      f"{len(frames[0])} (truncated or altered)")
    assert blosc_frame_problem(frames[0][:-1]).startswith(f"Blosc chunk of {len(frames[0]) - 1} bytes")
    assert blosc_frame_problem(frames[0][:15]) == "15 bytes, shorter than a Blosc header"


@pytest.mark.parametrize("name", ["color", "origin"])
def test_an_unreadable_array_zarr_json_is_one_line_naming_it(store, name):
    """An array's zarr.json cut short (an interrupted copy) made zarr raise JSONDecodeError from deep inside, and
    `qw datagen verify` / `inspect` ended in a traceback instead of naming the file."""
    path = store / name / "zarr.json"
    path.write_text(path.read_text()[:300])
    for command in ("verify", "inspect"):
        error = one_line_error(qw("datagen", command, str(store)))
        assert f"array {name!r} has unreadable metadata ({name}/zarr.json: JSONDecodeError" in error, command
    with pytest.raises(QwError, match=f"{name}/zarr.json"):
        open_training_store(str(store))


@pytest.mark.parametrize("name, field, value", [("color", "shape", [-1, 8, 3, 32, 32]),
                                                ("history_valid", "fill_value", [1, 2])])
def test_an_edited_array_zarr_json_is_one_error(store, name, field, value):
    """zarr raises ValueError for a negative shape; a bool array's list fill value zarr accepts, and the
    description digest then raised ValueError: both are damage named as such."""
    path = store / name / "zarr.json"
    meta = json.loads(path.read_text())
    meta[field] = value
    path.write_text(json.dumps(meta))
    with pytest.raises(QwError, match=f"{name}/zarr.json|{name} metadata"):
        open_store(str(store))


def _mark_unfinished(store: Path) -> None:
    """The store as a build interrupted before `seal` leaves it (the build progress markers still tell)."""
    path = store / "zarr.json"
    meta = json.loads(path.read_text())
    meta["attributes"]["complete"] = False
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, message", [
    ("metadata", "array '_tasks' has unreadable metadata (_tasks/zarr.json: JSONDecodeError"),
    ("chunk", "array '_tasks' (the build's progress) cannot be read (RuntimeError: Zstd decompression error")])
def test_damaged_build_progress_of_an_unfinished_store_is_one_line(store, damage, message):
    """inspect and verify of an unfinished store read its build progress markers: a damaged copy of them ended in
    a traceback from zarr's JSON parsing or the Zstd decoder."""
    _mark_unfinished(store)
    if damage == "metadata":
        path = store / "_tasks" / "zarr.json"
        path.write_text(path.read_text()[:100])
    else:
        (store / "_tasks" / "c.0.0").write_bytes(bytes.fromhex("28b52ffd2006310000"))  # a Zstd frame cut short
    for command in ("inspect", "verify"):
        assert message in one_line_error(qw("datagen", command, str(store))), command


def test_a_failed_read_of_the_build_progress_leaves_no_chunk_read_running(store):
    """zarr raises at the first chunk that fails while its reads of the other chunks go on; one still pending at
    exit printed asyncio's traceback after the error line, now and then (seen in CI). Each failed read must
    return only once they have all ended."""
    _mark_unfinished(store)
    (store / "_tasks" / "c.0.0").write_bytes(bytes.fromhex("28b52ffd2006310000"))
    opened = open_store(str(store), require_complete=False)
    assert len(list((store / "_tasks").glob("c.*"))) > 2  # chunks left to read when the first one fails

    async def running() -> int:
        return len(asyncio.all_tasks()) - 1  # all but this one

    for _ in range(20):  # without the wait, 60-70 % of the failed reads left some running
        with pytest.raises(QwError, match="the build's progress"):
            done_tasks(opened)
        assert zarr_sync(running()) == 0


def test_finishing_a_build_whose_task_checksums_are_damaged_is_one_error_and_seals_nothing(built, store):
    """Sealing an unfinished store reads the checksums its tasks recorded: a damaged chunk of them ended the
    resumed build in the Zstd decoder's traceback."""
    _mark_unfinished(store)
    (store / "_task_checksums" / "c.0.0.0").write_bytes(bytes.fromhex("28b52ffd2006310000"))
    with pytest.raises(QwError, match=r"array '_task_checksums' \(the tasks' checksums\) cannot be read "
                                      r"\(RuntimeError: Zstd decompression error"):
        build_store(dataset({"gamma": 6}), built["captures"], str(store), workers=1, progress=False,
                    manifests_root=built["manifests"])
    assert json.loads((store / "zarr.json").read_text())["attributes"]["complete"] is False


def test_resuming_a_build_whose_array_metadata_is_damaged_is_one_error(built, store):
    """The resume check reads every array's shape: a cut-short zarr.json ended `qw datagen build` in a traceback."""
    _mark_unfinished(store)
    path = store / "color" / "zarr.json"
    path.write_text(path.read_text()[:200])
    with pytest.raises(QwError, match=r"array 'color' has unreadable metadata \(color/zarr.json: JSONDecodeError"):
        build_store(dataset({"gamma": 6}), built["captures"], str(store), workers=1, progress=False,
                    manifests_root=built["manifests"])
