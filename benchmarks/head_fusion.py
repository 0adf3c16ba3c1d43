"""Does fusing the CM head help? Eager head versus ``torch.compile`` and a hand-fused head.

One iteration = centroid update + forward + CM loss + backward (as in benchmarks/head.py),
float32, 1 thread. Arms, interleaved in one process:

- ``eager``: ``ClusteringModule`` as shipped;
- ``compiled``: the same forward + loss traced by ``torch.compile`` (Inductor: elementwise
  work and reductions fused into generated C++/Triton kernels, the whole forward and backward
  each one autograd node), centroid update eager;
- ``hand_fused``: written here as the fastest eager form found: the whole forward + loss
  as one ``autograd.Function`` with a hand-derived backward (first order only, 'paper' rule,
  T = 1, α = 1) and a minimal centroid update. An upper bound on what fusing by hand could buy;
- ``reference``: benchmarks/head.py's loop reference;
- ``matmul_floor``: the five n×d×K products every implementation needs.

Compilation needs a C++ compiler on CPU and took 9–22 s for the first shape here (less once
Inductor has cached its kernels); it is excluded from the timings. Before timing, the
compiled and hand-fused arms' losses, gradients (and the hand-fused arm's centroids) are
asserted equal to the eager ones.

    python benchmarks/head_fusion.py            # K=100, d=128 and d=512; K=10, d=128
    python benchmarks/head_fusion.py --quick    # one small shape, 3 repetitions
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import head as hb  # noqa: E402

from supercm.cm import cm_loss  # noqa: E402


def _forward_loss(x, weight, bias, centroids):
    out_logits = torch.nn.functional.linear(x, weight, bias)
    gamma = out_logits.softmax(dim=1)
    recon = gamma @ centroids
    return cm_loss(x, gamma, centroids, reconstruction=recon, check_inputs=False)


class _HandFusedLoss(torch.autograd.Function):
    """L_CM of softmax(x Wᵀ + b) and μ in one node; backward by hand (first order).

    With c = ∂out/∂L / (n·d), γ = softmax(z), R = γμ:
    ∂L/∂γ = c (‖μ_k‖² − 2 x μᵀ), ∂L/∂z = softmax-backward, ∂L/∂x = 2c (x − R) + (∂L/∂z) W.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, centroids):
        n, d = x.shape
        gamma = torch.softmax(torch.addmm(bias, x, weight.t()), dim=1)
        recon = torch.mm(gamma, centroids)
        mu_sq = (centroids * centroids).sum(dim=1)
        loss = (torch.dot(x.view(-1), torch.add(x, recon, alpha=-2.0).view(-1)) + torch.dot(gamma.sum(0), mu_sq)) / (n * d)
        ctx.save_for_backward(x, weight, centroids, gamma, recon, mu_sq)
        return loss

    @staticmethod
    def backward(ctx, grad):
        x, weight, centroids, gamma, recon, mu_sq = ctx.saved_tensors
        c = grad / x.numel()
        d_gamma = torch.addmm(mu_sq, x, centroids.t(), alpha=-2.0).mul_(c)
        dz = torch._softmax_backward_data(d_gamma, gamma, 1, gamma.dtype)
        dx = torch.sub(x, recon).mul_(2 * c).addmm_(dz, weight)
        return dx, dz.t().mm(x), dz.sum(0), None


class _HandFusedHead:
    """The hand-fused arm: a minimal 'paper'-rule update and :class:`_HandFusedLoss`."""

    def __init__(self, head):
        self.weight, self.bias = head.encoder.weight, head.encoder.bias
        self.centroids = head.centroids.detach().clone()
        self.tau = head.num_updates.detach().clone()

    @torch.no_grad()
    def update(self, features, labels):
        k = self.centroids.shape[0]
        sums = features.new_zeros(k, features.shape[1]).index_add_(0, labels, features)
        counts = torch.bincount(labels, minlength=k).to(features.dtype)
        self.tau.add_(1)
        rate = counts.clamp(max=1).div_(self.tau)
        self.centroids.mul_(1 - rate[:, None]).addcmul_(sums, (rate / counts.clamp_min(1))[:, None])

    def step(self, x, y):
        self.update(x[: y.numel()].detach(), y)
        loss = _HandFusedLoss.apply(x, self.weight, self.bias, self.centroids)
        loss.backward()
        return loss


def time_shape(n: int, d: int, k: int, reps: int, warmup: int, echo=print) -> dict:
    head, ref = hb.make_pair(d, k)
    x, y = hb.make_batch(n, d, k, seed=0)
    x.requires_grad_(True)
    fused = _HandFusedHead(head)
    for s in range(3):  # same losses, centroids and gradients as the eager head, step by step
        xs, ys = hb.make_batch(n, d, k, seed=100 + s)
        xa, xb = xs.clone().requires_grad_(True), xs.clone().requires_grad_(True)
        head.zero_grad(set_to_none=True)
        la = hb.project_step(head, xa, ys).detach()
        wa, ba = head.encoder.weight.grad.clone(), head.encoder.bias.grad.clone()
        head.zero_grad(set_to_none=True)
        lb = fused.step(xb, ys).detach()
        torch.testing.assert_close(lb, la, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(fused.centroids, head.centroids, rtol=1e-5, atol=1e-6)
        for got, want in ((xb.grad, xa.grad), (head.encoder.weight.grad, wa), (head.encoder.bias.grad, ba)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    compiled = torch.compile(_forward_loss, fullgraph=True, dynamic=False)
    t0 = time.perf_counter()
    compiled(x, head.encoder.weight, head.encoder.bias, head.centroids).backward()
    compile_s = time.perf_counter() - t0

    # Same loss and gradients as the eager head, from the same state.
    head.update_centroids(x[: y.numel()].detach(), y)
    grads = []
    for fn in (lambda: head.loss(x, head(x)), lambda: compiled(x, head.encoder.weight, head.encoder.bias, head.centroids)):
        x.grad = None
        head.zero_grad(set_to_none=True)
        loss = fn()
        loss.backward()
        grads.append((loss.detach(), x.grad.clone(), head.encoder.weight.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

    def compiled_step(module, x, y):
        module.update_centroids(x[: y.numel()].detach(), y)
        compiled(x, module.encoder.weight, module.encoder.bias, module.centroids).backward()

    arms = {
        "eager": hb.step_arm(hb.project_step, head, x, y),
        "compiled": hb.step_arm(compiled_step, head, x, y),
        "hand_fused": hb.step_arm(lambda module, x, y: fused.step(x, y), head, x, y),
        "reference": hb.step_arm(hb.reference_step, ref, x, y),
        "matmul_floor": hb.matmul_floor_arm(x, head.encoder.weight),
    }
    blocks = {a: common.calibrate_block(f, target_s=0.03) for a, f in arms.items()}
    t = common.interleaved_times(arms, reps=reps, warmup=warmup, block=blocks)
    row = {
        "n": n, "d": d, "K": k, "compile_s": compile_s,
        **{f"{a}_s": common.summarize(v) for a, v in t.items()},
        "compiled_speedup_over_eager": common.ratio_summary(t["eager"], t["compiled"]),
        "reference_over_eager": common.ratio_summary(t["reference"], t["eager"]),
        "reference_over_compiled": common.ratio_summary(t["reference"], t["compiled"]),
        "hand_fused_speedup_over_eager": common.ratio_summary(t["eager"], t["hand_fused"]),
        "reference_over_hand_fused": common.ratio_summary(t["reference"], t["hand_fused"]),
        "reference_over_floor": common.ratio_summary(t["reference"], t["matmul_floor"]),
    }
    echo(
        f"n={n} d={d} K={k}: eager {1e6 * row['eager_s']['median']:.0f} µs, compiled "
        f"{1e6 * row['compiled_s']['median']:.0f} µs ({common.fmt_ratio(row['compiled_speedup_over_eager'])} faster), "
        f"reference/eager {common.fmt_ratio(row['reference_over_eager'], 1)}, "
        f"reference/compiled {common.fmt_ratio(row['reference_over_compiled'], 1)}, hand-fused "
        f"{1e6 * row['hand_fused_s']['median']:.0f} µs, reference/hand-fused "
        f"{common.fmt_ratio(row['reference_over_hand_fused'], 1)}"
    )
    return row


def to_markdown(data: dict) -> str:
    s = data["settings"]
    out = [
        *common.markdown_heading("CM head: eager versus torch.compile", data),
        f"One iteration = centroid update + forward + CM loss + backward, float32, {s['reps']} interleaved "
        f"repetitions after {s['warmup']} warm-up (blocks of ≈30 ms), median [IQR] of per-repetition ratios. "
        "Compiled arm: forward + loss under torch.compile (fullgraph, static shapes), update eager; its loss "
        "and gradients were asserted equal to the eager head's. Compile time excluded. Hand-fused arm: forward + "
        "loss as one autograd.Function with a hand-derived first-order backward and a minimal update, written "
        "in the benchmark (losses, centroids and gradients asserted equal to the eager head's over 3 steps).",
        "",
    ]
    rows = [
        [
            r["n"], r["K"], r["d"], f"{r['compile_s']:.0f}",
            f"{1e6 * r['eager_s']['median']:.0f}", f"{1e6 * r['compiled_s']['median']:.0f}",
            common.fmt_ratio(r["compiled_speedup_over_eager"]),
            f"{1e6 * r['reference_s']['median']:.0f}", f"{1e6 * r['matmul_floor_s']['median']:.0f}",
            f"{1e6 * r['hand_fused_s']['median']:.0f}", common.fmt_ratio(r["hand_fused_speedup_over_eager"]),
            common.fmt_ratio(r["reference_over_eager"], 1), common.fmt_ratio(r["reference_over_compiled"], 1),
            common.fmt_ratio(r["reference_over_hand_fused"], 1), common.fmt_ratio(r["reference_over_floor"], 1),
        ]
        for r in data["results"]
    ]
    out.append(common.markdown_table(
        ["n", "K", "d", "compile s", "eager µs", "compiled µs", "compiled speed-up (×)", "reference µs",
         "matmul floor µs", "hand-fused µs", "hand-fused speed-up (×)", "reference / eager",
         "reference / compiled", "reference / hand-fused", "reference / floor"], rows))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one small shape, 3 repetitions")
    p.add_argument("--reps", type=int, default=None, help="measured repetitions (default 20)")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    a = p.parse_args(argv)
    threads = common.set_threads(1)
    machine = common.machine_info()
    shapes = [(32, 16, 10)] if a.quick else [(128, 128, 10), (128, 128, 100), (128, 512, 100)]
    reps, warmup = (a.reps or (3 if a.quick else 20)), (1 if a.quick else 2)
    rows = [time_shape(n, d, k, reps, warmup) for n, d, k in shapes]
    data = {
        "benchmark": "head_fusion",
        "command": common.command_line(),
        "machine": machine,
        "settings": {"reps": reps, "warmup": warmup, "threads": threads},
        "results": rows,
    }
    jp, mp = common.write_results("head_fusion", data, to_markdown(data), a.out)
    print(f"wrote {jp} and {mp}")


if __name__ == "__main__":
    main()
