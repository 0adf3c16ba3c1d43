"""Where a bf16 training step spends its time (issue 21 §1): which ops run in bfloat16, which convert,
and what SuperCM's float32 CM loss and VAT's float32 probe cost.

    python benchmarks/precision_profile.py --batch 50 --methods supervised vat --out /tmp/prof

For each method (+ SuperCM, β = 1) on WRN-28-2 at ``--batch`` + ``--batch`` (the SSL step of
``benchmarks/throughput.py``), one untimed warm-up step, then:

* **dtype census** of one bf16 step (a ``TorchDispatchMode`` sees every aten op of the forward and
  backward): how many ops produce bfloat16, how many float32, and the conversions between them;
* **profile** of ``--steps`` bf16 steps and of as many fp32 steps (``torch.profiler``, CPU): seconds per
  step, the share of convolutions (forward + backward), of dtype conversions (``aten::_to_copy`` /
  ``copy_``), and the time inside ``SuperCM.loss`` (the float32 island: head reconstruction + CM loss)
  and ``VAT.loss`` (the float32 p(x) pass and probe, then the autocast adversarial forward), both
  labelled by wrapping the two methods with ``record_function`` in this script only;
* whether the CPU has native bfloat16 (oneDNN's check: AVX512-BF16 or AMX).
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import throughput  # noqa: E402

from supercm.methods.supercm import SuperCM  # noqa: E402
from supercm.methods.vat import VAT  # noqa: E402

CONV = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution", "aten::thnn_conv2d",
        "aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward", "aten::mkldnn_convolution_backward")
CONVERT = ("aten::_to_copy", "aten::copy_")


class Census(TorchDispatchMode):
    """Counts aten ops by the dtype of their first floating output, and the conversions between dtypes."""

    def __init__(self):
        super().__init__()
        self.by_dtype: collections.Counter = collections.Counter()
        self.conversions: collections.Counter = collections.Counter()
        self.ops: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        first = next((t for t in torch.utils._pytree.tree_leaves(out)
                      if isinstance(t, torch.Tensor) and t.is_floating_point()), None)
        if first is not None:
            name = func.overloadpacket.__name__
            self.by_dtype[str(first.dtype)] += 1
            self.ops[str(first.dtype)][name] += 1
            src = next((t for t in torch.utils._pytree.tree_leaves(args)
                        if isinstance(t, torch.Tensor) and t.is_floating_point()), None)
            if name in ("_to_copy", "to", "copy_") and src is not None and src.dtype != first.dtype:
                self.conversions[f"{src.dtype}->{first.dtype}"] += 1
        return out


def _labelled(cls, label):
    original = cls.loss

    @functools.wraps(original)
    def loss(self, batch):
        with record_function(label):
            return original(self, batch)

    return original, loss


def profile_steps(trainer, steps: int) -> dict:
    step = functools.partial(trainer.train_step, check=False)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - t0) / steps
    total = {e.key: e for e in prof.key_averages()}
    self_us = sum(e.self_cpu_time_total for e in total.values())

    def self_share(names):
        return sum(total[n].self_cpu_time_total for n in names if n in total) / self_us

    def inside(label):
        return total[label].cpu_time_total / 1e6 / steps if label in total else 0.0

    top = sorted(total.values(), key=lambda e: -e.self_cpu_time_total)[:12]
    return {"s_per_step": wall, "conv_share": self_share(CONV), "convert_share": self_share(CONVERT),
            "convert_calls_per_step": sum(total[n].count for n in CONVERT if n in total) / steps,
            "supercm_loss_s": inside("SuperCM.loss"), "vat_loss_s": inside("VAT.loss"),
            "top": [[e.key, e.self_cpu_time_total / 1e6 / steps, e.count // steps] for e in top]}


def run(batch: int, methods, steps: int, threads: int | None, echo=print) -> dict:
    threads = common.set_threads(threads)
    machine = common.machine_info()
    native = bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    saved = {cls: _labelled(cls, f"{cls.__name__}.loss") for cls in (SuperCM, VAT)}
    rows = []
    try:
        for cls, (_, wrapped) in saved.items():
            cls.loss = wrapped
        for method in methods:
            throughput.TASKS["profile"] = (*throughput.TASKS["ssl"][:4], method, throughput.TASKS["ssl"][5])
            row = {"method": method, "batch": batch}
            for precision in ("fp32", "bf16"):
                t = throughput.build_trainer("profile", f"{precision}-supercm", batch)
                t.train_step(check=False)  # warm-up (oneDNN primitives, allocator)
                if precision == "bf16":
                    census = Census()
                    with census:
                        t.train_step(check=False)
                    row["census"] = {"ops_by_dtype": dict(census.by_dtype), "conversions": dict(census.conversions),
                                     "bf16_ops": dict(census.ops["torch.bfloat16"].most_common(12))}
                row[precision] = profile_steps(t, steps)
                echo(f"{method} {precision}: {row[precision]['s_per_step']:.2f} s/step, conv "
                     f"{row[precision]['conv_share']:.0%}, conversions {row[precision]['convert_share']:.1%}")
            rows.append(row)
    finally:
        for cls, (original, _) in saved.items():
            cls.loss = original
        throughput.TASKS.pop("profile", None)
    return {"benchmark": "precision_profile", "command": common.command_line(), "machine": machine,
            "settings": {"batch_labeled": batch, "batch_unlabeled": batch, "steps": steps, "threads": threads,
                         "native_bf16": native}, "results": rows}


def to_markdown(data: dict) -> str:
    s = data["settings"]
    out = [*common.markdown_heading("bf16 step profile (issue 21 §1)", data),
           f"WRN-28-2 + SuperCM, batch {s['batch_labeled']} + {s['batch_unlabeled']}, {s['steps']} profiled step(s) "
           f"per precision after one warm-up; native bfloat16 on this CPU (oneDNN): **{s['native_bf16']}**.", ""]
    header = ["method", "precision", "s/step", "conv share", "conversion share", "conversions/step",
              "SuperCM.loss s", "VAT.loss s"]
    rows = []
    for r in data["results"]:
        for p in ("fp32", "bf16"):
            x = r[p]
            rows.append([r["method"], p, f"{x['s_per_step']:.3f}", f"{x['conv_share']:.0%}",
                         f"{x['convert_share']:.1%}", f"{x['convert_calls_per_step']:.0f}",
                         f"{x['supercm_loss_s']:.4f}", f"{x['vat_loss_s']:.3f}"])
    out.append(common.markdown_table(header, rows))
    for r in data["results"]:
        c = r["census"]
        out += ["", f"{r['method']}, one bf16 step: aten ops by output dtype {c['ops_by_dtype']}; conversions "
                f"{c['conversions']}; most frequent bfloat16 ops {c['bf16_ops']}."]
        out += ["", f"{r['method']} bf16, top ops by self time (s/step, calls/step): "
                + "; ".join(f"{k} {v:.3f} ({n})" for k, v, n in r["bf16"]["top"][:8])]
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--methods", nargs="+", default=["supervised", "vat"])
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    data = run(a.batch, a.methods, a.steps, a.threads)
    jp, mp = common.write_results("precision_profile", data, to_markdown(data), a.out)
    print(mp.read_text())
    print(f"wrote {jp} and {mp}")


if __name__ == "__main__":
    main()
