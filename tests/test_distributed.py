"""Issue 13 §1 (first piece): BatchNorm synchronised over gloo on the CPU.

Two processes, each holding half of a batch, must compute what one process computes on the whole
batch: the same normalised outputs, the same running statistics, and the same gradients (for the
inputs, and for the parameters once averaged over the ranks, as data-parallel training does).
"""

from __future__ import annotations

import copy
import gc
import os
import sys
import weakref

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from process_group import gloo_group, spawn
from torch import nn

from supercm.distributed import SyncBatchNorm, convert_sync_batchnorm

WORLD = 2
# float32, sums in another order. atol: a bias right before a BatchNorm has gradient 0 in exact
# arithmetic, so its computed gradient is rounding noise (~1e-6) in both runs.
TOL = dict(rtol=1e-5, atol=1e-5)


def _model(bn: type[nn.Module], dim: int) -> nn.Module:
    torch.manual_seed(0)
    if dim == 2:
        m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), bn(4), nn.ReLU(), nn.Conv2d(4, 2, 1), bn(2))
    else:
        m = nn.Sequential(nn.Linear(5, 6), bn(6), nn.ReLU(), nn.Linear(6, 3), bn(3))
    with torch.no_grad():  # non-trivial affine parameters
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    return m


def _batch(dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 5, 5, generator=g) * 3 + 1 if dim == 2 else torch.randn(8, 5, generator=g) * 3 + 1
    w = torch.randn(x.shape[0], *([2, 5, 5] if dim == 2 else [3]), generator=g)
    return x, w


def _run(model, x, w, steps=2):
    """Two training steps' outputs and gradients, then an eval-mode output; loss = mean(w · y)."""
    outs = []
    for _ in range(steps):
        model.zero_grad()
        x = x.detach().requires_grad_(True)
        y = model(x)
        (w * y).sum().div(x.shape[0]).backward()
        outs.append((y.detach(), x.grad.detach(), [p.grad.detach().clone() for p in model.parameters()]))
    model.eval()
    ev = model(x.detach()).detach()
    model.train()
    stats = [b.detach().clone() for b in model.buffers()]
    return outs, ev, stats


def _worker(rank, world, init_file, dim, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = convert_sync_batchnorm(_model(nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d, dim))
        assert sum(isinstance(m, SyncBatchNorm) for m in model.modules()) == 2
        x, w = _batch(dim)
        n = x.shape[0] // world
        shard = slice(rank * n, (rank + 1) * n)
        # Each rank's loss is the mean over its shard; the global loss is their mean.
        outs = []
        for _ in range(2):
            model.zero_grad()
            xs = x[shard].clone().requires_grad_(True)
            y = model(xs)
            (w[shard] * y).sum().div(n).backward()
            grads = [p.grad.detach().clone() for p in model.parameters()]
            for g in grads:
                dist.all_reduce(g)
                g /= world
            outs.append((y.detach(), xs.grad.detach() / world, grads))
        model.eval()
        ev = model(x[shard]).detach()
        model.train()
        # Frozen statistics (VAT's probe, Π's second pass): batch statistics, no update.
        before = [b.clone() for b in model.buffers()]
        for m in model.modules():
            if isinstance(m, SyncBatchNorm):
                m.track_running_stats = False
        frozen = model(x[shard]).detach()
        unchanged = all(torch.equal(a, b) for a, b in zip(before, model.buffers()))
        stats = [b.detach().clone() for b in before]
        torch.save((outs, ev, stats, frozen, unchanged), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("dim", [1, 2])
def test_sync_batchnorm_over_gloo_equals_one_process(tmp_path, dim):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(r, WORLD, str(tmp_path / "store"), dim, str(tmp_path)))
             for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
        assert p.exitcode == 0
    results = {r: torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)}

    single = _model(nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d, dim)
    x, w = _batch(dim)
    ref_outs, ref_eval, ref_stats = _run(copy.deepcopy(single), x, w)
    n = x.shape[0] // WORLD
    for rank, (outs, ev, stats, frozen, unchanged) in results.items():
        shard = slice(rank * n, (rank + 1) * n)
        for (y, gx, gp), (ry, rgx, rgp) in zip(outs, ref_outs):
            torch.testing.assert_close(y, ry[shard], **TOL)
            torch.testing.assert_close(gx, rgx[shard], **TOL)
            for a, b in zip(gp, rgp):
                torch.testing.assert_close(a, b, **TOL)
        torch.testing.assert_close(ev, ref_eval[shard], **TOL)
        for a, b in zip(stats, ref_stats):
            torch.testing.assert_close(a.float(), b.float(), **TOL)  # running mean/var, batches tracked
        assert unchanged
    # Frozen statistics normalise with the global batch too.
    single_frozen = copy.deepcopy(single)
    _run(single_frozen, x, w)
    for m in single_frozen.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
    ref_frozen = single_frozen(x).detach()
    for rank, (_, _, _, frozen, _) in results.items():
        torch.testing.assert_close(frozen, ref_frozen[rank * n:(rank + 1) * n], **TOL)


def test_sync_batchnorm_without_a_process_group_is_batchnorm():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    sync = convert_sync_batchnorm(copy.deepcopy(bn))
    assert isinstance(sync, SyncBatchNorm)
    x = torch.randn(4, 3, 2, 2)
    assert torch.equal(sync(x), bn(x))
    assert torch.equal(sync.running_var, bn.running_var)
    sync.eval(), bn.eval()
    assert torch.equal(sync(x), bn(x))


# --------------------------------------------------------------------------- the trainer, data-parallel

TRAIN = {
    "data": {"name": "digits", "num_labeled": 50, "num_validation": 50},
    "model": {"backbone": "mlp", "options": {"width": 32, "depth": 2}},
    "cm": {"beta": 0.3},
    # SGD: Adam divides each gradient by its own magnitude, so the gradients that are 0 in exact arithmetic
    # (weights on the digits' constant pixels, followed by BatchNorm) become ±lr steps of rounding noise
    # that differs with the summation order; the logged losses agree under Adam too, the weights do not.
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "train": {"iterations": 12, "batch_labeled": 16, "batch_unlabeled": 16, "eval_every": 4, "checkpoint_every": 4,
              "progress": False, "tensorboard": False, "ema_decay": 0.9, "sync_batchnorm": True},
}


def _train_worker(rank, world, init_file, run_dir, out_dir, dotted):
    with gloo_group(rank, world, init_file) as hold:
        from supercm.config import from_dict
        from supercm.data import load_dataset
        from supercm.train import Trainer

        from supercm.train import evaluate

        t = hold(Trainer(from_dict(TRAIN).replace(**dotted), run_dir if rank == 0 else None, dataset=load_dataset("digits")))
        result = t.fit()
        seen = []  # rows this rank scores in a sharded evaluation of the test set

        class Counting(nn.Module):
            def __init__(self, model):
                super().__init__()
                self.model = model

            def forward(self, x):
                seen.append(x.shape[0])
                return self.model(x)

        acc = evaluate(Counting(t.model), t.x_test, t.y_test, batch_size=100, world=world, rank=rank)
        torch.save({"state": t.model.state_dict(), "result": result.to_dict(), "step": type(t._step_call).__name__,
                    "eval": (acc, sum(seen))}, os.path.join(out_dir, f"rank{rank}.pt"))


def _spawn(target, tmp_path, *args, store: str = "store"):
    """``target(rank, WORLD, init_file, *args)`` on WORLD processes; a new ``store`` file for each
    process group started in one test (a file store is not reused)."""
    spawn(target, WORLD, str(tmp_path / store), *args)


@pytest.mark.parametrize("dotted", [
    {},
    {"method.name": "pseudo_label", "method.options": {"variant": "textbook"}, "train.batch_unlabeled": 32},
    # Losses of the whole unlabeled batch (MCC, BNM: computed on every rank's rows, gathered with
    # gradient; BNM on each rank's own rows is 31-36 % off here) and a term that owns parameters
    # (DANN's discriminator, whose gradients DistributedDataParallel averages with the model's).
    {"method.name": "dann", "method.options": {"hidden": 16}, "train.batch_unlabeled": 32,
     "regularisers": [{"name": "mcc", "weight": 1.0}, {"name": "bnm", "weight": 0.5}]},
    # Random numbers drawn for the batch: the augmentation (noise here), VAT's start direction, the
    # second views of Π-Model and the authors' Pseudo-Label. Drawn for the global batch, each rank
    # takes its rows, so they are the one-process run's (drawn per rank: 2e-2 off at the first step).
    # ξ = 0.5: at VAT's default 1e-3 the probe's gradient is a difference of nearly equal float32
    # numbers, and summing in another order moves the loss by 3e-4 (the test would measure rounding).
    # The probe still amplifies rounding a little: measured 1.1e-5 at step 9, so 5e-5 for this case.
    {"method.name": "vat", "method.delta": 1.0, "method.options": {"xi": 0.5}, "data.augmentation": {"noise_std": 0.1},
     "regularisers": [{"name": "pi_model", "weight": 1.0}, {"name": "pseudo_label", "weight": 1.0}]},
])
def test_two_gloo_processes_train_what_one_process_trains(tmp_path, dotted):
    """The same global batch and seed on 2 processes (gloo, synchronised BatchNorm,
    DistributedDataParallel) and on 1: the same logged losses and accuracies, the same evaluations
    and selected model, identical centroids on every rank. Tolerance: float32 sums in another order;
    1e-5 relative on every logged value and on the weights after 12 steps (measured: 2e-7 and 4e-7;
    without synchronised BatchNorm: 0.5 and 0.37). Evaluation is sharded: each rank scores half of
    the test set and both return the accuracy of the whole set."""
    import json

    from supercm.config import from_dict
    from supercm.data import load_dataset
    from supercm.train import Trainer

    _spawn(_train_worker, tmp_path, str(tmp_path / "ddp"), str(tmp_path), dotted)
    single = Trainer(from_dict(TRAIN).replace(**dotted), tmp_path / "one", dataset=load_dataset("digits"))
    single.fit()
    ddp = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    one = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in ddp] == [r["iteration"] for r in one] == list(range(1, 13))
    rel = 5e-5 if dotted.get("method.name") == "vat" else 1e-5
    for a, b in zip(ddp, one):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=rel, abs=1e-7), (a["iteration"], k)
    evals_ddp = [json.loads(line) for line in (tmp_path / "ddp" / "eval.jsonl").read_text().splitlines()]
    evals_one = [json.loads(line) for line in (tmp_path / "one" / "eval.jsonl").read_text().splitlines()]
    # Accuracies: float32 rounding can flip a near-tied argmax (the model is near chance after 12
    # steps), so within 3 samples of the 599 test / 50 validation samples.
    assert [e["iteration"] for e in evals_ddp] == [e["iteration"] for e in evals_one]
    for a, b in zip(evals_ddp, evals_one):
        for k in a:
            if k != "iteration" and a[k] is not None and b[k] is not None:
                assert abs(a[k] - b[k]) <= 3 / 599 + 1e-12 or abs(a[k] - b[k]) <= 1 / 50 + 1e-12, (a, b)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for name, value in single.model.state_dict().items():
        for r in ranks:
            if value.is_floating_point():
                torch.testing.assert_close(r["state"][name], value, rtol=rel, atol=1e-6)
            else:
                assert torch.equal(r["state"][name], value)
    assert torch.equal(ranks[0]["state"]["head.centroids"], ranks[1]["state"]["head.centroids"])
    assert [r["step"] for r in ranks] == ["DistributedDataParallel"] * WORLD
    from supercm.train import evaluate

    whole = evaluate(single.model, single.x_test, single.y_test)
    n_test = single.y_test.numel()
    assert [r["eval"][1] for r in ranks] == [n_test // 2, n_test - n_test // 2]  # 599 rows: 299 + 300
    assert ranks[0]["eval"][0] == ranks[1]["eval"][0] == pytest.approx(whole, abs=3 / n_test + 1e-12)
    assert not (tmp_path / "ddp" / "rank1").exists() and (tmp_path / "ddp" / "checkpoint.pt").exists()


def test_mixed_precision_data_parallel_trains_like_one_process(tmp_path):
    """bf16 autocast on 2 processes, with the gathered whole-batch losses (MCC, BNM) on bf16 logits:
    it trains, and stays within bf16's rounding of one process (1e-2 relative asserted; measured 4e-3 at most)."""
    import json

    from supercm.config import from_dict
    from supercm.data import load_dataset
    from supercm.train import Trainer

    dotted = {"train.precision": "bf16", "method.name": "mcc", "train.batch_unlabeled": 32, "train.iterations": 6,
              "regularisers": [{"name": "bnm", "weight": 0.5}]}
    _spawn(_train_worker, tmp_path, str(tmp_path / "ddp"), str(tmp_path), dotted)
    Trainer(from_dict(TRAIN).replace(**dotted), tmp_path / "one", dataset=load_dataset("digits")).fit()
    ddp, one = ([json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
                for d in ("ddp", "one"))
    assert len(ddp) == len(one) == 6
    for a, b in zip(ddp, one):
        for k in ("loss", "ce", "cm", "base", "bnm"):
            assert a[k] == pytest.approx(b[k], rel=1e-2, abs=1e-4), (a["iteration"], k)


# --------------------------------------------------------------------------- torchrun

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI_RUN = [os.path.join(ROOT, "configs", "digits.yaml"), "train.iterations=20", "train.eval_every=10",
           "train.checkpoint_every=10", "train.device=cpu", "train.sync_batchnorm=true", "train.progress=false",
           "train.tensorboard=false", "optim.name=sgd", "optim.lr=0.05", "optim.momentum=0.9", "train.log_every=5"]


def _torchrun(*args: str):
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "supercm",
                           "train", *args], capture_output=True, text=True, env=env, timeout=300)


def test_torchrun_trains_one_run_on_two_processes(tmp_path):
    """``torchrun --nproc_per_node=2 -m supercm train CONFIG`` on the CPU (gloo) logs what
    ``supercm train CONFIG`` logs, within float32 rounding; only rank 0 writes."""
    import json

    from supercm.cli import main

    res = _torchrun(*CLI_RUN, "--run-dir", str(tmp_path / "ddp"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count('"best_iteration"') == 1  # the summary, printed by rank 0 only
    assert main(["train", *CLI_RUN, "--run-dir", str(tmp_path / "one")]) == 0
    ddp, one = ([json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
                for d in ("ddp", "one"))
    assert [r["iteration"] for r in ddp] == [r["iteration"] for r in one] == [5, 10, 15, 20]
    for a, b in zip(ddp, one):
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), (a["iteration"], k)



def test_torchrun_resume_ends_where_an_uninterrupted_run_ends(tmp_path, capsys):
    """Kill + resume under torchrun (same world size): VAT draws its start direction from each rank's
    own random state, which the checkpoint holds for every rank. Another number of processes is refused."""
    from supercm.cli import main

    vat = [*CLI_RUN, "method.name=vat", "method.delta=1"]
    assert _torchrun(*vat, "--run-dir", str(tmp_path / "full")).returncode == 0
    half = vat[:1] + ["train.iterations=10"] + vat[2:]
    assert _torchrun(*half, "--run-dir", str(tmp_path / "half")).returncode == 0
    cfg = tmp_path / "half" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("iterations: 10", "iterations: 20"))
    res = _torchrun("--resume", str(tmp_path / "half"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "full" / "metrics.jsonl").read_text() == (tmp_path / "half" / "metrics.jsonl").read_text()
    assert (tmp_path / "full" / "eval.jsonl").read_text() == (tmp_path / "half" / "eval.jsonl").read_text()
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("full", "half"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["world_size"] == 2 and len(a["rank_rng"]) == 2
    assert main(["train", "--resume", str(tmp_path / "half")]) == 2  # one process: refused
    assert "written by 2 process(es), this run has 1" in capsys.readouterr().err


def _record_outcome(fit, error: type[Exception], out_dir: str, rank: int) -> None:
    """Write "finished", or the message of ``error`` if ``fit()`` raised it, to rank<rank>.txt."""
    try:
        fit()
        message = "finished"
    except error as exc:
        message = str(exc)
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write(message)


def _diverging_worker(rank, world, init_file, out_dir):
    with gloo_group(rank, world, init_file) as hold:
        from supercm.config import from_dict
        from supercm.data import load_dataset
        from supercm.train import Trainer

        cfg = from_dict(TRAIN).replace(**{"train.log_every": 5})
        t = hold(Trainer(cfg, os.path.join(out_dir, "run") if rank == 0 else None, dataset=load_dataset("digits")))
        if rank == 1:  # only rank 1's loss goes bad, at its 7th step (not a logged one)
            original = t.term("cm").loss
            t.term("cm").loss = lambda batch: original(batch) * (float("nan") if batch.iteration == 6 else 1.0)
        _record_outcome(t.fit, FloatingPointError, out_dir, rank)
        # close() drops the DistributedDataParallel wrapper, which holds the process group, though
        # the trainer lives on (here in ``hold``; the first trainer of a process is also held by a
        # frame PyTorch keeps): the group is then destroyed before exit, not by the wrapper's
        # destructor at interpreter exit, which can abort the process.
        wrapper = weakref.ref(t._step_call)
        t.close()
        gc.collect()
        with open(os.path.join(out_dir, f"released{rank}.txt"), "w") as f:
            f.write(str(wrapper() is None))


def test_a_divergence_on_one_rank_stops_every_rank(tmp_path):
    """Rank 1's loss is NaN at iteration 7; at the next logged/evaluation/checkpoint iteration (8)
    both ranks stop with the same iteration in their message, and rank 0's checkpoint of 4 stays."""
    _spawn(_diverging_worker, tmp_path, str(tmp_path))
    messages = [(tmp_path / f"rank{r}.txt").read_text() for r in range(WORLD)]
    for m in messages:
        assert "at iteration 7 (found at iteration 8" in m, m
    assert "checkpoint.pt from iteration 4 is intact" in messages[0]
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["iteration"] == 4
    assert [(tmp_path / f"released{r}.txt").read_text() for r in range(WORLD)] == ["True"] * WORLD


def test_torchrun_stops_a_diverged_run_with_the_one_line_error_on_every_rank(tmp_path):
    """Under torchrun a run whose loss becomes NaN stops on every rank with exit status 2, rank 0
    printing the one-line error once (issue 19), and leaves the process group on the error path too
    (no abort at exit)."""
    res = _torchrun(*CLI_RUN, "optim.lr=1e20", "--run-dir", str(tmp_path / "ddp"))
    import re

    assert res.returncode != 0
    printed = [line for line in res.stderr.splitlines() if line.startswith("supercm: error:")]
    assert len(printed) == 1 and "loss became nan at iteration" in printed[0], res.stderr[-3000:]
    assert "terminate called" not in res.stderr, res.stderr[-3000:]
    # torchrun's summary: every rank that ended by itself ended with the error's status 2 (one may
    # have been stopped by torchrun, SIGTERM, once the other failed), none with an abort (-6).
    codes = {int(c) for c in re.findall(r"exitcode\s*:\s*(-?\d+)", res.stderr)}
    assert 2 in codes and codes <= {2, -15}, res.stderr[-3000:]
    assert not (tmp_path / "ddp" / "checkpoint.pt").exists()


def _unused_worker(rank, world, init_file, out_dir, find_unused):
    """A backbone with a layer that never reaches the loss, under DistributedDataParallel."""
    with gloo_group(rank, world, init_file) as hold:
        from supercm.config import ConfigError, from_dict
        from supercm.data import load_dataset
        from supercm.models.backbones import BACKBONES, MLP
        from supercm.train import Trainer

        class WithDeadLayer(MLP):
            def __init__(self, input_shape, width: int = 32, depth: int = 2):
                super().__init__(input_shape, width, depth)
                self.dead = nn.Linear(3, 3)

        BACKBONES.register("mlp_with_dead_layer", WithDeadLayer)
        cfg = from_dict(TRAIN).replace(**{"model.backbone": "mlp_with_dead_layer", "train.iterations": 3,
                                          "train.find_unused_parameters": find_unused})
        t = hold(Trainer(cfg, dataset=load_dataset("digits")))
        _record_outcome(t.fit, ConfigError, out_dir, rank)
        if find_unused:  # closed, a trainer trains on: the next step wraps the objective again
            t.close()
            t.train_step()
            with open(os.path.join(out_dir, f"rank{rank}.txt"), "a") as f:
                f.write(f" {type(t._step_call).__name__}")


def test_parameters_without_gradient_are_a_config_error_or_found(tmp_path):
    """DistributedDataParallel stops at the step after a trainable parameter got no gradient; the
    trainer says which key finds them (train.find_unused_parameters), and with it the run trains."""
    _spawn(_unused_worker, tmp_path, str(tmp_path), False)
    for r in range(WORLD):
        message = (tmp_path / f"rank{r}.txt").read_text()
        assert "got no gradient" in message and "train.find_unused_parameters=true" in message, message
        assert "\n" not in message
    _spawn(_unused_worker, tmp_path, str(tmp_path), True, store="store2")
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in range(WORLD)] == ["finished DistributedDataParallel"] * WORLD
