"""Issue 13 §2–3: mixed precision (train.precision) and a step that does not wait for the host.

The CM loss subtracts nearly equal large sums when features sit near their centroids, so it must
run in float32 under autocast; VAT's probe (ξ = 1e-3) is below bfloat16's resolution, so it runs
in float32 too. fp16 runs skip overflowing steps (the gradient scaler's job) instead of stopping,
and the divergence guard reads the device only on logged, evaluation and checkpoint steps.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from supercm.cm import ClusteringModule, cm_loss, cm_loss_terms


def _near_centroids(n=256, d=128, k=10, noise=0.05, seed=0):
    """Features = their class centroid + small noise, and confident responsibilities: the case where
    L_CM = Σ γ‖x − μ‖² / (n·d) is small while ‖X‖² and Σ γ‖μ‖² are large."""
    g = torch.Generator().manual_seed(seed)
    mu = 3.0 * torch.randn(k, d, generator=g)
    y = torch.arange(n) % k
    x = mu[y] + noise * torch.randn(n, d, generator=g)
    logits = 8.0 * torch.nn.functional.one_hot(y, k).float() + torch.randn(n, k, generator=g)
    return x, logits.softmax(1), mu


def _old_autocast_loss(x, gamma, mu):
    """The loss as computed before issue 13: γμ and Σγ·‖μ‖² as matrix products under autocast
    (so in bfloat16), the rest in float32."""
    recon = gamma @ mu  # bfloat16 under autocast
    kmeans = (x * (x - 2.0 * recon.float())).sum() + (gamma.sum(0) @ (mu * mu).sum(1)).float()
    return kmeans / x.numel()


def test_cm_loss_under_bfloat16_autocast_is_the_float32_loss():
    x, gamma, mu = _near_centroids()
    reference = cm_loss(x.double(), gamma.double(), mu.double()).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = cm_loss(x, gamma, mu)
        terms = cm_loss_terms(x, gamma, mu)
        old = _old_autocast_loss(x, gamma, mu).item()
    assert loss.dtype == torch.float32
    assert abs(loss.item() - reference) / reference < 1e-4
    assert abs(terms.total.item() - reference) / reference < 1e-4
    # What this guards against: the old path was off by tens of percent (0.24 on this case).
    assert abs(old - reference) / reference > 0.05


def test_a_bfloat16_reconstruction_is_recomputed_not_reused():
    x, gamma, mu = _near_centroids()
    reference = cm_loss(x.double(), gamma.double(), mu.double()).item()
    recon_bf16 = (gamma @ mu).bfloat16()
    for fn in (cm_loss, lambda *a, **k: cm_loss_terms(*a, **k).total):
        loss = fn(x, gamma, mu, reconstruction=recon_bf16)
        assert abs(loss.item() - reference) / reference < 1e-4


def test_the_head_under_autocast_gives_float32_responsibilities_and_an_exact_loss():
    """Through ClusteringModule: the encoder runs in bfloat16 (its logits are bfloat16), γ and γμ
    are float32, and L_CM equals a float64 evaluation of the same features, γ and μ."""
    x, _, mu = _near_centroids()
    head = ClusteringModule(x.shape[1], mu.shape[0], check_inputs=False)
    with torch.no_grad():
        head.centroids.copy_(mu)
        head.encoder.weight.copy_(mu / mu.norm(dim=1, keepdim=True) ** 2 * 8)  # confident, near one-hot
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x)
        loss = head.loss(x, out)
    assert out.logits.dtype == torch.bfloat16
    assert out.responsibilities.dtype == out.reconstruction.dtype == torch.float32
    reference = cm_loss(x.double(), out.responsibilities.double(), mu.double()).item()
    assert abs(loss.item() - reference) / reference < 1e-4
    fp32 = head.loss(x, head(x)).item()  # the whole step in float32: only the encoder's rounding differs
    assert abs(loss.item() - fp32) / fp32 < 0.05


def test_the_head_in_float32_is_unchanged():
    """Outside autocast the head does what it always did (same dtypes, same numbers)."""
    torch.manual_seed(0)
    head = ClusteringModule(16, 4)
    x = torch.randn(32, 16)
    head.update_centroids(x, torch.arange(32) % 4)
    out = head(x)
    gamma = head.encoder(x).softmax(1)
    assert torch.equal(out.responsibilities, gamma)
    assert torch.equal(out.reconstruction, gamma @ head.centroids)


# --------------------------------------------------------------------------- the trainer

import json  # noqa: E402

from supercm.config import ConfigError, from_dict  # noqa: E402
from supercm.data import load_dataset  # noqa: E402
from supercm.train import CHECKPOINT, METRICS, Trainer  # noqa: E402

TINY = {
    "data": {"name": "digits", "num_labeled": 50, "num_validation": 50},
    "model": {"backbone": "mlp", "options": {"width": 32, "depth": 1}},
    "cm": {"beta": 0.3},
    "train": {"iterations": 12, "batch_labeled": 16, "batch_unlabeled": 16, "eval_every": 6,
              "checkpoint_every": 6, "progress": False, "tensorboard": False, "ema_decay": 0.0},
}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def tiny(**dotted):
    return from_dict(TINY).replace(**dotted)


def _metrics(run):
    return [json.loads(line) for line in (run / METRICS).read_text().splitlines()]


def _poison(trainer, at_iteration, value=float("nan")):
    """Make SuperCM's loss ``value`` on the step that starts at ``at_iteration`` (0-based)."""
    original = trainer.term("cm").loss

    def loss(batch):
        out = original(batch)
        return out * value if batch.iteration == at_iteration else out

    trainer.term("cm").loss = loss


def test_precision_is_a_checked_config_key():
    assert tiny().train.precision == "fp32"
    assert tiny(**{"train.precision": "bf16"}).train.precision == "bf16"
    with pytest.raises(ConfigError, match="train.precision.*fp32, bf16, fp16"):
        tiny(**{"train.precision": "fp8"})


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_under_autocast(digits, tmp_path, precision):
    t = Trainer(tiny(**{"train.precision": precision, "method.name": "vat", "method.delta": 1.0}), tmp_path / "r",
                dataset=digits)
    seen = {}
    original = t.term("cm").loss

    def spy(batch):
        seen["logits"], seen["gamma"] = batch.logits.dtype, batch.output.responsibilities.dtype
        return original(batch)

    t.term("cm").loss = spy
    result = t.fit()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert seen == {"logits": dtype, "gamma": torch.float32}  # autocast on; γ in float32 (the CM loss needs it)
    assert all(math.isfinite(r["loss"]) for r in _metrics(tmp_path / "r"))
    assert 0.0 <= result.final_val_accuracy <= 1.0
    state = torch.load(tmp_path / "r" / CHECKPOINT, weights_only=True)
    assert ("grad_scaler" in state) == (precision == "fp16")
    assert all(v.dtype != dtype for v in state["model"].values())  # float32 master weights


def test_fp16_resumes_exactly_with_its_gradient_scaler(digits, tmp_path):
    """A kill + resume ends where an uninterrupted fp16 run ends: the scaler's state (scale, growth
    tracker) is in the checkpoint. A skipped step in the first half makes the scale matter."""
    cfg = tiny(**{"train.precision": "fp16", "train.iterations": 12})
    full = Trainer(cfg, tmp_path / "full", dataset=digits)
    _poison(full, 2, float("inf"))
    full.fit()
    half = Trainer(cfg.replace(**{"train.iterations": 6}), tmp_path / "half", dataset=digits)
    _poison(half, 2, float("inf"))
    half.fit()
    assert half.scaler.get_scale() == 2.0 ** 15  # one skipped step halved 2¹⁶
    import yaml

    (tmp_path / "half" / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    resumed = Trainer.resume(tmp_path / "half", dataset=digits)
    assert resumed.scaler.get_scale() == 2.0 ** 15
    resumed.fit()
    assert (tmp_path / "full" / METRICS).read_text() == (tmp_path / "half" / METRICS).read_text()
    a = torch.load(tmp_path / "full" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "half" / CHECKPOINT, weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["grad_scaler"] == b["grad_scaler"]


def test_fp16_skips_an_overflowing_step_instead_of_stopping(digits, tmp_path):
    t = Trainer(tiny(**{"train.precision": "fp16"}), tmp_path / "r", dataset=digits)
    _poison(t, 4, float("inf"))
    for _ in range(4):
        t.train_step()
    before = [p.detach().clone() for p in t.model.parameters()]
    logs = t.train_step()  # the inf loss: skipped by the scaler, no error
    assert not math.isfinite(float(logs["loss"]))
    assert all(torch.equal(b, p) for b, p in zip(before, t.model.parameters()))  # no update
    assert t.scaler.get_scale() == 2.0 ** 15
    assert t.fit().iterations == 12  # and a whole run goes on past it
    assert _metrics(tmp_path / "r")[-1]["iteration"] == 12


def test_fp16_stops_when_every_step_overflows(digits, tmp_path):
    """A run whose every step overflows trains nothing: the collapsing scale is reported as divergence."""
    t = Trainer(tiny(**{"train.precision": "fp16", "train.iterations": 60, "train.eval_every": 50,
                        "train.checkpoint_every": 50}), tmp_path / "r", dataset=digits)
    original = t.term("cm").loss
    t.term("cm").loss = lambda batch: original(batch) * float("nan")
    # Checked on every logged step (log_every=1): 2¹⁶ halved 33 times is the first scale below 2⁻¹⁶.
    with pytest.raises(FloatingPointError, match="gradient scale fell to .* by iteration 33.*train.precision=bf16"):
        t.fit()
    assert not (tmp_path / "r" / CHECKPOINT).exists()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_nan_at_an_unlogged_step_stops_the_run_before_the_next_write(digits, tmp_path, precision):
    """fit() reads the loss only on logged, evaluation and checkpoint iterations. A NaN at iteration 7
    (logs, evaluations and checkpoints every 5) is found at 10, before anything of 6..10 is written:
    the checkpoint of iteration 5 stays, and the message names the iteration the loss went bad."""
    run = tmp_path / "r"
    t = Trainer(tiny(**{"train.precision": precision, "train.iterations": 20, "train.log_every": 5,
                        "train.eval_every": 5, "train.checkpoint_every": 5}), run, dataset=digits)
    _poison(t, 6)  # the 7th step
    with pytest.raises(FloatingPointError, match=r"loss became nan at iteration 7 \(found at iteration 10.*"
                                                 r"checkpoint.pt from iteration 5 is intact"):
        t.fit()
    assert torch.load(run / CHECKPOINT, weights_only=True)["iteration"] == 5
    assert [r["iteration"] for r in _metrics(run)] == [5]
    assert [json.loads(line)["iteration"] for line in (run / "eval.jsonl").read_text().splitlines()] == [5]
    assert t.iteration == 10


def test_fit_logs_what_a_step_by_step_loop_reads(digits, tmp_path):
    """Deferring the guard and reading every logged value in one transfer changes no number: fit()'s
    metrics are the values a loop of checked train_step() calls reads one float at a time."""
    cfg = tiny(**{"method.name": "vat", "method.delta": 1.0, "train.ema_decay": 0.9})
    t = Trainer(cfg, tmp_path / "r", dataset=digits)
    t.fit()
    by_hand = Trainer(cfg, None, dataset=digits)
    want = []
    for _ in range(cfg.train.iterations):
        logs = by_hand.train_step(log_terms=True, check=True)
        want.append({"iteration": by_hand.iteration, **{k: float(v) for k, v in logs.items()}})
    assert _metrics(tmp_path / "r") == want


def test_vat_probe_under_bf16_is_the_float64_direction(digits, monkeypatch):
    """ξ = 1e-3 is below bfloat16's resolution: the probe runs in float32 (with p from a float32 pass),
    and the direction the trainer's bf16 step uses is still the float64 one."""
    import supercm.methods.vat as vat_module
    from test_methods import _trainer_vat_direction_cosines, _vat_trainer

    trainer = _vat_trainer(digits, **{"train.precision": "bf16"})
    for _ in range(5):
        trainer.train_step()
    assert _trainer_vat_direction_cosines(trainer, monkeypatch).min() >= 0.99
    # What it guards against: the probe under bf16 autocast, p from the bf16 training pass.
    monkeypatch.setattr(vat_module, "_autocast_enabled", lambda device_type: False)
    cosine = _trainer_vat_direction_cosines(trainer, monkeypatch)
    assert cosine.median() < 0.5, cosine


@pytest.mark.parametrize("name", ["bnm", "dann", "mcc", "mean_teacher", "pi_model", "pseudo_label", "supervised", "vat"])
def test_every_method_steps_under_bf16_autocast(digits, name):
    t = Trainer(tiny(**{"train.precision": "bf16", "method.name": name, "method.delta": 1.0, "train.ema_decay": 0.9}),
                None, dataset=digits)
    logs = [t.train_step(log_terms=True) for _ in range(3)]
    assert all(math.isfinite(float(v)) for log in logs for v in log.values())


def test_channels_last_trains_the_same_model(tmp_path):
    """train.channels_last only changes the memory layout: an image model's weights and the step's
    batch are NHWC, and the losses are the contiguous run's up to the convolutions' rounding."""
    from supercm.data.base import ArrayDataset

    g = torch.Generator().manual_seed(0)
    data = ArrayDataset("synthetic", torch.randn(200, 3, 12, 12, generator=g), torch.arange(200) % 4,
                        torch.randn(20, 3, 12, 12, generator=g), torch.arange(20) % 4, 4, {"crop_pad": 2})
    cfg = from_dict({"data": {"name": "synthetic", "num_labeled": 40, "num_validation": 20},
                     "model": {"backbone": "cnn", "options": {"width": 8, "convs_per_block": 1}},
                     "cm": {"beta": 0.3}, "method": {"name": "pi_model", "delta": 1.0},
                     "train": {"iterations": 5, "batch_labeled": 8, "batch_unlabeled": 8, "progress": False,
                               "tensorboard": False, "ema_decay": 0.9}})
    runs = {}
    for cl in (False, True):
        t = Trainer(cfg.replace(**{"train.channels_last": cl}), None, dataset=data)
        conv = next(m for m in t.model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == cl
        runs[cl] = [float(t.train_step()["loss"]) for _ in range(5)]
    assert runs[True] == pytest.approx(runs[False], rel=1e-4)


def test_half_precision_on_a_cpu_without_native_support_warns_with_the_fix(monkeypatch):
    """bf16/fp16 on a CPU without AVX512-BF16/AMX runs the slow reference convolution (17× slower
    than fp32 for WRN-28-2 on the project's AVX2 machine): say so, and what to use instead."""
    from supercm import precision as prec

    cpu = torch.device("cpu")
    monkeypatch.setattr(prec, "native_cpu_half", lambda dtype: False)
    with pytest.warns(UserWarning, match="train.precision=fp32"):
        prec.Precision("bf16", cpu)
    monkeypatch.setattr(prec, "native_cpu_half", lambda dtype: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prec.Precision("bf16", cpu)
        prec.Precision("fp32", cpu)
    assert isinstance(prec.native_cpu_half(torch.bfloat16), bool)
