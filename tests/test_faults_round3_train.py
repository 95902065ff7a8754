"""Hostile inputs to the model side (train, quantize, eval, infer, export, model-stats): each gives one line naming
the file and the problem, exit 2, and leaves nothing half-written."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from cli_helpers import one_line_error
from test_train import write_config
from train_helpers import make_store

from qw.cli import main
from qw.datagen.capture_format import PASSES, frame_path, read_exr, write_exr
from qw.datagen.errors import QwError
from qw.training.export import qwq
from qw.training.train import checkpoints
from qw.training.config import Config, ModelConfig
from qw.training.data import check_batch_fits
from qw.training.quantization.fake_quant import QUANT_PRESETS, quantize_model
from qw.training.model.qwnet import QWNet

REPO = Path(__file__).resolve().parents[1]
SMALL = ModelConfig(widths=[8, 12, 16, 20, 24], decoder_convs=[1, 1, 1, 1])


def qw(*args: str):
    return CliRunner().invoke(main, ["-q", *args])


def one_line(result, code: int = 2) -> str:
    """The output of an in-process `qw` run that must fail as a user error: `code`, one line, no traceback."""
    assert result.exit_code == code, result.output + repr(result.exception)
    assert result.output.count("\n") == 1 and "Traceback" not in result.output, result.output
    return result.output


# ------------------------------------------------------------------------------------------------ .qwq values


@pytest.fixture(scope="module")
def qwq_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("qwq") / "m.qwq"
    qwq.write_qwq(path, qwq.exported_model(quantize_model(QWNet(SMALL).eval(), QUANT_PRESETS["w4a4"]),
                                           Config(model=SMALL)))
    return path


def resigned(src: Path, dst: Path, edit) -> Path:
    """`src` with `edit(header, data)` applied and the trailer recomputed: values a buggy or hostile writer could
    produce in a file whose checksums are consistent (the data's SHA-256 too, unless `edit` sets it)."""
    raw = src.read_bytes()[:-32]
    _, version, n = qwq._PREFIX.unpack_from(raw)
    header = json.loads(raw[qwq._PREFIX.size:qwq._PREFIX.size + n])
    start = qwq._PREFIX.size + n
    data = bytearray(raw[start + -start % qwq.ALIGN:])
    declared = header["data_sha256"]
    edit(header, data)
    if header.get("data_sha256") == declared:
        header["data_sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    text = json.dumps(header).encode()
    prefix = qwq._PREFIX.pack(qwq.MAGIC, version, len(text))
    body = prefix + text + b"\0" * (-(len(prefix) + len(text)) % qwq.ALIGN) + bytes(data)
    dst.write_bytes(body + hashlib.sha256(body).digest())
    return dst


def _activation(header, name="encoder0_0"):
    return next(a for a in header["activations"] if a["name"] == name)


def _layer(header, name="extractor.encoder.1.0.conv"):
    return next(layer for layer in header["layers"] if layer["name"] == name)


def _put_float(data: bytearray, ref: dict, value: float, index: int = 0) -> None:
    struct.pack_into("<f", data, ref["offset"] + 4 * index, value)


def _add_float_tensor(header: dict, data: bytearray, name: str, values: list[float]) -> None:
    data.extend(struct.pack(f"<{len(values)}f", *values))
    header["float_tensors"][name] = {"dtype": "float32", "shape": [len(values)], "offset": len(data) - 4 * len(values),
                                     "nbytes": 4 * len(values)}
    header["data_bytes"] = len(data)


def _set(record: dict, key: str, value):
    record[key] = value


HOSTILE_QWQ = {
    "zero point above the bit range": (lambda h, d: _set(_activation(h), "zero_point", 99),
                                       "tensor encoder0_0: zero point 99 outside 0..15 of 4 bits"),
    "zero point one past the range": (lambda h, d: _set(_activation(h), "zero_point", 16), "zero point 16 outside"),
    "negative zero point": (lambda h, d: _set(_activation(h), "zero_point", -1), "zero point -1 outside"),
    "16-bit input to 4-bit weights": (lambda h, d: _set(_activation(h), "bits", 16),
                                      "4-bit weights read a 16-bit input"),
    "weight code -8 of a symmetric 4-bit plan": (lambda h, d: d.__setitem__(_layer(h)["weight"]["offset"], 0x88),
                                                 "weight codes outside -7..7 of 4 bits"),
    "negative padding": (lambda h, d: _set(_layer(h), "padding", -1), "padding -1"),
    "2-bit activations": (lambda h, d: _set(_activation(h), "bits", 2), "2-bit activations"),
    "2-bit weights": (lambda h, d: _set(_layer(h), "weight_bits", 2), "2-bit weights"),
    "8-bit weights stored as int4": (lambda h, d: _set(_layer(h), "weight_bits", 8), "8-bit weights stored as int4"),
    "negative scale": (lambda h, d: _put_float(d, _activation(h)["scale"], -0.1), "scale [-0.1"),
    "zero scale": (lambda h, d: _put_float(d, _activation(h)["scale"], 0.0), "scale [0.0]"),
    "NaN scale": (lambda h, d: _put_float(d, _activation(h)["scale"], float("nan")), "scale [nan]"),
    "infinite scale": (lambda h, d: _put_float(d, _activation(h)["scale"], float("inf")), "scale [inf]"),
    "NaN lower bound": (lambda h, d: _set(_activation(h), "lower", float("nan")), "lower bound nan"),
    "positive lower bound": (lambda h, d: _set(_activation(h), "lower", 0.5), "lower bound 0.5"),
    "negative weight scale": (lambda h, d: _put_float(d, _layer(h)["weight_scale"], -1.0, 3),
                              "extractor.encoder.1.0.conv: weight scales must be finite and > 0"),
    "NaN bias": (lambda h, d: _put_float(d, _layer(h)["bias"], float("nan")), "non-finite bias"),
    "NaN float tensor": (lambda h, d: _add_float_tensor(h, d, "extra", [float("nan"), 0, 0, 0]),
                         "tensor extra: non-finite values"),
    "offset past the end": (lambda h, d: _set(_layer(h)["bias"], "offset", len(d) + 64),
                            "extractor.encoder.1.0.conv.bias: bytes"),
    "tensor running past the end": (lambda h, d: _set(_layer(h)["bias"], "offset", len(d) - 8),
                                    "extractor.encoder.1.0.conv.bias: bytes"),
    "size that does not fit the shape": (lambda h, d: _set(_layer(h)["bias"], "nbytes", 4),
                                         "extractor.encoder.1.0.conv.bias: 4 bytes for float32"),
    "unknown dtype": (lambda h, d: _set(_layer(h)["weight"], "dtype", "int2"), "unknown dtype 'int2'"),
    "input that is not defined": (lambda h, d: _set(_layer(h), "input", "nowhere"), "reads activation 'nowhere'"),
    "data checksum that does not match": (lambda h, d: _set(h, "data_sha256", "0" * 64),
                                          "data section is truncated or corrupt (size or SHA-256 mismatch)"),
    "missing field": (lambda h, d: h.pop("layers"), "damaged header (KeyError"),
    "bit widths in the config": (lambda h, d: _set(h["config"]["quant"], "extractor_weight_bits", -3),
                                 "invalid config: quant.extractor_weight_bits: Input should be 4, 8, 16 or 32"),
}


def test_an_untouched_resigned_qwq_still_loads(qwq_file: Path, tmp_path: Path) -> None:
    """The checks refuse the edits above, not the re-signing itself."""
    model = qwq.read_qwq(resigned(qwq_file, tmp_path / "same.qwq", lambda h, d: None))
    assert len(model.layers) == len(qwq.read_qwq(qwq_file).layers)


LAYERS_THAT_DO_NOT_FIT = {
    "name of no conv": (lambda h, d: _set(_layer(h), "name", "extractor.encoder.9.0.conv"),
                        "tensor extractor.encoder.9.0.conv: not a conv of the network"),
    "name of a non-conv module": (lambda h, d: _set(_layer(h), "name", "filter"), "tensor filter: not a conv"),
    "one conv named twice": (lambda h, d: h["layers"].append(_layer(h)),
                             "tensor extractor.encoder.1.0.conv: not a conv of the network its config describes "
                             "(or named twice)"),
    "kernel shape": (lambda h, d: _set(_layer(h)["weight"], "shape", [12, 8, 9, 1]),
                     "weights [12, 8, 9, 1] with padding 1 do not fit the network's conv [12, 8, 3, 3]"),
    "widths in the config": (lambda h, d: _set(h["config"]["model"], "widths", [8, 12, 16, 20, 32]),
                             "tensor extractor.encoder.4.0.conv: weights [24, 20, 3, 3]"),
    "padding": (lambda h, d: _set(_layer(h), "padding", 0), "with padding 0 do not fit"),
    "padding true": (lambda h, d: _set(_layer(h), "padding", True), "padding True (must be an integer >= 0)"),
}


@pytest.mark.parametrize("case", [*HOSTILE_QWQ, *LAYERS_THAT_DO_NOT_FIT])
def test_hostile_qwq_is_refused_on_load_naming_file_and_tensor(qwq_file: Path, tmp_path: Path, case: str) -> None:
    """Values out of range (`read_qwq`'s checks) and layers that do not fit the network its config describes
    (`rebuild_network`'s), each refused in one QwError naming the file, never a traceback mid-inference."""
    from qw.training.export.integer_ref import load_integer_model

    edit, message = {**HOSTILE_QWQ, **LAYERS_THAT_DO_NOT_FIT}[case]
    bad = resigned(qwq_file, tmp_path / "bad.qwq", edit)
    with pytest.raises(QwError) as err:
        load_integer_model(bad)
    assert str(err.value).startswith(f"{bad}: ") and message in str(err.value), str(err.value)


def test_qw_eval_of_a_hostile_qwq_is_one_line(qwq_file: Path, tmp_path: Path, builtin_captures: Path) -> None:
    bad = resigned(qwq_file, tmp_path / "bad.qwq", HOSTILE_QWQ["zero point above the bit range"][0])
    shot = builtin_captures / "builtin_fence" / "rise"
    out = one_line(qw("eval", "--qwq", str(bad), "--captures", str(shot), "--out", str(tmp_path / "report"),
                      "--frames", "1", "--baseline", "none"))
    assert f"{bad}: tensor encoder0_0: zero point 99" in out


# ------------------------------------------------------------------------------------------------ bit widths


@pytest.mark.parametrize("bits", [0, -3, 2, 12, 99])
def test_unsupported_bit_widths_fail_config_validation(tmp_path: Path, bits: int) -> None:
    config = tmp_path / "bits.yaml"
    config.write_text(yaml.safe_dump({"preset": "paper", "quant": {"extractor_weight_bits": bits}}))
    out = one_line(qw("model-stats", "--summary", "--config", str(config)))
    assert f"quant.extractor_weight_bits: Input should be 4, 8, 16 or 32 (got {bits})" in out


def test_supported_bit_widths_pass_and_show_in_model_stats(tmp_path: Path) -> None:
    config = tmp_path / "bits.yaml"
    config.write_text(yaml.safe_dump({"preset": "paper", "quant": {"extractor_weight_bits": 8,
                                                                   "extractor_act_bits": 8}}))
    result = qw("model-stats", "--summary", "--config", str(config))
    assert result.exit_code == 0 and "share of MACs by precision: 8-bit 99.9%" in result.output, result.output


# ------------------------------------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return make_store(tmp_path_factory.mktemp("r3") / "blocks.zarr", n_train=4, n_val=1, t=4, tile=32)


def full_disk_on_call(monkeypatch, failing_call: int) -> None:
    """torch.save in the trainer writes into /dev/full from its `failing_call`-th call on: the kernel's own ENOSPC."""
    real_save, calls = torch.save, []

    def save(obj, file):
        calls.append(1)
        if len(calls) < failing_call:
            return real_save(obj, file)
        with open("/dev/full", "wb") as full:
            real_save(obj, full)

    monkeypatch.setattr(checkpoints.torch, "save", save)


def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_temporary_file(store: str, tmp_path: Path,
                                                                                   monkeypatch) -> None:
    run = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", {"train": {"steps": 2, "ckpt_every": 1, "batch_size": 2,
                                                          "grad_accum": 1, "val_blocks": 0}})
    full_disk_on_call(monkeypatch, failing_call=2)
    out = one_line(qw("train", "--store", store, "--out", str(run), "--config", str(config)))
    assert f"{run / 'step-00000002.pt'}: cannot write (No space left on device)" in out
    assert sorted(p.name for p in run.glob("*.pt*")) == ["last.pt", "step-00000001.pt"]  # nothing else
    assert not list(run.glob(".*tmp")) and not list(run.glob("*.tmp"))
    monkeypatch.undo()
    assert checkpoints.load_checkpoint(run / "last.pt")["step"] == 1  # the previous checkpoint is intact


def test_a_full_disk_while_publishing_best_or_last_leaves_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    source = tmp_path / "step-00000001.pt"
    source.write_bytes(b"x" * 100)

    def no_links(*_):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def full_copy(_src, dst):
        Path(dst).write_bytes(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.os, "link", no_links)
    monkeypatch.setattr(checkpoints.shutil, "copyfile", full_copy)
    with pytest.raises(QwError, match="best.pt: cannot write"):
        checkpoints.publish(source, tmp_path / "best.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001.pt"]


def test_checkpoint_writes_still_replace_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    for step in (1, 2):
        checkpoints.save_checkpoint(path, {"step": step})
    assert torch.load(path)["step"] == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.fixture(scope="module")
def odd_shot(tmp_path_factory) -> Path:
    """A real builtin capture at an odd size (67×37), 3 frames, 1 sample reference (the pixels do not matter)."""
    from qw.capture import capture_scene

    root = tmp_path_factory.mktemp("odd")
    return capture_scene("builtin_fence", root, shots=["rise"], frames=(0, 3), resolution=(67, 37), reference_spp=1,
                         progress=False)[0]


def test_files_that_are_not_checkpoints_are_one_line_each(tiny_checkpoints, qwq_file: Path, odd_shot: Path,
                                                          store: str, tmp_path: Path) -> None:
    fp, _ = tiny_checkpoints
    random = tmp_path / "random.pt"
    random.write_bytes(np.random.default_rng(0).bytes(5000))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(fp.read_bytes()[:30000])
    for checkpoint, message in ((random, "not a qw checkpoint"),
                                (qwq_file, "an exported integer model (.qwq), not a checkpoint; `qw eval --qwq"),
                                (truncated, "a damaged or truncated checkpoint")):
        for command in (["infer", "--input", str(odd_shot), "--out", str(tmp_path / "o")],
                        ["export", "--out", str(tmp_path / "m.qwq")],
                        ["quantize", "--store", store, "--out", str(tmp_path / "q")]):
            out = one_line(qw(command[0], "--checkpoint", str(checkpoint), *command[1:]))
            assert out.startswith(f"qw: error: {checkpoint}: {message}") and "weights_only" not in out, out
    assert not (tmp_path / "o").exists() and not (tmp_path / "q").exists() and not (tmp_path / "m.qwq").exists()


def test_infer_refuses_a_block_store_or_a_captures_root_as_its_input(tiny_checkpoints, store: str, odd_shot: Path,
                                                                     tmp_path: Path) -> None:
    fp, _ = tiny_checkpoints
    out = one_line(qw("infer", "--checkpoint", str(fp), "--input", store, "--out", str(tmp_path / "o")))
    assert f"{store}: a block store (training data); qw infer takes a captured shot folder" in out
    root = odd_shot.parents[1]
    out = one_line(qw("infer", "--checkpoint", str(fp), "--input", str(root), "--out", str(tmp_path / "o")))
    assert f"{root}: a captures folder (1 shot); qw infer takes one shot, e.g. --input {odd_shot}" in out
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------ batch size


def test_a_batch_the_store_cannot_fill_is_refused_at_once(store: str, tmp_path: Path) -> None:
    """In a subprocess with a deadline and a memory cap: before the check, the loader grew without limit."""
    config = write_config(tmp_path / "c.yaml")
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
            "from qw.cli import main; sys.argv = ['qw'] + sys.argv[1:]; main()")
    result = subprocess.run([sys.executable, "-c", code, "-q", "train", "--store", store, "--out",
                             str(tmp_path / "run"), "--config", str(config), "--set", "train.batch_size=100000000"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    one_line_error_text = one_line_error(result)
    assert "train.batch_size 100000000 is more than the store's 4 'train' blocks can fill" in one_line_error_text
    assert not (tmp_path / "run").exists()


def test_a_crop_larger_than_the_tiles_is_refused_before_anything_is_written(store: str, tmp_path: Path) -> None:
    """The first batch found it, after the run had written config.yaml into --out."""
    config = write_config(tmp_path / "c.yaml")
    for workers in ("0", "1"):
        out = one_line(qw("train", "--store", store, "--out", str(tmp_path / "run"), "--config", str(config),
                          "--set", "train.crop=64", "--set", f"train.num_workers={workers}"))
        assert out == f"qw: error: {store}: crop 64 is larger than the store's 32x32 tiles\n"
        assert not (tmp_path / "run").exists()


def test_batch_fit_is_per_process_share() -> None:
    check_batch_fits("s.zarr", 8, 8)
    check_batch_fits("s.zarr", 8, 4, world_size=2)
    with pytest.raises(QwError, match=r"batch_size 5 is more than the store's 8 'train' blocks \(4 per process"):
        check_batch_fits("s.zarr", 8, 5, world_size=2)
    with pytest.raises(QwError, match="batch_size 9 is more than"):
        check_batch_fits("s.zarr", 8, 9)


# ------------------------------------------------------------------------------------------------ infer outputs


@pytest.mark.parametrize("fmt, video", [("mp4", "output.mp4"), ("exr", "preview.mp4")])
def test_infer_writes_video_at_odd_frame_sizes(tiny_checkpoints, odd_shot: Path, tmp_path: Path, fmt: str,
                                               video: str) -> None:
    fp, _ = tiny_checkpoints
    out = tmp_path / fmt
    result = qw("infer", "--checkpoint", str(fp), "--input", str(odd_shot), "--out", str(out), "--format", fmt)
    assert result.exit_code == 0, result.output + repr(result.exception)
    frames = imageio.mimread(out / video)
    assert len(frames) == 3 and frames[0].shape == (38, 68, 3)  # one repeated row and column for 4:2:0
    last_row, padding_row = frames[1][36].astype(int), frames[1][37].astype(int)
    assert np.abs(last_row - padding_row).mean() < 4  # the padding repeats the edge (up to H.264's loss)
    if fmt == "exr":
        assert read_exr(out / "exr" / "000002.exr", PASSES["color"].channels).shape == (37, 67, 3)
    assert json.loads((out / "infer.json").read_text())["frames"] == [0, 3]
    assert not [p for p in out.rglob("*") if p.is_file() and (p.stat().st_size == 0 or p.name.endswith(".tmp"))]


@pytest.mark.parametrize("pass_name", ["color", "motion"])
def test_infer_refuses_a_non_finite_frame_by_name_and_leaves_no_partial_video(tiny_checkpoints, odd_shot: Path,
                                                                             tmp_path: Path, pass_name: str) -> None:
    fp, _ = tiny_checkpoints
    shot = tmp_path / "shot"
    shutil.copytree(odd_shot, shot)
    spec = PASSES[pass_name]
    image = read_exr(frame_path(shot, pass_name, 2), spec.channels, spec.dtype).copy()
    image[5, 7, 0] = np.nan
    write_exr(frame_path(shot, pass_name, 2), image, spec.channels, spec.dtype)
    out = tmp_path / "out"
    for fmt in ("mp4", "exr"):
        result = qw("infer", "--checkpoint", str(fp), "--input", str(shot), "--out", str(out), "--format", fmt)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output  # breaks the contract
        error = result.output.splitlines()[-1]  # after the progress bar of the frames done
        assert error.startswith(f"qw: error: {frame_path(shot, pass_name, 2)}: 1 non-finite values (NaN or Inf)")
        leftovers = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
        assert leftovers == (["exr/000000.exr", "exr/000001.exr"] if fmt == "exr" else []), leftovers


# ------------------------------------------------------------------------------------------------ cases tried besides


def test_qw_checkpoints_with_a_broken_body_are_one_line(tiny_checkpoints, odd_shot: Path, tmp_path: Path) -> None:
    fp, _ = tiny_checkpoints
    for name, edit, message in (
            ("bits.pt", lambda c: c["config"]["quant"].update(extractor_weight_bits=-3),
             "checkpoint: invalid config: quant.extractor_weight_bits: Input should be 4, 8, 16 or 32 (got -3)"),
            ("shape.pt", lambda c: c["config"]["model"].update(widths=[8, 8]),
             "checkpoint: invalid config: model: decoder_convs needs 1 entries"),
            ("weights.pt", lambda c: c.pop("model"), "damaged qw checkpoint (no model weights)")):
        ckpt = torch.load(fp, weights_only=True)
        edit(ckpt)
        torch.save(ckpt, tmp_path / name)
        out = one_line(qw("infer", "--checkpoint", str(tmp_path / name), "--input", str(odd_shot), "--out",
                          str(tmp_path / "o")))
        assert out.startswith(f"qw: error: {tmp_path / name}: {message}"), out


@pytest.mark.parametrize("device, message", [("junk", "--device 'junk': not a torch device"),
                                             ("cuda:99", "--device cuda:99: this machine has")])
def test_a_device_the_machine_lacks_is_one_line(tiny_checkpoints, odd_shot: Path, tmp_path: Path, device: str,
                                                message: str) -> None:
    fp, _ = tiny_checkpoints
    for command in (["infer", "--input", str(odd_shot)], ["eval", "--captures", str(odd_shot)]):
        out = one_line(qw(command[0], "--checkpoint", str(fp), *command[1:], "--out", str(tmp_path / "o"),
                          "--device", device))
        assert message in out


def test_export_to_a_directory_is_one_line_and_writes_nothing(tiny_checkpoints, tmp_path: Path) -> None:
    _, q = tiny_checkpoints
    out = one_line(qw("export", "--checkpoint", str(q), "--out", str(tmp_path)))
    assert f"--out {tmp_path}: a directory; give the file to write, e.g. {tmp_path / 'model.qwq'}" in out
    assert not list(tmp_path.iterdir())


def test_a_binary_file_as_config_is_one_line(store: str, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_bytes(bytes(range(128, 256)))
    out = one_line(qw("train", "--store", store, "--out", str(tmp_path / "run"), "--config", str(config)))
    assert f"{config}: cannot read config" in out and not (tmp_path / "run").exists()
