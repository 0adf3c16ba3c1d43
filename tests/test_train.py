"""The trainer: the objective it minimises, selection on validation, exact resume."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from supercm.config import ConfigError, from_dict
from supercm.data import load_dataset
from supercm.train import CHECKPOINT, EVALS, METRICS, SUMMARY, BatchSampler, Trainer, rampup

TINY = {
    "data": {"name": "digits", "num_labeled": 50, "num_validation": 100},
    "model": {"backbone": "mlp", "options": {"width": 32, "depth": 1}},
    "train": {"iterations": 30, "batch_labeled": 20, "batch_unlabeled": 20, "eval_every": 10,
              "progress": False, "tensorboard": False, "ema_decay": 0.9},
}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def tiny(**dotted):
    return from_dict(TINY).replace(**dotted)


def test_rampup_shape():
    assert rampup(0, 0) == 1.0
    assert math.isclose(rampup(0, 100), math.exp(-5))
    assert math.isclose(rampup(50, 100), math.exp(-5 * 0.25))
    assert rampup(100, 100) == 1.0 and rampup(500, 100) == 1.0


def test_batch_sampler_covers_each_pass_once():
    s = BatchSampler(torch.arange(10), 4, seed=0)
    drawn = torch.cat([s.next() for _ in range(5)])  # 20 = two passes
    assert sorted(drawn[:10].tolist()) == list(range(10)) and sorted(drawn[10:].tolist()) == list(range(10))


def _objective_by_hand(trainer: Trainer, beta: float):
    """The loss of the next step recomputed from the trainer's own tensors (before it steps)."""
    # Replay the samplers and generators on copies so the trainer itself is untouched.
    lab = BatchSampler(trainer.split.labeled, trainer.cfg.train.batch_labeled, 0)
    lab.load_state_dict(trainer.labeled_sampler.state_dict())
    unl = BatchSampler(trainer.split.unlabeled, trainer.cfg.train.batch_unlabeled, 0)
    unl.load_state_dict(trainer.unlabeled_sampler.state_dict())
    li, ui = lab.next(), unl.next()
    x = torch.cat([trainer.x_train[li], trainer.x_train[ui]])  # digits vectors: no augmentation
    y = trainer.y_train[li]
    model = copy.deepcopy(trainer.model)  # its BatchNorm statistics must not move
    model.train()
    with torch.no_grad():
        f = model.backbone(x)
        head = model.head
        mu = head.centroids.clone()
        tau = float(head.num_updates) + 1
        present = torch.bincount(y, minlength=trainer.num_classes) > 0
        for c in range(trainer.num_classes):
            if present[c]:
                mu[c] = (tau - 1) / tau * mu[c] + f[: y.numel()][y == c].mean(0) / tau
        logits = head.encoder(f)
        gamma = logits.softmax(1)
        ce = F.cross_entropy(logits[: y.numel()], y)
        cm = (gamma * torch.cdist(f, mu).pow(2)).sum() / f.numel()
    return float(ce + beta * cm), float(ce)


@pytest.mark.parametrize("beta", [0.0, 0.7])
def test_logged_loss_is_ce_plus_beta_cm(digits, beta):
    """L = CE(labeled) + β·Σγ‖x−μ‖²/(n·d) with μ updated before the loss; β = 0 is exactly CE."""
    trainer = Trainer(tiny(**{"cm.beta": beta, "train.ema_decay": 0.0}), None, dataset=digits)
    for _ in range(3):
        trainer.train_step()
    want, want_ce = _objective_by_hand(trainer, beta)
    logs = trainer.train_step(log_terms=True)
    assert math.isclose(float(logs["loss"]), want, rel_tol=1e-5)
    assert math.isclose(float(logs["ce"]), want_ce, rel_tol=1e-5)
    if beta > 0:  # the logged split adds up to the CM loss; unlogged steps skip it
        assert math.isclose(sum(float(logs[e]) for e in ("e1", "e2", "e3", "e4")), float(logs["cm"]), rel_tol=1e-4)
        assert "e1" not in trainer.train_step()
    if beta == 0:
        assert float(logs["loss"]) == float(logs["ce"])
        assert "cm" not in logs and trainer.model.head.centroids.abs().sum() == 0


def test_short_run_learns_and_reports_test_at_best_validation(digits, tmp_path):
    cfg = tiny(**{"cm.beta": 0.3, "train.iterations": 150, "train.eval_every": 25})
    result = Trainer(cfg, tmp_path / "run", dataset=digits).fit()
    assert result.best_val_accuracy > 0.5  # chance is 0.1
    evals = [json.loads(line) for line in (tmp_path / "run" / EVALS).read_text().splitlines()]
    best = max(evals, key=lambda r: r["val"])  # first maximum, as the trainer keeps
    assert result.best_iteration == best["iteration"]
    assert result.test_accuracy_at_best_val == best["test"]
    assert result.final_test_accuracy == evals[-1]["test"]
    # Test accuracy is computed exactly where validation improved, and at the end.
    running = -1.0
    for r in evals:
        assert (r["test"] is not None) == (r["val"] > running or r is evals[-1])
        running = max(running, r["val"])
    metrics = [json.loads(line) for line in (tmp_path / "run" / METRICS).read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == list(range(1, 151))
    assert {"loss", "ce", "cm", "e1", "e2", "e3", "e4", "lr"} <= set(metrics[-1])
    assert json.loads((tmp_path / "run" / SUMMARY).read_text())["iterations"] == 150


def test_validation_and_test_are_disjoint_from_training_samples(digits):
    t = Trainer(tiny(), None, dataset=digits)
    lab, unl, val = (set(s.tolist()) for s in (t.split.labeled, t.split.unlabeled, t.split.validation))
    assert not (lab & unl) and not (lab & val) and not (unl & val)
    assert len(lab | unl | val) == digits.train_y.numel()
    assert torch.bincount(digits.train_y[t.split.labeled]).tolist() == [5] * 10


# Resume must restore every random state: augmentation noise and dropout make both matter.
RANDOM = {"cm.beta": 0.5, "train.iterations": 40, "train.checkpoint_every": 20,
          "data.augmentation": {"noise_std": 0.1}, "model.options": {"width": 32, "depth": 1, "dropout": 0.2}}


def _resume_half_way(digits, tmp_path, tamper=None):
    """A 40-iteration run, and the same run stopped at 20, checkpoint optionally tampered, resumed."""
    import yaml

    cfg = tiny(**RANDOM)
    full = Trainer(cfg, tmp_path / "full", dataset=digits)
    full_result = full.fit()
    half = Trainer(cfg.replace(**{"train.iterations": 20}), tmp_path / "half", dataset=digits)
    half.fit()
    if tamper is not None:
        state = torch.load(tmp_path / "half" / CHECKPOINT, weights_only=True)
        tamper(state)
        torch.save(state, tmp_path / "half" / CHECKPOINT)
    (tmp_path / "half" / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))  # continue to 40 iterations
    resumed = Trainer.resume(tmp_path / "half", dataset=digits)
    assert resumed.iteration == 20
    return full, full_result, resumed, resumed.fit()


def test_resume_in_process_is_exact(digits, tmp_path):
    """Stopping at a checkpoint and resuming gives the same weights and metrics as one run."""
    full, full_result, resumed, res = _resume_half_way(digits, tmp_path)
    for k in ("best_val_accuracy", "test_accuracy_at_best_val", "final_test_accuracy", "best_iteration"):
        assert getattr(res, k) == getattr(full_result, k), k
    for (n1, a), (n2, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), n1
    m_full = (tmp_path / "full" / METRICS).read_text()
    m_res = (tmp_path / "half" / METRICS).read_text()
    assert m_full == m_res


def _fresh_generator_state(state, key):
    state[key] = torch.Generator().manual_seed(12345).get_state()


@pytest.mark.parametrize("lost", ["aug_generator", "torch_rng"])
def test_the_resume_test_fails_when_a_random_state_is_not_restored(digits, tmp_path, lost):
    """The guard above can fail: a checkpoint that lost the augmentation generator (noise) or the
    torch RNG (dropout) resumes onto another trajectory."""
    full, _, resumed, _ = _resume_half_way(digits, tmp_path, tamper=lambda s: _fresh_generator_state(s, lost))
    assert (tmp_path / "full" / METRICS).read_text() != (tmp_path / "half" / METRICS).read_text()
    assert any(not torch.equal(a, b) for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()))


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    """A run killed with SIGKILL mid-way and resumed ends with identical metrics (CPU, same seed)."""
    overrides = [
        "data.num_labeled=50", "data.num_validation=100", "model.options={width: 32, depth: 1, dropout: 0.2}",
        "data.augmentation={noise_std: 0.1}",
        "cm.beta=0.3", "train.iterations=400", "train.checkpoint_every=25", "train.eval_every=50",
        "train.batch_labeled=20", "train.batch_unlabeled=20", "train.progress=false", "train.tensorboard=false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "supercm.cli", "train", *overrides]
    subprocess.run([*cmd, "--run-dir", str(tmp_path / "a")], check=True, env=env, capture_output=True)

    proc = subprocess.Popen([*cmd, "--run-dir", str(tmp_path / "b")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "b" / METRICS
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once a checkpoint exists and the run is past it
        if (tmp_path / "b" / CHECKPOINT).exists() and metrics.exists() and len(metrics.read_text().splitlines()) > 60:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(metrics.read_text().splitlines())
    assert done < 400, "the run finished before it could be killed; make it longer"
    subprocess.run([*cmd[:4], "--resume", str(tmp_path / "b")], check=True, env=env, capture_output=True)
    for name in (METRICS, EVALS, SUMMARY):
        a = (tmp_path / "a" / name).read_text()
        b = (tmp_path / "b" / name).read_text()
        if name == SUMMARY:  # wall time differs
            a, b = ({k: v for k, v in json.loads(s).items() if k != "seconds"} for s in (a, b))
        assert a == b, name


def test_resume_refuses_a_different_split(digits, tmp_path):
    t = Trainer(tiny(**{"train.iterations": 5}), tmp_path / "r", dataset=digits)
    t.fit()
    state = torch.load(tmp_path / "r" / CHECKPOINT, weights_only=True)
    state["split_sha256"] = "0" * 64
    torch.save(state, tmp_path / "r" / CHECKPOINT)
    with pytest.raises(ValueError, match="another data split"):
        Trainer.resume(tmp_path / "r", dataset=digits)


def test_eval_pass_mode_uses_unaugmented_eval_features(digits):
    t = Trainer(tiny(**{"cm.beta": 0.3, "cm.features": "eval_pass", "train.ema_decay": 0.0}), None, dataset=digits)
    lab = BatchSampler(t.split.labeled, 20, 0)
    lab.load_state_dict(t.labeled_sampler.state_dict())
    li = lab.next()
    t.model.eval()
    with torch.no_grad():
        f = t.model.backbone(t.x_train[li])
    t.train_step()
    y = t.y_train[li]
    for c in range(10):
        if (y == c).any():
            torch.testing.assert_close(t.model.head.centroids[c], f[y == c].mean(0))  # τ = 1: μ = m


def test_nonfinite_loss_stops_with_clear_error(digits):
    t = Trainer(tiny(**{"cm.beta": 0.3}), None, dataset=digits)
    with torch.no_grad():
        t.model.head.encoder.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="lower optim.lr"):
        t.train_step()


def test_a_run_directory_refuses_another_config(digits, tmp_path):
    Trainer(tiny(**{"train.iterations": 2}), tmp_path / "r", dataset=digits)  # writes config.yaml, split.json
    # No checkpoint yet (a run that failed before its first one): the directory may be reused.
    Trainer(tiny(**{"train.iterations": 2, "train.seed": 5}), tmp_path / "r", dataset=digits).fit()
    with pytest.raises(ValueError, match="already holds a run"):  # now it holds a checkpoint
        Trainer(tiny(**{"train.iterations": 2, "train.seed": 6}), tmp_path / "r", dataset=digits)


def test_a_run_saved_before_a_config_key_existed_still_resumes(digits, tmp_path):
    """config.yaml written by an older version (without data.augment_draw) resumes with that key's default."""
    import yaml

    t = Trainer(tiny(**{"train.iterations": 4, "train.checkpoint_every": 2}), tmp_path / "r", dataset=digits)
    t.fit()
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    del saved["data"]["augment_draw"]
    (tmp_path / "r" / "config.yaml").write_text(yaml.safe_dump(saved))
    resumed = Trainer.resume(tmp_path / "r", dataset=digits)
    assert resumed.iteration == 4 and resumed.cfg.data.augment_draw == "sample"


def test_batch_draw_reaches_the_trainer_and_config_errors_name_the_key(digits):
    t = Trainer(tiny(**{"data.augment_draw": "batch", "data.augmentation": {"noise_std": 0.1}}), None, dataset=digits)
    assert t.augment.draw == "batch" and t.augment.noise_std == 0.1
    with pytest.raises(ConfigError, match="data.augment_draw"):
        tiny(**{"data.augment_draw": "image"})
    with pytest.raises(ConfigError, match="set data.augment_draw instead"):
        tiny(**{"data.augmentation": {"crop_pad": 2, "draw": "batch"}})


def test_the_authors_ce_baseline_batch_has_no_unlabeled_samples(digits):
    """configs/paper's CE baseline uses the authors' batch: 100 labeled, 0 unlabeled."""
    t = Trainer(tiny(**{"train.batch_labeled": 40, "train.batch_unlabeled": 0, "data.augmentation": {"noise_std": 0.1}}),
                None, dataset=digits)
    logs = [t.train_step() for _ in range(3)]
    assert all(math.isfinite(float(l["loss"])) for l in logs) and float(logs[-1]["loss"]) == float(logs[-1]["ce"])
