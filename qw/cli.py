"""The `qw` command: parsing and wiring only. Every command calls one function of a stage module."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from qw.datagen import __version__
from qw.datagen.cluster import CLUSTER_KINDS
from qw.datagen.errors import QwError

log = logging.getLogger("qw")
# How `qw --help` and `qw datagen --help` list their commands: in the order a user runs them.
PIPELINE_ORDER = ("scenes", "datagen", "capture", "import", "validate", "plan", "build", "inspect", "verify", "preview",
                  "train", "model-stats", "quantize", "eval", "infer", "export", "demo")
_json_flag = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of the table.")


class QwGroup(click.Group):
    """A click group that turns `QwError` and click's usage errors into one line on stderr and an exit code
    (traceback with --debug), and lists its commands in pipeline order."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        order = {name: i for i, name in enumerate(PIPELINE_ORDER)}
        return sorted(self.commands, key=lambda name: order.get(name, len(order)))

    def main(self, *args, **kwargs):
        kwargs.pop("standalone_mode", None)
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "qw"
            click.echo(f"qw: error: {exc.format_message()} (see {where} --help)", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"qw: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:  # Ctrl-C: 128 + SIGINT, as a shell reports it; 1 means a broken capture or store
            click.echo("qw: interrupted; what is finished is kept: rerun the same command to resume "
                       "(qw train / qw quantize: with --resume)", err=True)
            sys.exit(130)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except QwError as exc:
            if ctx.find_root().params.get("debug"):
                raise
            click.echo(f"qw: error: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=QwGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="qw")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug messages).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
def main(verbose: int, quiet: bool, debug: bool) -> None:
    """qw: training data for neural temporal anti-aliasing, and QW-Net trained and quantized on it.

    \b
    Pipeline:
      qw datagen capture   render or capture shots   -> captures/<scene>/<shot>/ (EXR + capture.json)
      qw datagen build     tile captures with Dask   -> blocks.zarr (256x256x8 blocks)
      qw train             train QW-Net               -> runs/NAME/last.pt
      qw quantize          4/8-bit fine-tuning        -> runs/NAME-q/last.pt
      qw eval / infer / export
    """
    # qw's own messages at INFO by default, other libraries' (Dask ...) at WARNING; -v adds theirs, -vv debug.
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel((logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)])
    logging.getLogger("qw").setLevel(logging.WARNING if quiet else (logging.DEBUG if verbose >= 2 else logging.INFO))
    # Progress bars draw on a terminal only (tqdm's disable=None), so they stay out of log files; -q turns them off.
    click.get_current_context().obj = {"progress": not quiet}


@main.group(cls=QwGroup)
def datagen() -> None:
    """Make training data: capture shots, validate them, plan and build the block store."""


@datagen.command("capture")
@click.option("--scene", required=True, metavar="NAME|FILE",
              help="Scene manifest name (builtin_fence, kite …; see `qw scenes`) or a path to one.")
@click.option("--shot", "shots", multiple=True, metavar="NAME", help="Only this shot (repeatable) [default: all].")
@click.option("--out", default="captures", show_default=True, type=click.Path(file_okay=False),
              help="Captures root: shots land in OUT/<scene>/<shot>/.")
@click.option("--frames", metavar="A:B", help="Builtin: only frames A..B-1 of each shot, counted from 0.")
@click.option("--resolution", metavar="WxH", help="Builtin: override the manifest's resolution, e.g. 640x360.")
@click.option("--reference-spp", type=click.IntRange(1), metavar="N",
              help="Builtin: reference samples per pixel, a square (16, 64, 256) [default: the manifest's].")
@click.option("--scheduler", metavar="ADDR", help="Render shots as tasks on this Dask cluster (tcp://host:8786).")
@click.option("--cluster", type=click.Choice(CLUSTER_KINDS), default=None,
              help="Builtin: render shots as tasks on a new Dask cluster: local processes, or SLURM jobs configured "
                   "by dask-jobqueue (jobqueue.slurm in the Dask config) [default: one process, no Dask].")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Builtin, with --cluster: worker processes [default: local one per core, slurm one job's].")
@click.option("--dry-run", is_flag=True,
              help="Unreal: print each shot's editor command lines (prepare, render) and job, run nothing.")
@click.option("--editor", type=click.Path(dir_okay=False), help="Unreal: editor executable [default: $QW_UE4_EDITOR].")
@click.option("--project", type=click.Path(dir_okay=False), help="Unreal: .uproject [default: the manifest's].")
def datagen_capture(scene, shots, out, frames, resolution, reference_spp, scheduler, cluster, workers, dry_run,
                    editor, project) -> None:
    """Render (builtin scenes) or capture with Unreal (ue4 scenes) every shot of a scene into EXR sequences.

    Each shot becomes OUT/<scene>/<shot>/ with color/ (1 spp, jittered), reference/ (supersampled), motion/,
    depth/ and capture.json (qw-capture/1). Resumable: rerun the same command after an interruption and finished
    frames are kept; a shot is complete only when its capture.json exists.
    """
    from qw.capture import capture_scene

    unreal = {k: v for k, v in (("dry_run", dry_run), ("editor", editor), ("project", project)) if v}
    for path in capture_scene(scene, out, shots=list(shots) or None, frames=frames, resolution=resolution,
                              reference_spp=reference_spp, scheduler=scheduler, cluster=cluster, workers=workers,
                              progress=click.get_current_context().obj["progress"], **unreal):
        click.echo(str(path))


@main.command("scenes")
@click.option("--dataset", metavar="NAME|FILE",
              help="Only the scenes of this dataset manifest (e.g. qwnet-paper), with their block budgets.")
@click.option("--manifests", "manifests_dir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Manifest folder holding scenes/ and datasets/ [default: the manifests shipped with qw, or "
                   "$QW_MANIFESTS].")
@_json_flag
def scenes(dataset, manifests_dir, as_json) -> None:
    """List the scene manifests: backend, shots, frames, splits and whether each can be captured here (and why not).

    builtin scenes need an OpenGL context through EGL; ue4 scenes need the editor in $QW_UE4_EDITOR, the project
    file (e.g. under $QW_UE4_PROJECTS) and its map. Every manifest is validated on the way: a broken one is an error.
    """
    from qw.catalog import print_scenes, scenes_json
    from qw.datagen.manifests import MANIFEST_ROOT

    if as_json:
        click.echo(json.dumps(scenes_json(manifests_dir or MANIFEST_ROOT, dataset), indent=2))
    else:
        print_scenes(manifests_dir or MANIFEST_ROOT, dataset, echo=click.echo)


@datagen.command("validate")
@click.argument("capture_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--tolerance", default=0.25, show_default=True, type=click.FloatRange(0),
              help="Reprojection: a pixel agrees when its motion is within this many pixels of a 1920-pixel frame, "
                   "scaled with the frame's larger side (+ --rel-tolerance).")
@click.option("--rel-tolerance", default=0.02, show_default=True, type=click.FloatRange(0),
              help="Reprojection: extra tolerance as a fraction of the expected motion's length.")
@click.option("--min-agree", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Reprojection: fraction of a frame's pixels that must agree (moving objects disagree).")
@click.option("--max-problems", default=20, show_default=True, type=click.IntRange(0),
              help="Problems listed per shot.")
@_json_flag
def datagen_validate(capture_dirs, tolerance, rel_tolerance, min_agree, max_problems, as_json) -> None:
    """Check captures against the qw-capture/1 contract; exit status 0 only if every shot passes.

    Each CAPTURE_DIR is a shot (captures/kite/shot01) or any folder above shots (captures/). Checks:
    capture.json (present, known version), every pass present for every frame with contiguous numbering,
    checksums, EXR channels and dtypes, resolution, no NaN/Inf, plausible motion, increasing source frames,
    depth in range, an input that differs from the reference, motion that warps the previous reference onto
    the current one better than no or reversed motion, and motion against a depth + camera reprojection when
    camera matrices are recorded. Prints one line per shot (PASS, FAIL or SKIPPED with the checks that could
    not run) and the failing files with their problems; skipped checks do not fail the exit status.
    """
    from qw.datagen.validate import ReprojectionTolerance, validate_paths

    tol = ReprojectionTolerance(abs_px=tolerance, rel=rel_tolerance, min_agree=min_agree)
    if not validate_paths(capture_dirs, tol, max_problems=max_problems, echo=click.echo, as_json=as_json,
                          progress=click.get_current_context().obj["progress"]):
        sys.exit(1)


def _size_option(ctx, param, value):
    if value is None:
        return None
    w, sep, h = value.lower().partition("x")
    if not (sep and w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
        raise click.BadParameter(f"{value!r} is not WIDTHxHEIGHT, e.g. 1920x1080")
    return int(w), int(h)


def _scale_option(ctx, param, value):
    try:
        sx, sy = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not SX,SY, e.g. 1,-1") from None
    return sx, sy


@datagen.command("import")
@click.argument("src", type=click.Path(path_type=str))
@click.option("--layout", required=True, type=click.Choice(["intel-sample", "mrq"]),
              help="intel-sample: noaa/ ssaa/ vel/ folders of the public QW-Net sample; mrq: Movie Render Queue "
                   "output (SRC/aliased or SRC, and SRC/reference or --reference).")
@click.option("--scene", required=True, help="Scene name for the capture (e.g. Infiltrator).")
@click.option("--shot", required=True, help="Shot name for the capture.")
@click.option("--out", default="captures", show_default=True, type=click.Path(file_okay=False),
              help="Captures root: the shot lands in OUT/<scene>/<shot>/.")
@click.option("--fps", default=30.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Frame rate of the source sequence (recorded in capture.json).")
@click.option("--reference", type=click.Path(file_okay=False), help="mrq: folder of the reference render.")
@click.option("--full-resolution", callback=_size_option, metavar="WxH",
              help="Size of the full frame the source was cut from (needed for stacked blocks; NDC velocity is "
                   "relative to the full frame) [default: the files' size].")
@click.option("--motion-encoding", type=click.Choice(["ndc", "unorm16", "unorm16-ue5", "sign-bits", "mrq-material"]),
              help="How velocity is stored [default: sign-bits for intel-sample; for mrq the motion pass's own].")
@click.option("--mrq-scale", default="1,-1", show_default=True, callback=_scale_option, metavar="SX,SY",
              help="mrq-material calibration: pixels = (value - 0.5) * size * scale per axis (sources disagree; "
                   "calibrate with a known camera pan).")
@click.option("--reference-samples", type=click.IntRange(1), help="Samples per pixel of the reference, if known.")
@click.option("--no-sample-offsets", is_flag=True,
              help="intel-sample: do not read the per-frame sample offset from pixel (0,0) of noaa frames.")
@click.option("--force", is_flag=True, help="Import again even if the target shot is complete.")
def datagen_import(src, layout, scene, shot, out, fps, reference, full_resolution, motion_encoding, mrq_scale,
                   reference_samples, no_sample_offsets, force) -> None:
    """Convert an existing Unreal dump (SRC) into one validated capture (qw-capture/1).

    Velocity is decoded to pixels (full frame W,H, y down, current minus previous), Unreal depth (cm) to
    metres, passes are renamed to color/ reference/ motion/ depth/, and capture.json records the source.
    """
    from qw.datagen.capture_format import check_path_component
    from qw.ue_capture.importers import import_capture

    check_path_component(scene, "--scene")
    check_path_component(shot, "--shot")
    path = import_capture(layout, src, scene=scene, shot=shot, out=out, fps=fps, reference=reference,
                          full_size=full_resolution, motion_encoding=motion_encoding, mrq_scale=mrq_scale,
                          reference_samples=reference_samples, sample_offsets=not no_sample_offsets, force=force,
                          progress=click.get_current_context().obj["progress"])
    click.echo(str(path))


def _json_option(ctx, param, value):
    import json

    try:
        return json.loads(value) if value else None
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON ({exc})") from None


_dataset_opt = click.option("--dataset", "dataset_file", required=True, metavar="NAME|FILE",
                            help="Dataset manifest: a shipped one by name (builtin-all, qwnet-paper …; see "
                                 "`qw scenes --dataset NAME`) or a YAML file: scenes, block budgets, seed, tile.")
_captures_opt = click.option("--captures", required=True, type=click.Path(exists=True, file_okay=False),
                             help="Captures root: <captures>/<scene>/<shot>/ with capture.json.")
_seed_opt = click.option("--seed", type=click.IntRange(0), default=None, help="Override the dataset manifest's seed.")
_storage_opt = click.option("--storage-options", callback=_json_option, metavar="JSON",
                            help='fsspec options for a remote store, e.g. \'{"endpoint_url": "http://host:9000"}\'.')


@datagen.command("plan")
@_dataset_opt
@_captures_opt
@_seed_opt
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the full plan (every block) as JSON.")
@_json_flag
def datagen_plan(dataset_file, captures, seed, out, as_json) -> None:
    """Plan the block store: windows of T frames that never cross a camera cut, tile positions, budgets.

    Reads only capture.json files (no pixels). The plan is a pure function of the dataset manifest, the capture
    metadata and the seed; `qw datagen build` recomputes it and records its digest in the store.
    """
    from qw.datagen.plan import print_plan

    print_plan(dataset_file, captures, seed=seed, out=out, echo=click.echo, as_json=as_json)


@datagen.command("build")
@_dataset_opt
@_captures_opt
@click.option("--store", required=True, metavar="URL", help="Store path or fsspec URL (s3://bucket/blocks.zarr).")
@click.option("--cluster", type=click.Choice(CLUSTER_KINDS), default="local", show_default=True,
              help="New Dask cluster: local processes, or SLURM jobs configured by dask-jobqueue (queue, cores, "
                   "memory, walltime from jobqueue.slurm in ~/.config/dask/jobqueue.yaml or DASK_JOBQUEUE__SLURM__*).")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Worker processes of the new cluster [default: local one per CPU core, slurm one job's].")
@click.option("--scheduler", metavar="ADDR", default=None,
              help="Use an existing Dask cluster (tcp://host:8786) instead of a local one; workers must see the "
                   "captures at the same path and reach the store.")
@_storage_opt
@_seed_opt
@click.option("--overwrite", is_flag=True, help="Replace a qw store built from a different plan.")
@click.option("--inner-chunk", type=click.IntRange(1), default=None, metavar="PIXELS",
              help="Sharded layout: one shard per block, split into PIXELS² inner chunks, so training crops read "
                   "only part of a block (docs/performance.md) [default: one chunk per block].")
def datagen_build(dataset_file, captures, store, cluster, workers, scheduler, storage_options, seed, overwrite,
                  inner_chunk) -> None:
    """Tile the captures into 256×256×8 blocks in a Zarr store (qw-blocks/2), with Dask.

    One task per window: each source frame is decoded once, every chunk written whole. Resumable: rerun the
    same command after an interruption and finished windows are skipped; the store is marked complete last and
    is byte-identical to an uninterrupted build. The Dask dashboard link is logged when the cluster is up
    (see docs/datagen.md for SLURM).
    """
    from qw.datagen.tile import build_store

    built = build_store(dataset_file, captures, store, cluster=cluster, workers=workers, scheduler=scheduler,
                        storage_options=storage_options, seed=seed, overwrite=overwrite, inner_chunk=inner_chunk,
                        progress=click.get_current_context().obj["progress"])
    click.echo(f"{built.url}: {built.num_blocks} blocks, complete (qw datagen inspect {built.url})")


@datagen.command("inspect")
@click.argument("store", metavar="STORE")
@_storage_opt
@_json_flag
def datagen_inspect(store, storage_options, as_json) -> None:
    """Show a block store: blocks per scene/shot/split, codec, sizes, completeness and provenance."""
    from qw.datagen.inspect_store import inspect_data, inspect_report

    if as_json:
        click.echo(json.dumps(inspect_data(store, storage_options), indent=2))
    else:
        click.echo(inspect_report(store, storage_options))


@datagen.command("verify")
@click.argument("store", metavar="STORE")
@_storage_opt
@_json_flag
def datagen_verify(store, storage_options, as_json) -> None:
    """Check every block of a store against the checksums recorded when it was written.

    Names each missing, unreadable (truncated) or altered chunk and each damaged per-block array; exit status 0
    only when the store is complete and intact.
    """
    from qw.datagen.inspect_store import verify_store

    if not verify_store(store, storage_options, echo=click.echo, as_json=as_json,
                        progress=click.get_current_context().obj["progress"]):
        sys.exit(1)


@datagen.command("preview")
@click.argument("store", metavar="STORE")
@click.option("--block", "index", type=int, required=True, help="Block index.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="FILE.png, FILE.gif or FILE.mp4.")
@_storage_opt
def datagen_preview(store, index, out, storage_options) -> None:
    """Picture of one block: color | reference | motion (hue = direction) | depth, 8 frames, tone mapped."""
    from qw.datagen.inspect_store import write_preview

    click.echo(write_preview(store, index, out, storage_options))


@main.command("train")
@click.option("--store", required=True, metavar="URL", help="Block store (qw-blocks/2): a path or fsspec URL (s3://...).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory, e.g. runs/NAME.")
@click.option("--config", default=None, metavar="FILE|PRESET",
              help="YAML config or preset name (paper [default], intel-sample); see training/configs/.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override one config value, read as YAML (repeatable): --set train.lr=1e-4 --set model.widths=[16,32].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt exactly where it stopped.")
@_storage_opt
def train_cmd(store, out, config, overrides, resume, storage_options) -> None:
    """Train QW-Net on a block store (one process; use torchrun for several GPUs or nodes).

    \b
    Writes OUT/step-N.pt every ckpt_every steps (the newest keep_last kept), OUT/last.pt (the newest), OUT/best.pt
    (lowest validation loss), OUT/config.yaml, OUT/metrics.jsonl and TensorBoard scalars and crops in OUT/tb.
    Multi-GPU:   torchrun --nproc_per_node 8 -m qw.cli train --store ... --out ...
    Multi-node:  torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:PORT --rdzv-id RUN
                 -m qw.cli train ...   (the same command on every node; see docs/training.md)
    """
    from qw.training.train.loop import train_command

    train_command(store, out, config, resume, storage_options, overrides,
                  progress=click.get_current_context().obj["progress"])
    _echo_run(out, ("last.pt", "best.pt", "config.yaml", "metrics.jsonl", "tb"))


def _echo_run(out: str, names: tuple[str, ...]) -> None:
    """The run folder and those of `names` the run wrote (no best.pt without validation blocks, no tb/ without
    TensorBoard)."""
    written = [name + "/" * (Path(out) / name).is_dir() for name in names if (Path(out) / name).exists()]
    click.echo(f"run: {out} ({', '.join(written)})")


@main.command("model-stats")
@click.option("--config", default=None, metavar="FILE|PRESET", help="YAML config or preset name (default: paper).")
@click.option("--resolution", default="1920x1080", show_default=True, metavar="WxH",
              help="Frame size; sizes not divisible by 16 are counted padded, as inference pads them.")
@click.option("--summary", is_flag=True, help="Totals only, no per-layer table.")
@_json_flag
def model_stats_cmd(config, resolution, summary, as_json) -> None:
    """Parameters and MACs per layer, and the share of MACs per precision under the quantization plan."""
    from qw.training.model.stats import model_stats_report

    click.echo(model_stats_report(config, resolution, per_layer=not summary, as_json=as_json))


@main.command("quantize")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="Full-precision checkpoint from `qw train` (runs/NAME/last.pt).")
@click.option("--store", required=True, metavar="URL", help="Block store to fine-tune on (the training store).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory, e.g. runs/NAME-q.")
@click.option("--bits", default="w4a4", show_default=True, type=click.Choice(["w4a4", "w8a8", "fp16"]),
              help="w4a4: the paper's plan (U_e 4-bit, first conv and kernel predictors 8-bit weights); "
                   "w8a8: 8-bit everywhere; fp16: half-precision rounding.")
@click.option("--steps", type=click.IntRange(1), default=None, help="Fine-tuning steps [default: 2000].")
@click.option("--lr", type=float, default=None, help="Learning rate [default: 1e-4].")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Blocks per micro-batch [default: the run's].")
@click.option("--grad-accum", type=click.IntRange(1), default=None, help="Micro-batches per step [default: the run's].")
@click.option("--crop", type=click.IntRange(16), default=None, help="Random square crop of each block [default: the run's].")
@click.option("--calibration-blocks", type=click.IntRange(1), default=4, show_default=True,
              help="Training blocks used to initialise the activation clips (MSE-optimal).")
@click.option("--set", "overrides", multiple=True, metavar="train.KEY=VALUE",
              help="Override one training value, read as YAML (repeatable): --set train.schedule=cosine.")
@click.option("--resume", is_flag=True,
              help="Continue the fine-tuning in --out from its last.pt, with the run's own settings.")
@_storage_opt
def quantize_cmd(checkpoint, store, out, bits, steps, lr, batch_size, grad_accum, crop, calibration_blocks,
                 overrides, resume, storage_options) -> None:
    """Quantization-aware fine-tuning: fold BN, quantize per the plan, train with straight-through gradients.

    Weights are symmetric per output channel; activations are quantized where each conv reads them, with learned
    clips: [0, clip] for the network input, [-1, clip] for ELU activations. Writes OUT/last.pt (a quantized
    checkpoint that `qw eval`, `qw infer` and `qw export` accept) and OUT/quantize.json.
    """
    from qw.training.quantization.qat import quantize_command

    quantize_command(checkpoint, store, out, bits=bits, steps=steps, lr=lr, batch_size=batch_size,
                     grad_accum=grad_accum, crop=crop, calibration_blocks=calibration_blocks, resume=resume,
                     settings=overrides, storage_options=storage_options,
                     progress=click.get_current_context().obj["progress"])
    _echo_run(out, ("last.pt", "quantize.json", "metrics.jsonl", "tb"))


@main.command("export")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="Quantized checkpoint (qw quantize); for --format onnx also a float one (qw train).")
@click.option("--out", required=True, type=click.Path(dir_okay=True), help="Output file, e.g. model.qwq or model.onnx.")
@click.option("--format", "fmt", default="qwq", show_default=True, type=click.Choice(["qwq", "onnx"]),
              help="qwq: qw's integer file (quantized checkpoints); onnx: one recurrent step (color, motion, "
                   "previous output) -> output, float or QDQ with 4/8-bit types (opset 21).")
@click.option("--verify", "verify_shot", type=click.Path(exists=True, file_okay=False), default=None,
              help="A captured shot: run the written model on its first frames and report the largest difference "
                   "to the implementation it must match (see below).")
@click.option("--verify-frames", type=click.IntRange(1), default=4, show_default=True, help="Frames to verify on.")
def export_cmd(checkpoint, out, fmt, verify_shot, verify_frames) -> None:
    """Export a checkpoint for use outside qw.

    \b
    qwq:  integer weights (4-bit packed two per byte, 8-bit), one scale and zero point per activation tensor and
          the float parts; --verify runs the integer reference (int32 accumulation) against the fake-quantized model.
    onnx: a float checkpoint gives a float graph (--verify: ONNX Runtime against PyTorch); a quantized one a QDQ
          graph (--verify: ONNX Runtime against the integer reference). See docs/onnx.md to run it.
    """
    import json

    from qw.training.export.exporter import export_command

    click.echo(json.dumps(export_command(checkpoint, out, verify_shot, verify_frames, fmt), indent=1))


@main.command("eval")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(dir_okay=False),
              help="A full-precision or quantized checkpoint (repeatable: e.g. the FP32 run and its W4A4 run).")
@click.option("--qwq", "qwq_files", multiple=True, type=click.Path(dir_okay=False),
              help="Also evaluate an exported .qwq with the integer reference implementation (repeatable; CPU).")
@click.option("--captures", multiple=True, required=True, type=click.Path(exists=True, file_okay=False),
              help="Held-out shots, or folders above them (repeatable).")
@click.option("--baseline", "baselines", multiple=True, default=["taa"], show_default=True,
              type=click.Choice(["taa", "taa-clamp", "none"]),
              help="Baseline run on the same jittered inputs (repeatable): 'taa' is TAA as engines ship it "
                   "(variance clipping, motion dilation, 1/n start-up), 'taa-clamp' the simpler min/max-clamp TAA.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Report folder.")
@click.option("--frames", type=click.IntRange(1), default=None, help="Only the first N frames of each shot.")
@click.option("--flip-crop", type=click.IntRange(16), default=512, show_default=True,
              help="HDR-FLIP on a centred crop of at most this many pixels square (FLIP costs ~5 s per 1080p frame).")
@click.option("--crop-size", type=click.IntRange(16), default=128, show_default=True,
              help="Side of the side-by-side crops in the report.")
@click.option("--device", default=None, help="torch device [default: cuda if available, else cpu].")
def eval_cmd(checkpoints, qwq_files, captures, baselines, out, frames, flip_crop, crop_size, device) -> None:
    """Compare QW-Net (FP32 and quantized) with TAA and the aliased input on held-out shots at full resolution.

    PSNR and SSIM (tone-mapped), HDR-FLIP and tPSNR, per shot and overall. Writes OUT/report.md,
    OUT/metrics.json, side-by-side PNG crops and per-frame metric plots.
    """
    from qw.training.evaluation.evaluate import evaluate_command, markdown_table

    data = evaluate_command(list(checkpoints), list(captures), out, baselines=[b for b in baselines if b != "none"],
                            qwq_files=list(qwq_files), frames=frames, flip_crop=flip_crop, crop_size=crop_size,
                            device=device, progress=click.get_current_context().obj["progress"])
    click.echo(markdown_table(data["overall"]))
    click.echo(data["report"])


@main.command("infer")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="Full-precision or quantized checkpoint.")
@click.option("--input", "input_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A captured shot (qw-capture/1); only color/ and motion/ are read.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--format", "fmt", default="exr", show_default=True, type=click.Choice(["exr", "png", "mp4"]),
              help="exr: linear HDR frames + tone-mapped preview.mp4; png: tone-mapped frames; mp4: tone-mapped video.")
@click.option("--start", type=click.IntRange(0), default=0, show_default=True, help="First frame.")
@click.option("--count", type=click.IntRange(1), default=None, help="Number of frames [default: to the end].")
@click.option("--device", default=None, help="torch device [default: cuda if available, else cpu].")
def infer_cmd(checkpoint, input_dir, out, fmt, start, count, device) -> None:
    """Reconstruct a whole captured sequence recurrently at its own resolution (any size; padded internally)."""
    from qw.training.infer import infer_command

    summary = infer_command(checkpoint, input_dir, out, fmt, start, count, device,
                            progress=click.get_current_context().obj["progress"])
    click.echo(f"{summary['frames'][1] - summary['frames'][0]} frames -> {out}")


@main.command("demo")
@click.option("--out", default="demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for captures, store, runs and the report.")
@click.option("--train-steps", type=click.IntRange(1), default=None,
              help="Full-precision training steps [default: the demo plan's, sized for 2 CPU cores].")
@click.option("--qat-steps", type=click.IntRange(1), default=None, help="Quantization-aware fine-tuning steps.")
def demo_cmd(out, train_steps, qat_steps) -> None:
    """The whole pipeline on the builtin scenes, small: capture, build store, train, quantize, export, eval vs TAA.

    Prints the path of the report and its headline table. Under 15 minutes on 2 CPU cores; resumable.
    """
    from qw.demo import run_demo

    report, table = run_demo(out, train_steps=train_steps, qat_steps=qat_steps,
                             progress=click.get_current_context().obj["progress"])
    click.echo(table)
    click.echo(report)


if __name__ == "__main__":
    main()
