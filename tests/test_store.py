"""The `qw-blocks` contract itself: creation, format checks, completeness, reader API, recorded codec."""

from __future__ import annotations

import copy
import numpy as np
import pytest
import zarr

from qw.datagen.block_store import ARRAYS, FORMAT, IMAGE_ARRAYS, create_store, open_store, seal, synthetic_attrs
from qw.datagen.errors import QwError

ATTRS = synthetic_attrs([("a", "s1", "train"), ("a", "s2", "val")])


def small_store(path, n=3, complete=True, inner_chunk=None):
    group = create_store(str(path), n, ATTRS, t=4, tile=16, inner_chunk=inner_chunk)
    rng = np.random.default_rng(0)
    for i in range(n):
        for name in IMAGE_ARRAYS:
            group[name][i] = rng.normal(0, 100, group[name].shape[1:]).astype(np.float16)
    group["origin"][:] = [[0, i % 2, 8 * i, 1, 2] for i in range(n)]
    if complete:
        seal(group)
    return group


def test_arrays_shapes_chunks_and_recorded_codec(tmp_path):
    group = small_store(tmp_path / "s.zarr")
    assert group.attrs["format"] == FORMAT and group.attrs["block_shape"] == [4, 16, 16]
    # the contract's table (block_store docstring) for 3 blocks of 4 frames × 16×16
    contract = {"color": (3, 4, 3, 16, 16), "reference": (3, 4, 3, 16, 16), "motion": (3, 4, 2, 16, 16),
                "depth": (3, 4, 1, 16, 16), "jitter": (3, 4, 2), "origin": (3, 5), "history_valid": (3, 4),
                "checksum": (3, 4)}
    assert sorted(ARRAYS) == sorted(contract)
    for name, spec in ARRAYS.items():
        a = group[name]
        assert a.dtype == np.dtype(spec.dtype)
        assert a.shape == spec.shape(3, 4, 16) == contract[name]
        if spec.channels:
            assert a.chunks == (1, 4, spec.channels, 16, 16)  # one block per chunk
    # the recorded codec is the configuration the float16 chunks are written with (typesize 2, not 1)
    written = group["color"].metadata.codecs[-1].to_dict()
    assert group.attrs["codec"] == written and written["configuration"]["typesize"] == 2


def test_contracts_doc_lists_every_array_with_its_shape_and_dtype():
    """docs/contracts.md's table of contract 2 is the user's copy of ARRAYS (for T=8, 256² tiles)."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "contracts.md").read_text()
    assert f"## Contract 2: the block store (`{FORMAT}`" in doc
    for name, spec in ARRAYS.items():
        shape = ", ".join(map(str, ("N",) + spec.shape(1, 8, 256)[1:]))
        assert f"| `{name}` | ({shape}) | {spec.dtype} |" in doc, name


def test_reader_returns_stored_float16_and_splits(tmp_path):
    group = small_store(tmp_path / "s.zarr")
    store = open_store(str(tmp_path / "s.zarr"))
    block = store.read_block(1, ("color", "motion", "depth"))
    assert block["color"].dtype == np.float16 and block["color"].shape == (4, 3, 16, 16)
    np.testing.assert_array_equal(block["motion"].view(np.uint16), group["motion"][1].view(np.uint16))
    assert store.split_indices("train").tolist() == [0, 2] and store.split_indices("val").tolist() == [1]
    assert store.split_indices("test").tolist() == []
    with pytest.raises(QwError, match="unknown split 'tarin'; splits are train, val, test"):
        store.split_indices("tarin")  # not an empty selection
    with pytest.raises(QwError, match="no array 'velocity'"):
        store.array("velocity")
    assert open_store(tmp_path / "s.zarr").url == str(tmp_path / "s.zarr")  # a Path, as users write it


def test_incomplete_store_refused_unless_asked(tmp_path):
    small_store(tmp_path / "s.zarr", complete=False)
    with pytest.raises(QwError, match="incomplete.*qw datagen build"):
        open_store(str(tmp_path / "s.zarr"))
    assert not open_store(str(tmp_path / "s.zarr"), require_complete=False).complete


@pytest.mark.parametrize("attrs, message", [
    ({"format": "other/1"}, "not a qw block store"),
    ({"format": "qw-blocks/9"}, "newer than this qw reads"),
    ({"format": FORMAT}, "attributes missing"),
])
def test_foreign_or_newer_or_broken_stores(tmp_path, attrs, message):
    zarr.open_group(str(tmp_path / "x.zarr"), mode="w", attributes=attrs)
    with pytest.raises(QwError, match=message):
        open_store(str(tmp_path / "x.zarr"))


def _broken(attrs: dict, change: str) -> None:
    """Break one attribute the way a hand edit or a careless writer would."""
    if change == "scenes of names":
        attrs["scenes"] = ["a"]
    elif change == "shot without split":
        del attrs["shots"][1]["split"]
    elif change == "unknown split":
        attrs["shots"][0]["split"] = "training"
    elif change == "block_shape of two":
        attrs["block_shape"] = [4, 16]
    elif change == "block_shape of strings":
        attrs["block_shape"] = ["4", 16, 16]
    elif change == "codec name only":
        attrs["codec"] = "blosc"
    elif change == "null dataset":
        attrs["dataset"] = None


@pytest.mark.parametrize("change, where", [
    ("scenes of names", "scenes[0]"), ("shot without split", "shots[1].split"), ("unknown split", "shots[0].split"),
    ("block_shape of two", "block_shape"), ("block_shape of strings", "block_shape[0]"), ("codec name only", "codec"),
    ("null dataset", "dataset"),
])
def test_attributes_of_the_wrong_structure_are_refused_in_one_line(tmp_path, change, where):
    """Readers index the tables (`inspect`: scenes[i]["name"], `split_indices`: shots[i]["split"]): a store whose
    attributes lack that structure is refused when opened, naming the attribute, not a TypeError in a reader."""
    from qw.datagen.inspect_store import inspect_data

    url = str(tmp_path / "s.zarr")
    attrs = copy.deepcopy(dict(small_store(url).attrs))  # the tables are shared with ATTRS
    _broken(attrs, change)
    zarr.open_group(url, mode="r+").attrs.put(attrs)
    for read in (lambda: open_store(url, require_complete=False), lambda: inspect_data(url)):
        with pytest.raises(QwError) as error:
            read()
        assert str(error.value).startswith(f"{url}: block store attribute {where} is malformed (")
        assert "\n" not in str(error.value)


def test_a_synthetic_store_has_the_builder_attribute_structure(tmp_path):
    """`synthetic_attrs` (the stores of tests and benchmarks) gives what the readers index: inspect reads it."""
    from qw.datagen.inspect_store import inspect_data

    small_store(tmp_path / "s.zarr")
    data = inspect_data(str(tmp_path / "s.zarr"))
    assert data["blocks_per_scene"] == {"a": 3} and data["blocks_per_split"] == {"train": 2, "val": 1}
    assert data["blocks_per_shot"] == {"a/s1 (train)": 2, "a/s2 (val)": 1} and len(data["sources"]) == 2
    store = open_store(str(tmp_path / "s.zarr"))
    assert store.split_indices("train").tolist() == [0, 2] and store.split_indices("val").tolist() == [1]


def test_inspect_tables_keep_counts_in_one_column_for_long_names():
    from qw.datagen.inspect_store import _counts_table

    lines = _counts_table("blocks per shot", {"builtin_specular/close_cut (train)": 7, "a/s1 (val)": 12345})
    assert len({len(line) for line in lines[1:]}) == 1 and all(line.endswith((" 7", " 12345")) for line in lines[1:])


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(QwError, match="not a qw block store"):
        open_store(str(tmp_path / "nothing.zarr"))


# ----------------------------------------------------------------------------------------------- sharded layout


def test_sharded_layout_one_file_per_block_and_inner_chunks(tmp_path):
    group = small_store(tmp_path / "s.zarr", inner_chunk=8)
    for name in IMAGE_ARRAYS:
        a = group[name]
        assert a.shards == (1, 4, ARRAYS[name].channels, 16, 16) and a.chunks == (1, 4, ARRAYS[name].channels, 8, 8)
    assert sorted(p.name for p in (tmp_path / "s.zarr" / "color").iterdir()) == \
        ["c.0.0.0.0.0", "c.1.0.0.0.0", "c.2.0.0.0.0", "zarr.json"]  # one shard (file) per block, flat keys
    with pytest.raises(QwError, match="inner chunk 5 must divide the tile size 16"):
        small_store(tmp_path / "bad.zarr", inner_chunk=5)


@pytest.mark.parametrize("inner_chunk", [None, 8])
def test_a_window_read_equals_the_window_of_the_whole_block(tmp_path, inner_chunk):
    group = small_store(tmp_path / "s.zarr", inner_chunk=inner_chunk)
    store = open_store(str(tmp_path / "s.zarr"))
    for y, x, size in [(0, 0, 16), (3, 5, 8), (8, 8, 8), (1, 0, 15)]:
        window = store.read_block(2, IMAGE_ARRAYS, window=(y, x, size))
        for name in IMAGE_ARRAYS:
            expected = group[name][2][..., y:y + size, x:x + size]
            np.testing.assert_array_equal(window[name].view(np.uint16), expected.view(np.uint16))


@pytest.mark.parametrize("inner_chunk", [None, 8])
def test_a_window_outside_the_tile_is_refused(tmp_path, inner_chunk):
    """A window past the tile's edge, at a negative offset or of size 0 returned a smaller or empty image."""
    small_store(tmp_path / "s.zarr", inner_chunk=inner_chunk)
    store = open_store(str(tmp_path / "s.zarr"))
    for y, x, size in [(10, 0, 8), (0, 9, 8), (-4, 0, 8), (0, -1, 8), (0, 0, 0), (0, 0, 17)]:
        with pytest.raises(QwError, match=rf"window \(y={y}, x={x}, size={size}\) is not a square inside the "
                                          r"store's 16x16 tiles"):
            store.read_block(0, ("color", "motion"), window=(y, x, size))
    assert store.read_block(0, ("color",), window=(8, 8, 8))["color"].shape[-2:] == (8, 8)


def damage(path, at=0.3):
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_inner_chunk_fails_a_window_read_that_touches_it_and_only_that(tmp_path):
    small_store(tmp_path / "s.zarr", inner_chunk=8)
    damage(tmp_path / "s.zarr" / "color" / "c.1.0.0.0.0", at=0.05)  # inside the first inner chunk (0, 0)
    store = open_store(str(tmp_path / "s.zarr"))
    with pytest.raises(QwError, match=r"block 1: color chunk color/c\.1\.0\.0\.0\.0 cannot be read .*checksum"):
        store.read_block(1, ("color",), window=(0, 0, 8))
    store.read_block(1, ("color",), window=(8, 8, 8))  # the other inner chunks are intact and checked
    with pytest.raises(QwError, match="block 1: color chunk"):
        store.read_block(1, ("color",))  # a whole read decodes every inner chunk


def test_a_missing_shard_is_never_read_as_zeros(tmp_path):
    small_store(tmp_path / "s.zarr", inner_chunk=8)
    (tmp_path / "s.zarr" / "motion" / "c.0.0.0.0.0").unlink()
    store = open_store(str(tmp_path / "s.zarr"))
    with pytest.raises(QwError, match=r"block 0: motion chunk motion/c\.0\.0\.0\.0\.0 is missing"):
        store.read_block(0, ("motion",), window=(4, 4, 8))
    with pytest.raises(QwError, match="block 0: motion chunk .* is missing"):
        store.read_block(0, ("motion",))


def test_an_all_zero_block_reads_as_zeros_in_both_layouts(tmp_path):
    for inner in (None, 8):
        group = small_store(tmp_path / f"s{inner}.zarr", complete=False, inner_chunk=inner)
        group["motion"][1] = np.zeros(group["motion"].shape[1:], np.float16)  # no chunk is stored for it
        seal(group)
        store = open_store(str(tmp_path / f"s{inner}.zarr"))
        assert not store.read_block(1, ("motion",), window=(2, 2, 8))["motion"].any()
        assert store.missing_blocks() == {}


def test_benchmark_synthetic_store_stores_every_image_array(tmp_path):
    """benchmarks/bench_train.py's synthetic store (read by bench_loader and bench_verify) has a chunk of every image
    array: an array left unwritten reads as zeros, so a verify timed on it would skip decoding that array."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_train", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    store = open_store(bench.synthetic_store(tmp_path / "s.zarr", 1))
    assert {name: store.stored_blocks(name) for name in IMAGE_ARRAYS} == {name: {0} for name in IMAGE_ARRAYS}
