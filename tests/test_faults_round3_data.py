"""Data-side faults that used to pass silently or end in a traceback: checks that one edited attribute switched off,
a damaged checksum table reported complete, duplicated dataset entries, oversized budgets, hostile capture options
and concurrent builds. Every `qw` command runs as a real process; stores are built by the real builder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import zarr
from blocks_helpers import capture_meta, dataset, write_dataset, write_scene_manifest, write_shot
from cli_helpers import one_line_error
from test_faults_store import built, chunk, flip_bytes, qw, store  # noqa: F401  (fixtures and helpers)

from datagen.block_store import CHECKSUMS, open_store
from datagen.errors import QwError

# ----------------------------------------------------------------------------------------------- integrity


def _set_attribute(store: Path, key: str, value) -> None:
    path = store / "zarr.json"
    meta = json.loads(path.read_text())
    meta["attributes"][key] = value
    path.write_text(json.dumps(meta))


def test_a_store_that_carries_checksums_is_checked_whatever_its_format_says(store):
    """Editing `format` to qw-blocks/1 used to switch every check off: a damaged store read as intact."""
    flip_bytes(chunk(store, "color", 2))
    _set_attribute(store, "format", "qw-blocks/1")
    for command in (("verify", str(store)), ("inspect", str(store)),
                    ("preview", str(store), "--block", "2", "--out", str(store.parent / "p.png"))):
        result = qw("datagen", *command)
        assert "intact" not in result.stdout and "complete: yes" not in result.stdout, (command, result.stdout)
        assert result.returncode == 2 and "changed after it was written" in one_line_error(result), command
    assert not (store.parent / "p.png").exists()


def test_a_real_version_1_store_without_checksums_still_reads(store):
    group = zarr.open_group(str(store), mode="r+")
    group.attrs["format"] = "qw-blocks/1"
    del group.attrs["integrity"]
    shutil.rmtree(store / CHECKSUMS)  # a version 1 store has no checksum table
    s = open_store(str(store))
    assert not s.verified and s.read_block(0, ("color",))["color"].shape == (8, 3, 32, 32)
    result = qw("datagen", "verify", str(store))
    assert result.returncode == 0 and "records no checksums" in result.stdout, result.stdout + result.stderr


def test_a_version_1_label_with_a_checksum_table_but_no_record_is_refused(store):
    group = zarr.open_group(str(store), mode="r+")
    group.attrs["format"] = "qw-blocks/1"
    del group.attrs["integrity"]  # the table is still there: the record was removed, not absent by design
    with pytest.raises(QwError, match="records no checksums"):
        open_store(str(store))


@pytest.mark.parametrize("value", [None, "crc32c", {"algorithm": "crc32c"}, {"arrays": [], "descriptions": {}}])
def test_an_integrity_attribute_that_is_not_a_record_is_one_line(store, value):
    _set_attribute(store, "integrity", value)
    for command in ("verify", "inspect"):
        stderr = one_line_error(qw("datagen", command, str(store)))
        assert "integrity attribute is not a checksum record" in stderr, stderr


def test_inspect_does_not_call_a_store_complete_when_its_checksum_table_lost_a_chunk(store):
    next((store / CHECKSUMS).glob("c.*")).unlink()
    result = qw("datagen", "inspect", str(store))
    assert result.returncode == 0, result.stderr
    assert "complete: NO (" in result.stdout and "array 'checksum' does not match its recorded checksum" \
        in result.stdout, result.stdout
    assert qw("datagen", "verify", str(store)).returncode == 1


# ----------------------------------------------------------------------------------------------- budgets


def test_a_scene_listed_twice_in_a_dataset_manifest_is_refused_naming_both(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("name: twice\ntotal_blocks: 6\nscenes:\n  - {scene: builtin_fence, budget: 3}\n"
                    "  - {scene: Builtin Fence, budget: 3}\n")
    stderr = one_line_error(qw("datagen", "plan", "--dataset", str(path), "--captures", str(tmp_path)))
    assert str(path) in stderr and "scene 'builtin_fence' is listed more than once" in stderr, stderr


def _infos(frames: int, width: int, height: int):
    from datagen.plan import CaptureInfo

    return [CaptureInfo("a/s1", capture_meta("a", "s1", frames, width, height), "sha", "train")]


def test_a_budget_past_the_distinct_blocks_of_a_scene_is_refused():
    from datagen.plan import make_plan

    # 24 frames = 3 windows of 8; a 40×36 frame holds 9×5 = 45 positions of a 32-pixel tile: 135 distinct blocks
    assert make_plan(dataset({"a": 135}), _infos(24, 40, 36)).num_blocks == 135
    with pytest.raises(QwError, match=r"budget 136 is more than the 135 distinct blocks .*3 window\(s\) of 8 frames"):
        make_plan(dataset({"a": 136}), _infos(24, 40, 36))
    with pytest.raises(QwError, match="budget 100000 is more than the 135 distinct"):
        make_plan(dataset({"a": 100000}), _infos(24, 40, 36))
    # with 4 candidates per block, each block needs 4 distinct positions: 3 × ⌊45 / 4⌋ = 33
    with pytest.raises(QwError, match=r"budget 34 is more than the 33 distinct .*4 candidate"):
        make_plan(dataset({"a": 34}, candidates=4), _infos(24, 40, 36))


def test_a_budget_whose_blocks_must_overlap_is_warned_with_the_counts(caplog):
    from datagen.plan import make_plan

    # 96×64 frames hold 3×2 = 6 disjoint 32-pixel tiles per window, 18 over 3 windows
    make_plan(dataset({"a": 18}), _infos(24, 96, 64))
    assert "overlap" not in caplog.text
    plan = make_plan(dataset({"a": 100}), _infos(24, 96, 64))
    assert "budget 100 is more than the 18 blocks that share no pixel" in caplog.text, caplog.text
    positions = [(t.start, *p) for t in plan.tasks for p in t.positions[:, 0].tolist()]
    assert len(set(positions)) == 100  # overlapping, never repeated
