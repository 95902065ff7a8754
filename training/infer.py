"""`qw infer`: recurrent reconstruction of a whole captured shot, at the shot's own resolution.

Frames are streamed: one input frame is read, reconstructed from the warped previous output and written before
the next is read, so memory does not grow with the sequence length. Any resolution works (QW-Net pads to a
multiple of 16 and crops back). Outputs: linear HDR EXR frames (the capture contract's colour encoding) with a
tone-mapped MP4 preview, tone-mapped PNG frames, or only the tone-mapped MP4.

Frames must be finite: a NaN or Inf in a colour or motion frame is refused, naming the file (one NaN pixel would
spread over the whole output, and through the history into every later frame). Every output file appears complete
or not at all: frames and the video are written under temporary names and renamed when whole, and ``infer.json``
is written last (a folder without it holds an interrupted run). libx264's 4:2:0 video needs even sizes: frames of
an odd width or height are padded by one repeated row or column in the video only (the EXR and PNG frames keep the
shot's size).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from qw.datagen import __version__
from qw.datagen.capture_format import (PASSES, CaptureMeta, atomic_path, find_captures, frame_path, load_meta, read_frame,
                                    write_exr)
from qw.datagen.errors import CaptureError, QwError, missing_extra
from qw.datagen.tonemap import tonemap_8bit
from qw.training.evaluation.taa import TaaFrame
from qw.training.model.qwnet import pad_to_multiple

FORMATS = ("exr", "png", "mp4")
PREVIEW_FPS_DEFAULT = 30.0

log = logging.getLogger(__name__)


def read_pass(shot: Path, name: str, index: int, meta: CaptureMeta | None = None) -> torch.Tensor:
    """One stored pass of one frame as a (1,C,H,W) float32 tensor; with `meta`, a frame of another size than the
    shot's is refused (it cannot be warped onto its neighbours nor scored against its reference)."""
    image = read_frame(shot, name, index, None if meta is None else (meta.width, meta.height))
    return _as_tensor(image)


def read_finite_frame(shot: Path, name: str, index: int, meta: CaptureMeta | None = None) -> np.ndarray:
    """One frame, H×W×C float32, checked as `read_pass` does and refused with NaN or Inf values: in an input the
    network would spread them over the whole output; in a reference every score would be NaN, written into the
    reports as if it were a result."""
    image = read_frame(shot, name, index, None if meta is None else (meta.width, meta.height)).astype(np.float32)
    bad = int((~np.isfinite(image)).sum())
    if bad:
        raise CaptureError(f"{frame_path(shot, name, index)}: {bad} non-finite values (NaN or Inf); QW-Net and the "
                           "metrics need finite values (check the capture with `qw datagen validate`)")
    return image


def read_finite_pass(shot: Path, name: str, index: int, meta: CaptureMeta | None = None) -> torch.Tensor:
    """`read_finite_frame` as a (1,C,H,W) tensor."""
    return _as_tensor(read_finite_frame(shot, name, index, meta))


def _as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.astype(np.float32, copy=False)).permute(2, 0, 1).unsqueeze(0)


def input_frames(shot: Path, meta: CaptureMeta, frames: range) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
    """(color (1,3,H,W), motion (1,2,H,W), history valid) in order; the first frame requested has no valid history.
    Frames with NaN or Inf values, or of another size than the shot's, are refused."""
    valid = meta.history_valid()
    for k, index in enumerate(frames):
        yield (read_finite_pass(shot, "color", index, meta), read_finite_pass(shot, "motion", index, meta),
               bool(valid[index]) and k > 0)


def model_frames(shot: Path, meta: CaptureMeta, frames: range) -> Iterator[TaaFrame]:
    """`input_frames` with each frame's jitter (no depth): what every QW-Net, with or without ``jitter_input``, and
    TAA without its depth test run on."""
    jitter = meta.jitter_array()
    for index, (color, motion, valid) in zip(frames, input_frames(shot, meta, frames)):
        yield TaaFrame(color, motion, valid, None, (float(jitter[index][0]), float(jitter[index][1])))


def read_reference(shot: Path, index: int, meta: CaptureMeta | None = None) -> np.ndarray:
    """The reference of one frame, H×W×3 float32 (`read_finite_frame`'s checks)."""
    return read_finite_frame(shot, "reference", index, meta)


@torch.no_grad()
def run_qwnet(model: torch.nn.Module, frames: Iterator[tuple],
              device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
    """QW-Net's recurrence frame by frame (the streaming form of `QWNet.forward`): yields (1,3,H,W) on the CPU.

    Each frame starts with (colour, motion, history valid); a `TaaFrame`'s jitter is passed to a model that reads
    it (``jitter_input``), its depth is ignored."""
    multiple = model.cfg.size_multiple
    previous = None
    for frame in frames:
        color, motion, valid = frame[:3]
        jitter = getattr(frame, "jitter", None)
        h, w = color.shape[-2:]
        color = pad_to_multiple(color, multiple).to(device)
        motion = pad_to_multiple(motion, multiple).to(device)
        history = model.warp_history(previous, motion) if valid and previous is not None else color
        previous = model.step(color, history, None if jitter is None else torch.tensor([jitter], device=device))
        yield previous[..., :h, :w].float().cpu()


def to_image(frame: torch.Tensor) -> np.ndarray:
    """(1,3,H,W) tensor -> H×W×3 float32 array."""
    return frame[0].permute(1, 2, 0).numpy().astype(np.float32)


def even_size(image: np.ndarray) -> np.ndarray:
    """H×W×C padded to even H and W by repeating the last row / column (libx264's 4:2:0 video needs even sizes)."""
    h, w = image.shape[:2]
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


@contextlib.contextmanager
def video_writer(path: Path, fps: float) -> Iterator[Callable[[np.ndarray], None]]:
    """An H.264 MP4 writer taking H×W×3 uint8 frames (odd sizes padded, see `even_size`); the file is written under
    a temporary name and appears only when the video is complete."""
    import imageio_ffmpeg

    with atomic_path(path) as tmp:
        encoder = None

        def append(frame: np.ndarray) -> None:
            nonlocal encoder
            frame = np.ascontiguousarray(even_size(frame))
            if encoder is None:
                encoder = imageio_ffmpeg.write_frames(str(tmp), (frame.shape[1], frame.shape[0]), fps=fps,
                                                      macro_block_size=1, output_params=["-f", "mp4"],
                                                      ffmpeg_log_level="error")
                encoder.send(None)
            encoder.send(frame)

        try:
            yield append
        finally:
            if encoder is not None:
                encoder.close()


def check_shot_folder(folder: Path, command: str = "qw infer", option: str = "--input") -> None:
    """Refuse, in one line, folders that are not one captured shot but something qw users often pass instead."""
    if (folder / "capture.json").exists():
        return
    if (folder / "zarr.json").is_file():
        raise QwError(f"{folder}: a block store (training data); {command} takes a captured shot folder "
                      "(<captures>/<scene>/<shot>/ with capture.json)")
    shots = find_captures(folder)
    if shots:
        count = f"{len(shots)} shot" + "s" * (len(shots) != 1)
        raise QwError(f"{folder}: a captures folder ({count}); {command} takes one shot, e.g. {option} {shots[0]}")


def frame_range(meta: CaptureMeta, start: int = 0, count: int | None = None) -> range:
    if not 0 <= start < meta.frame_count:
        raise QwError(f"{meta.scene}/{meta.shot}: start frame {start} outside the shot's 0..{meta.frame_count - 1}")
    if count is not None and count < 1:  # an empty range would "succeed" with no frames written
        raise QwError(f"frame count {count}: must be at least 1 (None: to the end of the shot)")
    return range(start, meta.frame_count if count is None else min(meta.frame_count, start + count))


def default_device(device: str | torch.device | None = None) -> torch.device:
    """`device`, or CUDA when available, else the CPU; a device this machine does not have is one line."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise QwError(f"--device {device!r}: not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise QwError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
                      + ("" if torch.cuda.is_available() else f" (torch {torch.__version__}, CUDA available: no)"))
    return device


def reconstruct_shot(model: torch.nn.Module, shot: str | Path, start: int = 0, count: int | None = None,
                     device: str | torch.device | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Run QW-Net recurrently over frames start..start+count-1 of a captured shot at its own resolution, streaming:
    yields (frame index, H×W×3 float32 linear HDR output) one frame at a time. The model is moved to `device`."""
    shot = Path(shot)
    check_shot_folder(shot, "qw.reconstruct_shot", "shot")
    meta = load_meta(shot)
    device = default_device(device)
    frames = frame_range(meta, start, count)
    outputs = run_qwnet(model.to(device), model_frames(shot, meta, frames), device)
    for index, frame in zip(frames, outputs):
        yield index, to_image(frame)


def infer_command(checkpoint: str, input_dir: str, out: str, fmt: str = "exr", start: int = 0,
                  count: int | None = None, device: str | None = None, progress: bool = True) -> dict:
    """Reconstruct a captured shot with a (full-precision or quantized) checkpoint; returns a summary."""
    import imageio.v2 as imageio

    from qw.training.quantization.qat import model_from_any_checkpoint

    if fmt not in FORMATS:
        raise QwError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    shot, out_dir = Path(input_dir), Path(out)
    check_shot_folder(shot)
    meta = load_meta(shot)
    model, cfg, quantized = model_from_any_checkpoint(checkpoint)
    device = default_device(device)
    frames = frame_range(meta, start, count)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "infer.json").unlink(missing_ok=True)  # written last: its presence means the run completed
    no_video = missing_extra("imageio_ffmpeg", "video", f"qw infer --format {fmt} (an .mp4 video)")
    if no_video and fmt == "mp4":
        raise QwError(no_video)
    if no_video and fmt == "exr":
        log.warning("%s: no preview.mp4 beside the EXR frames", no_video)
    video_path = out_dir / ("preview.mp4" if fmt == "exr" else "output.mp4") if fmt in ("exr", "mp4") else None
    video = (video_writer(video_path, meta.fps or PREVIEW_FPS_DEFAULT) if video_path and not no_video
             else contextlib.nullcontext())
    with video as append_video:
        for index, image in tqdm(reconstruct_shot(model, shot, start, count, device), total=len(frames),
                                 desc="infer", unit="frame", disable=None if progress else True):
            if fmt == "exr":
                write_exr(out_dir / "exr" / f"{index:06d}.exr", image, PASSES["color"].channels, np.float16)
            elif fmt == "png":
                with atomic_path(out_dir / "png" / f"{index:06d}.png") as tmp:
                    imageio.imwrite(tmp, tonemap_8bit(image), format="PNG")
            if append_video is not None:
                append_video(tonemap_8bit(image))
    summary = {"checkpoint": str(checkpoint), "input": str(shot), "frames": [frames.start, frames.stop],
               "resolution": [meta.width, meta.height], "format": fmt, "quantized": quantized,
               "quant": cfg.quant.model_dump() if quantized else None, "device": str(device), "qw_version": __version__}
    with atomic_path(out_dir / "infer.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
    return summary
