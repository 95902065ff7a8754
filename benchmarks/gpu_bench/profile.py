"""Section profile: torch.profiler's top kernels and the time per kernel class."""

from __future__ import annotations

import re
from typing import Any



from gpu_bench.harness import Case, Harness


KERNEL_CLASSES = (  # first match wins: Inductor/Triton, cuDNN/cuBLAS/CUTLASS, copies, ATen's eager kernels
    ("generated (triton/inductor)", re.compile(r"triton|cpp_fused|kernel_cpp|Torch-Compiled", re.I)),
    ("conv/GEMM", re.compile(r"conv|gemm|cutlass|cudnn|xmma|wgmma|sm\d+_|implicit|_mm|matmul|winograd|dgrad|wgrad",
                             re.I)),
    ("layout/copy", re.compile(r"memcpy|memset|copy|nchw|nhwc|transpose|permute|cat|pad|fill", re.I)),
    ("eager elementwise/reduce", re.compile(r"elementwise|vectorized|reduce|unrolled|softmax|pool|upsample|grid_sampl|"
                                            r"batch_norm|elu|aten::", re.I)),
)


def _profile_summary(prof: Any, cuda: bool, title: str) -> dict[str, Any]:
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    try:
        table = prof.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=70)
    except Exception:  # noqa: BLE001 - newer torch names the device column differently
        sort = "self_device_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=70)
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        if cuda:
            spent = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
            if getattr(event, "device_type", None) is not None and str(event.device_type).endswith("CPU"):
                continue
        else:
            spent = event.self_cpu_time_total
            if not event.key.startswith(("aten::", "cpp_fused", "mkldnn")):
                continue
        if spent:
            name = next((label for label, pattern in KERNEL_CLASSES if pattern.search(event.key)), "other")
            totals[name] = totals.get(name, 0.0) + spent
    whole = sum(totals.values()) or 1.0
    return {"title": title, "sort": sort, "table": table,
            "classes": {k: v / whole for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}}


class Profile(Harness):
    def profile(self) -> None:
        """Top kernels of the fastest inference and training rows (by self device time; CPU time on CPU)."""
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        for kind, rank in (("infer", min), ("train", max)):
            done = [(r, fn) for r, fn in self.candidates[kind] if r.value is not None and not r.error]
            if not done:
                continue
            best, fn = rank(done, key=lambda item: item[0].value)

            def build() -> Case:
                with profile(activities=activities) as prof:
                    for _ in range(3):
                        fn()
                    self.sync()
                self.profiles[kind] = _profile_summary(prof, self.cuda, f"{best.section}: {best.name}")
                return Case(lambda: None, None, f"of {best.section} '{best.name}', 3 calls")

            self.row("profile", f"{kind}: {best.name}", build, unit="", reps=0, need_s=10, limit_s=60)
            print(f"\n--- profile, {best.section}: {best.name} (3 calls) ---\n{self.profiles.get(kind, {}).get('table')}")
            classes = self.profiles.get(kind, {}).get("classes", {})
            print("time by kernel class: " + ", ".join(f"{k} {v:.0%}" for k, v in classes.items()) + "\n")
