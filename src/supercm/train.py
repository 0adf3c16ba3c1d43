"""One trainer for every base method, with or without SuperCM.

Each iteration minimises ``CE(labeled) + β·L_CM(labeled + unlabeled) + δ·w(t)·L_base(unlabeled)``
(SPEC §4). The centroids are updated from the labeled features of the batch
*before* the loss. The reported model is the one with the best validation
accuracy; its test accuracy, and the final model's, are reported.

All randomness comes from seeded generators whose states are checkpointed, so a
run killed and resumed with ``--resume`` ends exactly where an uninterrupted run
ends (on the CPU).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from .cm import ClusteringModule
from .config import Config, from_dict
from .data import ArrayDataset, SSLSplit, load_dataset, stratified_split
from .data.augment import Augment
from .methods import StepInputs, build_method
from .models import CMClassifier, build_backbone

CHECKPOINT = "checkpoint.pt"
BEST_MODEL = "best_model.pt"  # weights of the best-validation model: what the run reports
SPLIT = "split.json"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
EVALS = "eval.jsonl"
SUMMARY = "summary.json"


def rampup(iteration: int, length: int) -> float:
    """w(t) = exp(−5 (1 − min(t/T, 1))²); 1 when T = 0."""
    if length <= 0:
        return 1.0
    t = min(iteration / length, 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but CUDA is not available here; use train.device=cpu or auto")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class BatchSampler:
    """Endless batches of indices: a fresh permutation per pass, drawn from its own generator."""

    def __init__(self, indices: Tensor, batch_size: int, seed: int):
        if indices.numel() == 0 and batch_size > 0:
            raise ValueError("cannot draw batches from an empty index set")
        self.indices = indices
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.pos = 0

    def next(self) -> Tensor:
        out = []
        need = self.batch_size
        while need > 0:
            if self.pos >= self.order.numel():
                self.order = self.indices[torch.randperm(self.indices.numel(), generator=self.generator)]
                self.pos = 0
            take = self.order[self.pos : self.pos + need]
            self.pos += take.numel()
            need -= take.numel()
            out.append(take)
        return torch.cat(out) if out else self.indices[:0]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order = state["order"]
        self.pos = int(state["pos"])


@dataclass
class RunResult:
    """What a finished run reports (accuracies in [0, 1])."""

    best_iteration: int
    best_val_accuracy: float
    test_accuracy_at_best_val: float
    final_val_accuracy: float
    final_test_accuracy: float
    ema_best_val_accuracy: float | None
    ema_test_accuracy_at_best_val: float | None
    seconds: float
    iterations: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``argmax logits`` in eval mode (restores the previous mode)."""
    if y.numel() == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, y.numel(), batch_size):
        logits = model(x[i : i + batch_size]).logits
        correct += int((logits.argmax(dim=1) == y[i : i + batch_size]).sum())
    model.train(was_training)
    return correct / y.numel()


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _truncate_jsonl(path: Path, last_iteration: int) -> None:
    """Drop lines written after the checkpoint we resume from (they will be written again)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["iteration"] <= last_iteration:
                keep.append(line)
        except (ValueError, KeyError):
            break  # a line cut by the kill: drop it and everything after
    path.write_text("".join(k + "\n" for k in keep))


class Trainer:
    """Trains one configuration. ``run_dir=None`` keeps everything in memory (no files).

    Usage::

        result = Trainer(cfg, "runs/exp1").fit()
        result = Trainer.resume("runs/exp1").fit()
    """

    def __init__(self, cfg: Config, run_dir: str | Path | None = None, *, dataset: ArrayDataset | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        tc = cfg.train
        seed_everything(tc.seed)
        self.device = resolve_device(tc.device)

        data = dataset if dataset is not None else load_dataset(cfg.data.name, cfg.data.root, **self._loader_kwargs())
        self.num_classes = data.num_classes
        if self.run_dir is not None and (self.run_dir / CONFIG).exists():
            # Compared after filling defaults, so a run saved before a new config key existed
            # (with that key's default behaviour) still resumes.
            if from_dict(yaml.safe_load((self.run_dir / CONFIG).read_text())).to_dict() != cfg.to_dict():
                raise ValueError(
                    f"{self.run_dir} holds a run with another config; resume it with its own config "
                    f"('supercm train --resume {self.run_dir}') or choose another run directory"
                )
        split_path = self.run_dir / SPLIT if self.run_dir else None
        if split_path is not None and split_path.exists():
            self.split = SSLSplit.load(split_path)  # never redrawn on resume
        else:
            self.split = stratified_split(
                data.train_y, cfg.data.num_labeled, cfg.data.num_validation, data.num_classes, tc.seed
            )
        dev = self.device
        self.x_train = data.train_x.to(dev)
        self.y_train = data.train_y.to(dev)
        self.x_test, self.y_test = data.test_x.to(dev), data.test_y.to(dev)
        self.val_idx = self.split.validation.to(dev)
        aug = data.augment if cfg.data.augmentation is None else cfg.data.augmentation
        self.augment = Augment.from_dict({**(aug or {}), "draw": cfg.data.augment_draw}) if cfg.data.augment else Augment()

        backbone = build_backbone(cfg.model.backbone, data.input_shape, **cfg.model.options)
        head = ClusteringModule(
            backbone.out_features,
            data.num_classes,
            centroids=cfg.cm.centroids,
            temperature=cfg.cm.temperature,
            momentum=cfg.cm.momentum,
            alpha=cfg.cm.alpha,
            # Inputs come from our own model; skip the per-step checks (and their CUDA syncs).
            check_inputs=False,
        )
        self.model = CMClassifier(backbone, head).to(dev)
        self.method = build_method(cfg.method.name, cfg.method.options)
        self.method.setup(self.model)
        self.method.to(dev)
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False) if tc.ema_decay > 0 else None

        # foreach: one kernel per group of tensors instead of one per tensor (CPU default is per tensor).
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, foreach=True
        )
        decay_at, factor = cfg.optim.decay_at, cfg.optim.decay_factor
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: factor if decay_at is not None and it >= decay_at else 1.0
        )
        self.labeled_sampler = BatchSampler(self.split.labeled, tc.batch_labeled, tc.seed * 1000 + 1)
        self.unlabeled_sampler = BatchSampler(self.split.unlabeled, tc.batch_unlabeled, tc.seed * 1000 + 2)
        self.aug_generator = torch.Generator(device=dev).manual_seed(tc.seed * 1000 + 3)

        self.iteration = 0
        self.best = {"iteration": 0, "val": -1.0, "test": float("nan")}
        self.ema_best = {"iteration": 0, "val": -1.0, "test": float("nan")}
        self.elapsed = 0.0
        self._tb = None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if split_path is not None and not split_path.exists():
                self.split.save(split_path)
            cfg_path = self.run_dir / CONFIG
            if not cfg_path.exists():
                cfg_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    def _loader_kwargs(self) -> dict:
        kw = dict(self.cfg.data.options)
        if self.cfg.data.download:
            kw["download"] = True
        return kw

    # ------------------------------------------------------------------ resume
    @classmethod
    def resume(cls, run_dir: str | Path, *, dataset: ArrayDataset | None = None) -> "Trainer":
        """Continue the run in ``run_dir`` from its last checkpoint (same config, same split)."""
        run_dir = Path(run_dir)
        ckpt_path = run_dir / CHECKPOINT
        if not (run_dir / CONFIG).exists():
            raise FileNotFoundError(f"{run_dir} is not a run directory (no {CONFIG}); start it with 'supercm train CONFIG'")
        cfg = from_dict(yaml.safe_load((run_dir / CONFIG).read_text()))
        trainer = cls(cfg, run_dir, dataset=dataset)
        if ckpt_path.exists():
            # On the CPU: RNG states must stay CPU byte tensors; load_state_dict moves weights and
            # optimizer state to their own devices.
            trainer.load_state_dict(torch.load(ckpt_path, map_location="cpu", weights_only=True))
        # Lines logged after the checkpoint belong to the lost part of the run.
        _truncate_jsonl(run_dir / METRICS, trainer.iteration)
        _truncate_jsonl(run_dir / EVALS, trainer.iteration)
        return trainer

    def state_dict(self) -> dict:
        state = {
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "labeled_sampler": self.labeled_sampler.state_dict(),
            "unlabeled_sampler": self.unlabeled_sampler.state_dict(),
            "aug_generator": self.aug_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "best": dict(self.best),
            "ema_best": dict(self.ema_best),
            "elapsed": self.elapsed,
            "split_sha256": self.split.checksum(),
        }
        if self.ema_model is not None:
            state["ema_model"] = self.ema_model.state_dict()
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        if state["split_sha256"] != self.split.checksum():
            raise ValueError("checkpoint was written for another data split; refusing to resume on a different split")
        self.iteration = int(state["iteration"])
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.labeled_sampler.load_state_dict(state["labeled_sampler"])
        self.unlabeled_sampler.load_state_dict(state["unlabeled_sampler"])
        self.aug_generator.set_state(state["aug_generator"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        if self.ema_model is not None:
            self.ema_model.load_state_dict(state["ema_model"])
        self.best, self.ema_best = dict(state["best"]), dict(state["ema_best"])
        self.elapsed = float(state["elapsed"])

    def save_checkpoint(self) -> None:
        if self.run_dir is not None:
            _atomic_save(self.state_dict(), self.run_dir / CHECKPOINT)

    # ------------------------------------------------------------------ training
    def _aug(self, x: Tensor) -> Tensor:
        return self.augment(x, self.aug_generator)

    def train_step(self, log_terms: bool = False) -> dict[str, Any]:
        """One iteration; returns the logged scalars (as tensors until logged).

        ``log_terms``: also split L_CM into E1..E4 (extra forward-only work, for the metrics
        file; :meth:`fit` asks for it on logged iterations only).
        """
        cfg = self.cfg
        model, head = self.model, self.model.head
        model.train()
        lab = self.labeled_sampler.next().to(self.device)
        unl = self.unlabeled_sampler.next().to(self.device)
        x_l_raw, y_l = self.x_train[lab], self.y_train[lab]
        x_u_raw = self.x_train[unl]
        x_l, x_u = self._aug(x_l_raw), self._aug(x_u_raw)
        n_l = y_l.numel()

        beta = cfg.cm.beta
        # Centroids are updated from labeled features, without gradient, before the loss (SPEC §3).
        if beta > 0 and cfg.cm.features == "eval_pass":
            # The authors' extra pass: eval mode (running BatchNorm statistics), un-augmented labeled
            # batch, taken before the training pass moves those statistics.
            with torch.no_grad():
                model.eval()
                head.update_centroids(model.backbone(x_l_raw), y_l)
                model.train()
        features = model.backbone(torch.cat([x_l, x_u]))
        if beta > 0 and cfg.cm.features == "reuse":
            head.update_centroids(features[:n_l].detach(), y_l)
        out = head(features)
        ce = F.cross_entropy(out.logits[:n_l], y_l)
        loss = ce
        logs: dict[str, Any] = {"ce": ce.detach()}
        if beta > 0:
            cm = head.loss(features, out)
            loss = loss + beta * cm
            logs["cm"] = cm.detach()
            if log_terms:
                with torch.no_grad():
                    logs.update(zip(("e1", "e2", "e3", "e4"), head.loss_terms(features.detach(), out)))
        w = rampup(self.iteration, cfg.method.rampup)
        if cfg.method.delta > 0 and unl.numel() > 0:
            step = StepInputs(model, x_l, y_l, x_u_raw, x_u, out.logits[n_l:], self._aug, self.iteration)
            base = self.method.unlabeled_loss(step)
            if base is not None:
                loss = loss + cfg.method.delta * w * base
                logs["base"] = base.detach()
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(
                f"loss became {loss.item()} at iteration {self.iteration}; lower optim.lr or cm.beta "
                f"(the last checkpoint, if any, is intact)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.method.after_step(model)
        if self.ema_model is not None:
            self._update_ema()
        self.iteration += 1
        logs.update(loss=loss.detach(), acc_labeled=(out.logits[:n_l].argmax(1) == y_l).float().mean(), w=w)
        logs["lr"] = self.optimizer.param_groups[0]["lr"]
        return logs

    @torch.no_grad()
    def _update_ema(self) -> None:
        d = self.cfg.train.ema_decay
        for e, p in zip(self.ema_model.parameters(), self.model.parameters()):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(self.ema_model.buffers(), self.model.buffers()):
            e.copy_(b)

    def evaluate_now(self, final: bool = False) -> dict[str, float | None]:
        """Validation accuracy; test accuracy only where it is reported (a new best validation
        accuracy, or the final model), so the test set is never scanned for nothing."""
        xv, yv = self.x_train[self.val_idx], self.y_train[self.val_idx]
        rec: dict[str, float | None] = {"iteration": self.iteration}
        models = [("", self.model, self.best)]
        if self.ema_model is not None:
            models.append(("ema_", self.ema_model, self.ema_best))
        for prefix, model, best in models:
            val = evaluate(model, xv, yv)
            improved = val > best["val"]
            test = evaluate(model, self.x_test, self.y_test) if improved or final else None
            rec[prefix + "val"], rec[prefix + "test"] = val, test
            if improved:
                best.update(iteration=self.iteration, val=val, test=test)
                if not prefix:
                    self._save_best_model(val)
        return rec

    def _save_best_model(self, val: float) -> None:
        """Keep the selected (best-validation) model's weights beside the last checkpoint, so
        analyses (``supercm pad``, ``supercm plot``) look at the model whose accuracy is reported.
        Read it with ``torch.load(path, weights_only=True)``."""
        if self.run_dir is not None:
            state = {"iteration": self.iteration, "val": val, "model": self.model.state_dict()}
            _atomic_save(state, self.run_dir / BEST_MODEL)

    def fit(self, on_evaluate: Callable[[dict], None] | None = None) -> RunResult:
        """Train to ``train.iterations``. ``on_evaluate(record)`` is called after every evaluation
        with the record written to eval.jsonl (e.g. to report it to a tuner, which may stop the run
        by raising; the files are closed and the last checkpoint stays intact)."""
        tc = self.cfg.train
        metrics_f = evals_f = None
        if self.run_dir is not None:
            metrics_f = open(self.run_dir / METRICS, "a")
            evals_f = open(self.run_dir / EVALS, "a")
            self._tb = _tensorboard(self.run_dir, self.iteration) if tc.tensorboard else None
        bar = None
        if tc.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=tc.iterations, initial=self.iteration, dynamic_ncols=True, leave=False)
        rec: dict[str, float] = {}
        sink = metrics_f is not None or self._tb is not None or bar is not None  # anyone reading the logs?
        try:
            start = time.perf_counter() - self.elapsed
            while self.iteration < tc.iterations:
                it = self.iteration + 1
                logging = sink and (it % tc.log_every == 0 or it == tc.iterations)
                logs = self.train_step(log_terms=logging)
                if logging:
                    scalars = {k: float(v) for k, v in logs.items()}
                    if metrics_f is not None:
                        metrics_f.write(json.dumps({"iteration": it, **scalars}) + "\n")
                    if self._tb is not None:
                        for k, v in scalars.items():
                            self._tb.add_scalar(f"train/{k}", v, it)
                    if bar is not None:
                        bar.set_postfix(loss=f"{scalars['loss']:.3f}", ce=f"{scalars['ce']:.3f}", refresh=False)
                if it % tc.eval_every == 0 or it == tc.iterations:
                    rec = self.evaluate_now(final=it == tc.iterations)
                    if evals_f is not None:
                        evals_f.write(json.dumps(rec) + "\n")
                        evals_f.flush()
                        metrics_f.flush()
                    if self._tb is not None:
                        for k, v in rec.items():
                            if k != "iteration" and v is not None:
                                self._tb.add_scalar(f"eval/{k}", v, it)
                    if bar is not None:
                        bar.set_postfix(val=f"{rec['val']:.3f}", best=f"{self.best['val']:.3f}", refresh=False)
                    if on_evaluate is not None:
                        on_evaluate(rec)
                if bar is not None:
                    bar.update(1)
                self.elapsed = time.perf_counter() - start
                if (tc.checkpoint_every and it % tc.checkpoint_every == 0) or it == tc.iterations:
                    if metrics_f is not None:
                        metrics_f.flush()
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
            for f in (metrics_f, evals_f):
                if f is not None:
                    f.close()
            if self._tb is not None:
                self._tb.close()
        if not rec:  # resumed a finished run: evaluate the final model again
            rec = self.evaluate_now(final=True)
        result = RunResult(
            best_iteration=self.best["iteration"],
            best_val_accuracy=self.best["val"],
            test_accuracy_at_best_val=self.best["test"],
            final_val_accuracy=rec["val"],
            final_test_accuracy=rec["test"],
            ema_best_val_accuracy=self.ema_best["val"] if self.ema_model is not None else None,
            ema_test_accuracy_at_best_val=self.ema_best["test"] if self.ema_model is not None else None,
            seconds=self.elapsed,
            iterations=self.iteration,
        )
        if self.run_dir is not None:
            tmp = self.run_dir / (SUMMARY + ".tmp")
            tmp.write_text(json.dumps(result.to_dict(), indent=2))
            os.replace(tmp, self.run_dir / SUMMARY)
        return result


def _tensorboard(run_dir: Path, iteration: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        return None
    # purge_step drops events a killed run wrote after its last checkpoint.
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=iteration or None)
