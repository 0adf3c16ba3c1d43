"""The CM head alone: this project's ClusteringModule versus a straightforward reference.

One iteration = centroid update from the labeled half of the batch + forward +
CM loss + backward (into the features and the encoder), "paper" centroid rule.

The reference is written here the plain way: a Python loop over the K classes for
the centroid update, E1 and E2 computed directly, E3 from the full K×K matrices
ΓᵀΓ and μμᵀ with the diagonal masked. Before timing, both are run from the same
state on the same batches and their losses and centroids are asserted equal.

    python benchmarks/head.py            # full grid (a few minutes)
    python benchmarks/head.py --quick    # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from supercm.cm import ClusteringModule  # noqa: E402


class LoopReference(nn.Module):
    """The CM head as one would first write it (the reference of the comparison)."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.encoder = nn.Linear(in_features, num_classes)
        self.register_buffer("centroids", torch.zeros(num_classes, in_features))
        self.tau = 0

    @torch.no_grad()
    def update_centroids(self, features: Tensor, labels: Tensor) -> None:
        self.tau += 1
        tau = self.tau
        for k in range(self.num_classes):
            mask = labels == k
            if mask.any():
                m_k = features[mask].mean(dim=0)
                self.centroids[k] = (tau - 1) / tau * self.centroids[k] + m_k / tau

    def loss(self, x: Tensor) -> Tensor:
        n, d = x.shape
        gamma = F.softmax(self.encoder(x), dim=1)
        mu = self.centroids
        recon = gamma @ mu
        e1 = ((x - recon) ** 2).sum()
        e2 = ((gamma * (1 - gamma)).sum(dim=0) * (mu**2).sum(dim=1)).sum()
        off_diagonal = 1.0 - torch.eye(self.num_classes, dtype=x.dtype, device=x.device)
        e3 = -((gamma.T @ gamma) * (mu @ mu.T) * off_diagonal).sum()
        return (e1 + e2 + e3) / (n * d)


def make_batch(n: int, d: int, k: int, seed: int, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.randint(0, k, (max(1, n // 2),), generator=g)  # the labeled half of the batch
    return x, y


def make_pair(d: int, k: int, dtype=torch.float32) -> tuple[ClusteringModule, LoopReference]:
    head = ClusteringModule(d, k, centroids="paper", check_inputs=False).to(dtype)
    ref = LoopReference(d, k).to(dtype)
    ref.encoder.load_state_dict(head.encoder.state_dict())
    return head, ref


def project_step(head: ClusteringModule, x: Tensor, y: Tensor) -> Tensor:
    head.update_centroids(x[: y.numel()].detach(), y)
    out = head(x)
    loss = head.loss(x, out)
    loss.backward()
    return loss


def reference_step(ref: LoopReference, x: Tensor, y: Tensor) -> Tensor:
    ref.update_centroids(x[: y.numel()].detach(), y)
    loss = ref.loss(x)
    loss.backward()
    return loss


def check_agreement(n: int, d: int, k: int, steps: int = 3, dtype=torch.float64) -> dict:
    """Run both heads from the same state on the same batches; assert equal losses, centroids, gradients."""
    head, ref = make_pair(d, k, dtype)
    worst = 0.0
    for s in range(steps):
        x, y = make_batch(n, d, k, seed=1000 + s, dtype=dtype)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        la, lb = project_step(head, xa, y).detach(), reference_step(ref, xb, y).detach()
        tol = 1e-9 if dtype == torch.float64 else 1e-4
        torch.testing.assert_close(la, lb, rtol=tol, atol=tol)
        torch.testing.assert_close(head.centroids, ref.centroids, rtol=tol, atol=tol)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=tol * 10, atol=tol)
        torch.testing.assert_close(head.encoder.weight.grad, ref.encoder.weight.grad, rtol=tol * 10, atol=tol)
        head.zero_grad(set_to_none=True)
        ref.zero_grad(set_to_none=True)
        worst = max(worst, abs(la.item() - lb.item()) / max(abs(lb.item()), 1e-30))
    return {"steps": steps, "dtype": str(dtype).replace("torch.", ""), "max_rel_loss_diff": worst}


def step_arm(step, module: nn.Module, x: Tensor, y: Tensor):
    """A timing arm: clear the gradients, then one ``step(module, x, y)``."""

    def run():
        x.grad = None
        module.zero_grad(set_to_none=True)
        step(module, x, y)

    return run


def matmul_floor_arm(x: Tensor, weight: Tensor):
    """A timing arm running only the five n×d×K products any CM head needs.

    Encoder forward (x Wᵀ), decoder (γμ), and the backward products into γ (∂x̃ μᵀ), x (∂z W)
    and W (∂zᵀ x). Every implementation pays them, so they bound the possible speed-up.
    """
    n, d = x.shape
    k = weight.shape[0]
    xd, w = x.detach(), weight.detach().clone()
    mu, g, gr = torch.randn(k, d), torch.randn(n, k), torch.randn(n, d)

    def run():
        xd @ w.T, g @ mu, gr @ mu.T, g.T @ xd, g @ w

    return run


def time_config(n: int, d: int, k: int, reps: int, warmup: int) -> dict:
    """Seconds per iteration of both heads (float32), interleaved, and their ratio."""
    agree64 = check_agreement(n, d, k, dtype=torch.float64)
    agree32 = check_agreement(n, d, k, dtype=torch.float32)
    head, ref = make_pair(d, k)
    x, y = make_batch(n, d, k, seed=0)
    x.requires_grad_(True)

    arms = {
        "project": step_arm(project_step, head, x, y),
        "reference": step_arm(reference_step, ref, x, y),
        "matmul_floor": matmul_floor_arm(x, head.encoder.weight),
    }
    blocks = {name: common.calibrate_block(fn, target_s=0.03) for name, fn in arms.items()}
    times = common.interleaved_times(arms, reps=reps, warmup=warmup, block=blocks)
    return {
        "n": n,
        "d": d,
        "K": k,
        "calls_per_block": blocks,
        "project_s": common.summarize(times["project"]),
        "reference_s": common.summarize(times["reference"]),
        "matmul_floor_s": common.summarize(times["matmul_floor"]),
        "speedup": common.ratio_summary(times["reference"], times["project"]),
        "project_over_floor": common.ratio_summary(times["project"], times["matmul_floor"]),
        "reference_over_floor": common.ratio_summary(times["reference"], times["matmul_floor"]),
        "agreement": [agree64, agree32],
    }


def run(quick: bool = False, reps: int | None = None, threads: int | None = None, echo=print) -> dict:
    threads = common.set_threads(threads)
    machine = common.machine_info()  # at the start: commit, load average
    if quick:
        ks, ds, n0, ns, reps, warmup = (10, 100), (64,), 32, (16, 32), reps or 3, 1
    else:
        ks, ds, n0, ns, reps, warmup = (10, 100, 1000), (128, 512, 2048), 128, (32, 128, 512, 2048), reps or 15, 2
    k_sweep, d_sweep = (100 if 100 in ks else ks[-1]), (512 if 512 in ds else ds[-1])
    grid = [(n0, d, k) for k in ks for d in ds]
    grid += [(n, d_sweep, k_sweep) for n in ns if (n, d_sweep, k_sweep) not in grid]
    rows = []
    for n, d, k in grid:
        r = time_config(n, d, k, reps, warmup)
        rows.append(r)
        echo(
            f"n={n:5d} d={d:5d} K={k:5d}  project {1e6 * r['project_s']['median']:9.1f} µs  "
            f"reference {1e6 * r['reference_s']['median']:10.1f} µs  speed-up {common.fmt_ratio(r['speedup'], 1)}"
        )
    return {
        "benchmark": "head",
        "command": common.command_line(),
        "machine": machine,
        "settings": {"reps": reps, "warmup": warmup, "threads": threads, "labeled_fraction": 0.5, "rule": "paper"},
        "results": rows,
    }


def _scaling(rows: list[dict], key: str, fixed: dict) -> list[tuple[int, float, float]]:
    sel = [r for r in rows if all(r[a] == b for a, b in fixed.items())]
    sel.sort(key=lambda r: r[key])
    return [(r[key], r["project_s"]["median"], r["reference_s"]["median"]) for r in sel]


def to_markdown(data: dict) -> str:
    rows = data["results"]
    s = data["settings"]
    out = [
        *common.markdown_heading("CM head alone: this project vs a loop reference", data),
        f"One iteration = centroid update (labeled half of the batch, 'paper' rule) + forward + CM loss + backward; "
        f"float32; {s['reps']} interleaved repetitions after {s['warmup']} warm-up, each a block of calls lasting "
        f"≈30 ms; median [IQR] of the per-repetition ratios. Losses, centroids and gradients of both were "
        f"asserted equal (float64: rel. 1e-9; float32: 1e-4) before timing. 'matmul floor' = the five n×d×K "
        f"products every implementation needs (encoder forward, γμ, backward into γ, x and W), timed in the same "
        f"interleaved loop; reference / floor is the speed-up a head costing nothing beyond them would reach.",
        "",
    ]
    table = [
        [
            r["n"], r["K"], r["d"],
            f"{1e6 * r['project_s']['median']:.0f}",
            f"{1e6 * r['reference_s']['median']:.0f}",
            common.fmt_ratio(r["speedup"], 1),
            f"{1e6 * r['matmul_floor_s']['median']:.0f}",
            f"{r['project_over_floor']['median']:.1f}",
            f"{r['reference_over_floor']['median']:.1f}",
            f"{r['agreement'][1]['max_rel_loss_diff']:.1e}",
        ]
        for r in rows
    ]
    out.append(
        common.markdown_table(
            ["n", "K", "d", "project µs", "reference µs", "speed-up (×)", "matmul floor µs", "project / floor",
             "reference / floor (= max speed-up)", "float32 rel. loss diff"], table
        )
    )
    n0 = rows[0]["n"]
    out += ["", "Growth of the project head's time (median µs; reference in parentheses):", ""]
    ks = sorted({r["K"] for r in rows if r["n"] == n0})
    ds = sorted({r["d"] for r in rows if r["n"] == n0})
    for d in ds:
        pts = _scaling(rows, "K", {"n": n0, "d": d})
        out.append(f"- n={n0}, d={d}, K = " + ", ".join(f"{k}: {1e6 * p:.0f} ({1e6 * q:.0f})" for k, p, q in pts))
    for k in ks:
        pts = _scaling(rows, "d", {"n": n0, "K": k})
        out.append(f"- n={n0}, K={k}, d = " + ", ".join(f"{d}: {1e6 * p:.0f} ({1e6 * q:.0f})" for d, p, q in pts))
    sweep = [r for r in rows if r["n"] != n0]
    if sweep:
        d, k = sweep[0]["d"], sweep[0]["K"]
        pts = _scaling(rows, "n", {"d": d, "K": k})
        out.append(f"- K={k}, d={d}, n = " + ", ".join(f"{n}: {1e6 * p:.0f} ({1e6 * q:.0f})" for n, p, q in pts))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny grid, 3 repetitions (smoke test)")
    p.add_argument("--reps", type=int, default=None, help="measured repetitions per configuration (default 15)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1, see common.DEFAULT_THREADS)")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    a = p.parse_args(argv)
    data = run(quick=a.quick, reps=a.reps, threads=a.threads)
    jp, mp = common.write_results("head", data, to_markdown(data), a.out)
    print(f"wrote {jp} and {mp}")


if __name__ == "__main__":
    main()
