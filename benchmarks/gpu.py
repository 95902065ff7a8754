"""QW-Net speed on one GPU: training blocks/s, data-loader blocks/s, 1920×1088 inference ms; plain vs optimized.

Every configuration is first checked against the plain fp32 PyTorch model on the same inputs (relative error
‖out − plain‖/‖plain‖, or of the first training loss), then timed after warm-up: CUDA events around each call,
median of many calls (time.perf_counter on CPU). Sections (``--sections``; each row is time-boxed, and a row that
fails or runs out of time is reported in the table, not fatal):

  correctness  fused filter vs plain (fp32), optimized inference vs plain (random and, with --store, real blocks)
  infer        one recurrent 1920×1088 frame (warp + network): fp32, fp16, bf16, fp16 channels_last with folded
               batch norm and the fused filter, + CUDA graph, + torch.compile, + both
  train        one optimizer step of 64 blocks of 256×256×8 (Ranger, the QW-Net loss): fp32, bf16 autocast,
               bf16 channels_last + fused filter, + torch.compile; micro-batches halve on out-of-memory and
               the step accumulates gradients (noted in the row)
  qat          the same step for the quantization-aware model (training/quantization/fake_quant.py): fp32 plain, optimized
  loader       the real DataLoader (training/data.py, augmentation on) with every core, from a block store of
               random data that this script builds, into pinned memory and onto the device
  int8         the exported integer network (training/export/integer_ref.py) with its quantized convs as int8 GEMMs
               (torch._int_mm): checked against the integer reference, timed per frame
  profile      torch.profiler's top kernels of the fastest inference and training configurations, and the time
               per kernel class (conv/GEMM, generated, eager elementwise, layout/copy): why a goal is missed

Goals: train bf16 ≥ 400 blocks/s, QAT ≥ 200 blocks/s, inference ≤ 2 ms per 1920×1088 frame. "goal×" is
value/goal for rates and goal/value for times (≥ 1 meets the goal); "vs plain" is the speed-up over the section's
plain-PyTorch row of the same run.

A CPU smoke run (small sizes, compile rows off unless --compile on; timings on a shared machine are noise):

    .venv/bin/python benchmarks/gpu.py --device cpu --quick --out /tmp/gpu.json

On a GPU machine without network access, install the packages of benchmarks/gpu_requirements.txt from wheels
downloaded elsewhere (`pip download -r benchmarks/gpu_requirements.txt -d wheels`, then
`pip install --no-index --find-links wheels -r benchmarks/gpu_requirements.txt`) and run

    python3 benchmarks/gpu.py --device cuda --out gpu.json

The whole run is budgeted to --budget-s (default 460 s on CUDA, compile time included); rows that would not fit
are skipped with a note. Results (rows, profiles, environment) are rewritten to --out after every row.
"""

from __future__ import annotations

import argparse

import torch

from gpu_bench.correctness import Correctness
from gpu_bench.harness import Row
from gpu_bench.inference import Inference
from gpu_bench.int8 import Int8
from gpu_bench.loader import Loader
from gpu_bench.profile import Profile
from gpu_bench.training import Training


class Bench(Correctness, Inference, Training, Loader, Int8, Profile):
    """The harness (gpu_bench/harness.py) with every section's job (one module each in gpu_bench/)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes (a CPU smoke run)")
    parser.add_argument("--out", help="write the results as JSON here (rewritten after every row)")
    parser.add_argument("--store", help="also check on the first blocks of this block store (real inputs)")
    parser.add_argument("--checkpoint", help="start every model from this training checkpoint's weights and config")
    parser.add_argument("--preset", default="paper", help="model preset without --checkpoint (default: paper)")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="torch.compile rows: auto = on for cuda, off for cpu")
    parser.add_argument("--budget-s", type=float, help="wall-clock budget (default 460 on cuda, 900 on cpu)")
    parser.add_argument("--sections", default="correctness,infer,train,qat,loader,int8,profile",
                        help="comma-separated subset, in this order")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    args.budget_s = args.budget_s or (460.0 if args.device == "cuda" else 900.0)
    if hasattr(torch._dynamo.config, "cache_size_limit"):  # one graph per compiled model is expected; room for more
        torch._dynamo.config.cache_size_limit = 64
    bench = Bench(args)
    wanted = args.sections.split(",")
    sections = {"correctness": bench.correctness, "infer": bench.inference, "train": lambda: bench.training(False),
                "qat": lambda: bench.training(True), "loader": bench.loader, "int8": bench.int8,
                "profile": bench.profile}
    unknown = set(wanted) - set(sections)
    if unknown:
        parser.error(f"--sections: unknown {sorted(unknown)} (known: {', '.join(sections)})")
    for name, run in sections.items():
        if name in wanted:
            try:
                run()
            except Exception as exc:  # noqa: BLE001 - setup of a section failed: report it, go on with the next
                bench.rows.append(Row(name, "(section setup)", "", error=f"{type(exc).__name__}: {exc}"[:300]))
                bench._done(bench.rows[-1])
    bench.finish()


if __name__ == "__main__":
    main()
