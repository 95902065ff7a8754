"""A FAKE Unreal editor executable for the launcher tests (it is not Unreal).

Invoked with the argv the launcher builds (``<project> -ExecutePythonScript=<script> …``), it installs the
`fake_unreal` stand-in, runs the real in-editor script on the job in $QW_UE_JOB, then plays Movie Render Queue's
part: for every queued job it writes Unreal-format EXRs (named and configured as the job asks) from analytic ground
truth, and fires the executor's finish delegate. For bufvis it answers screenshots with buffer-visualization dumps.

$FAKE_UE_BEHAVIOUR picks a failure to act out:
  ok (default)   render everything, exit 0
  exit-nonzero   log an error and exit 3 before rendering
  hang           sleep until killed
  partial        render only the first half of the frames, report success, exit 0
  crash-once     exit 139 on the first run for a shot (marker file next to the job), succeed afterwards
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
from pathlib import Path

import fake_unreal
import numpy as np
from ue_formats import analytic_motion, colour, jitter_image, velocity_image, write_exr, write_mrq_frame

DEPTH_CM = 750.0
JITTER_NDC = (0.004, -0.006)


def _script_from_argv(argv: list[str]) -> str:
    for arg in argv:
        if arg.startswith("-ExecutePythonScript="):
            return arg.split("=", 1)[1]
    sys.exit("fake editor: no -ExecutePythonScript= argument")


def _job_frames(job) -> tuple[Path, range, int, int]:
    out = job.configuration.setting(fake_unreal_module().MoviePipelineOutputSetting)
    _, width, height = out.output_resolution
    return Path(out.output_directory[1]), range(out.custom_start_frame, out.custom_end_frame), width, height


def fake_unreal_module():
    return sys.modules["unreal"]


def render_mrq_job(job, seq: str, limit: int | None) -> None:
    """Write what MRQ would for this job: FinalImage, plus each enabled post-process material's pass."""
    ue = fake_unreal_module()
    folder, frames, width, height = _job_frames(job)
    deferred = job.configuration.setting(ue.MoviePipelineDeferredPassBase)
    materials = [p.material.path for p in (deferred.additional_post_process_materials or []) if p.enabled]
    for frame in list(frames)[:limit]:
        write_mrq_frame(folder, seq, frame, width, height, colour_only=not materials,
                        motion=analytic_motion(width, height, phase=0.1 * frame),
                        depth_cm=np.full((height, width), DEPTH_CM) if any("WorldDepth" in m for m in materials)
                        else None)


def answer_screenshot(width: int, height: int, filename: str) -> None:
    """What HighResShot with buffer visualization dumps would leave beside `filename` (names as assumed [U])."""
    frame = int(Path(filename).stem.rsplit("_", 1)[1])
    base = filename[:-len(".exr")]
    write_exr(Path(filename), jitter_image(JITTER_NDC, width, height))
    write_exr(Path(f"{base}_PreTonemapHDRColor.exr"), colour(width, height, frame, 0.1), dtype=np.float16)
    write_exr(Path(f"{base}_Velocity.exr"), velocity_image(analytic_motion(width, height, phase=0.1 * frame),
                                                          width, height))
    write_exr(Path(f"{base}_SceneDepth.exr"), np.full((height, width, 1), DEPTH_CM), channels=("R",))


def main() -> int:
    behaviour = os.environ.get("FAKE_UE_BEHAVIOUR", "ok")
    job_path = Path(os.environ["QW_UE_JOB"])
    print(f"LogInit: fake editor, behaviour {behaviour}, argv {sys.argv[1:]}", flush=True)
    if behaviour == "exit-nonzero":
        print("LogWindows: Error: === Critical error: === (fake)", flush=True)
        return 3
    if behaviour == "hang":
        job_path.with_name("fake-hung.pid").write_text(str(os.getpid()))
        time.sleep(3600)
    marker = job_path.with_name("fake-crashed-once")
    if behaviour == "crash-once" and not marker.exists():
        marker.write_text("1")
        print("Segmentation fault (fake)", flush=True)
        return 139
    spec = json.loads(job_path.read_text())
    ue = fake_unreal.install("5.3" if spec["engine_version"].startswith("5") else "4.27")
    ue.state["on_screenshot"] = answer_screenshot
    runpy.run_path(_script_from_argv(sys.argv), run_name="__main__")
    ue.tick(spec["warm_up_frames"] + 3 * (spec["end_frame"] - spec["start_frame"]) + 2)  # bufvis frame stepping
    seq = spec["level_sequence"].rsplit("/", 1)[-1].split(".")[0]
    half = (spec["end_frame"] - spec["start_frame"]) // 2 if behaviour == "partial" else None
    for job in ue.subsystem.queue.jobs:
        render_mrq_job(job, seq, half)
    ue.complete_render(True)
    return 0 if ue.state["quit"] == 1 else 4


if __name__ == "__main__":
    sys.exit(main())
