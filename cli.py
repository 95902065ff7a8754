"""The `qw` command: parsing and wiring only. Every command calls one function of a stage module."""

from __future__ import annotations

import logging
import os
import sys

import click

from datagen import __version__
from datagen.errors import QwError

log = logging.getLogger("qw")


class QwGroup(click.Group):
    """A click group that turns `QwError` into one line on stderr and its exit code (traceback with --debug)."""

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
    level = logging.WARNING if quiet else (logging.INFO, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"


@main.group()
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
@click.option("--dry-run", is_flag=True, help="Unreal: print each shot's editor command line and job, run nothing.")
@click.option("--editor", type=click.Path(dir_okay=False), help="Unreal: editor executable [default: $QW_UE4_EDITOR].")
@click.option("--project", type=click.Path(dir_okay=False), help="Unreal: .uproject [default: the manifest's].")
def datagen_capture(scene, shots, out, frames, resolution, reference_spp, scheduler, dry_run, editor,
                    project) -> None:
    """Render (builtin scenes) or capture with Unreal (ue4 scenes) every shot of a scene into EXR sequences.

    Each shot becomes OUT/<scene>/<shot>/ with color/ (1 spp, jittered), reference/ (supersampled), motion/,
    depth/ and capture.json (qw-capture/1). Resumable: rerun the same command after an interruption and finished
    frames are kept; a shot is complete only when its capture.json exists.
    """
    from datagen.capture import capture_scene

    unreal = {k: v for k, v in (("dry_run", dry_run), ("editor", editor), ("project", project)) if v}
    for path in capture_scene(scene, out, shots=list(shots) or None, frames=frames, resolution=resolution,
                              reference_spp=reference_spp, scheduler=scheduler,
                              progress=not os.environ.get("TQDM_DISABLE"), **unreal):
        click.echo(str(path))


@main.command("scenes")
@click.option("--dataset", metavar="NAME|FILE",
              help="Only the scenes of this dataset manifest (e.g. qwnet-paper), with their block budgets.")
@click.option("--manifests", "manifests_dir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Manifest folder holding scenes/ and datasets/ [default: the repository's manifests/].")
def scenes(dataset, manifests_dir) -> None:
    """List the scene manifests: backend, shots, frames, splits and whether each can be captured here (and why not).

    builtin scenes need an OpenGL context through EGL; ue4 scenes need the editor in $QW_UE4_EDITOR, the project
    file and a filled-in level sequence. Every manifest is validated on the way: a broken one is an error.
    """
    from datagen.catalog import print_scenes
    from datagen.manifests import MANIFEST_ROOT

    print_scenes(manifests_dir or MANIFEST_ROOT, dataset, echo=click.echo)


@datagen.command("validate")
@click.argument("capture_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--tolerance", default=0.25, show_default=True, type=float,
              help="Reprojection: a pixel agrees when its motion is within this many pixels (+ --rel-tolerance).")
@click.option("--rel-tolerance", default=0.02, show_default=True, type=float,
              help="Reprojection: extra tolerance as a fraction of the expected motion's length.")
@click.option("--min-agree", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Reprojection: fraction of a frame's pixels that must agree (moving objects disagree).")
@click.option("--max-problems", default=20, show_default=True, type=int, help="Problems listed per shot.")
def datagen_validate(capture_dirs, tolerance, rel_tolerance, min_agree, max_problems) -> None:
    """Check captures against the qw-capture/1 contract; exit status 0 only if every shot passes.

    Each CAPTURE_DIR is a shot (captures/kite/shot01) or any folder above shots (captures/). Checks:
    capture.json (present, known version), every pass present for every frame with contiguous numbering,
    checksums, EXR channels and dtypes, resolution, no NaN/Inf, plausible motion, and motion against a
    depth + camera reprojection when camera matrices are recorded. Prints one line per shot and the
    failing files with their problems.
    """
    from datagen.validate import ReprojectionTolerance, validate_paths

    tol = ReprojectionTolerance(abs_px=tolerance, rel=rel_tolerance, min_agree=min_agree)
    if not validate_paths(capture_dirs, tol, max_problems=max_problems, echo=click.echo):
        sys.exit(1)


if __name__ == "__main__":
    main()
