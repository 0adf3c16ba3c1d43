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
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from .cm import ClusteringModule
from .config import Config, OptimConfig, from_dict
from .data import ArrayDataset, DomainPair, SSLSplit, joined_training_set, load_dataset, load_uda, stratified_split, uda_split
from .data.augment import Augment
from .methods import Batch, Term, build_method
from .models import CMClassifier, build_backbone

CHECKPOINT = "checkpoint.pt"
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


def lr_factor(optim: OptimConfig, iteration: int) -> float:
    """The learning-rate multiplier at ``iteration`` (0-based): the annealed schedule of the
    domain-adaptation protocol, (1 + γ·i)^(−p), and/or the step decay of the SSL protocol."""
    factor = (1.0 + optim.anneal_gamma * iteration) ** (-optim.anneal_power) if optim.schedule == "annealed" else 1.0
    if optim.decay_at is not None and iteration >= optim.decay_at:
        factor *= optim.decay_factor
    return factor


def build_optimizer(optim: OptimConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """Adam (the SSL protocol) or SGD with momentum and Nesterov (the domain-adaptation protocol)."""
    # foreach: one kernel per group of tensors instead of one per tensor (CPU default is per tensor).
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov and optim.momentum > 0,
                               weight_decay=optim.weight_decay, foreach=True)
    return torch.optim.Adam(groups, lr=optim.lr, weight_decay=optim.weight_decay, foreach=True)


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
    # Domain adaptation only: target test accuracy at the evaluation where it was highest. It
    # selects on the test set (a leak; what the field's common code reports): never the headline.
    oracle_test_accuracy: float | None = None
    oracle_iteration: int | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def selection_rules(self) -> dict[str, float | None]:
        """Test accuracy under each named model-selection rule. In domain adaptation "validation"
        is held-out *source* data and "test" the target test set."""
        rules = {"last": self.final_test_accuracy, "best_validation": self.test_accuracy_at_best_val}
        if self.oracle_test_accuracy is not None:
            rules["oracle_test_selected"] = self.oracle_test_accuracy
        return rules


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

        # Domain adaptation: one training set [source ; target], target labels hidden (never read).
        self.uda = cfg.data.target is not None
        if dataset is None:
            if self.uda:
                dataset = load_uda(cfg.data.name, cfg.data.target, cfg.data.root)
            else:
                dataset = load_dataset(cfg.data.name, cfg.data.root, **self._loader_kwargs())
        if self.uda != isinstance(dataset, DomainPair):
            raise ValueError("a domain pair (supercm.data.DomainPair) goes with data.target set, an ArrayDataset without it")
        data = joined_training_set(dataset) if self.uda else dataset
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
        elif self.uda:
            self.split = uda_split(dataset.source.train_y, dataset.target.train_y.numel(), cfg.data.num_validation,
                                   data.num_classes, tc.seed)
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
        # The objective's terms, in the order they are summed: SuperCM (when β > 0), the base
        # method, the listed regularisers. (SuperCM first keeps the floating-point sum, and so
        # every run, identical to the trainer's earlier form CE + β·L_CM + δ·w·L_base.)
        self.method = build_method(cfg.method.name, cfg.method.options)
        self.supercm = build_method("supercm", {"features": cfg.cm.features}) if cfg.cm.beta > 0 else None
        self.regularisers = [build_method(r.name, r.options) for r in cfg.regularisers]
        for term in self.terms:
            term.setup(self.model)
            term.to(dev)
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False) if tc.ema_decay > 0 else None

        self.optimizer = build_optimizer(cfg.optim, self._param_groups())
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, partial(lr_factor, cfg.optim))
        self.labeled_sampler = BatchSampler(self.split.labeled, tc.batch_labeled, tc.seed * 1000 + 1)
        self.unlabeled_sampler = BatchSampler(self.split.unlabeled, tc.batch_unlabeled, tc.seed * 1000 + 2)
        self.aug_generator = torch.Generator(device=dev).manual_seed(tc.seed * 1000 + 3)

        self.iteration = 0
        self.best = {"iteration": 0, "val": -1.0, "test": float("nan")}
        self.ema_best = {"iteration": 0, "val": -1.0, "test": float("nan")}
        self.oracle = {"iteration": 0, "test": -1.0}
        self.elapsed = 0.0
        self._tb = None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if split_path is not None and not split_path.exists():
                self.split.save(split_path)
            cfg_path = self.run_dir / CONFIG
            if not cfg_path.exists():
                cfg_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    @property
    def terms(self) -> list[Term]:
        """Every loss term of the objective besides CE, in the order they are summed."""
        return [t for t in (self.supercm, self.method, *self.regularisers) if t is not None]

    def _weighted_terms(self) -> list[tuple[Term, float, str]]:
        """(term, weight at this iteration, log key) for the terms that count at this step."""
        cfg, it = self.cfg, self.iteration
        out = []
        if self.supercm is not None:
            out.append((self.supercm, cfg.cm.beta, "cm"))
        out.append((self.method, cfg.method.delta * rampup(it, cfg.method.rampup), "base"))
        for term, rc in zip(self.regularisers, cfg.regularisers):
            out.append((term, rc.weight * rampup(it, rc.rampup), rc.name))
        return out

    def _param_groups(self) -> list[dict]:
        """The model's parameters (the backbone's at ``optim.backbone_lr_mult`` × lr when that is
        not 1), then the trainable parameters the terms own (DANN's discriminator)."""
        mult = self.cfg.optim.backbone_lr_mult
        if mult == 1.0:
            groups = [{"params": list(self.model.parameters())}]
        else:
            groups = [{"params": list(self.model.backbone.parameters()), "lr": self.cfg.optim.lr * mult},
                      {"params": list(self.model.head.parameters())}]
        own = [p for t in self.terms for p in t.parameters() if p.requires_grad]
        if own:
            groups.append({"params": own})
        return groups

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
            "regularisers": [r.state_dict() for r in self.regularisers],
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "labeled_sampler": self.labeled_sampler.state_dict(),
            "unlabeled_sampler": self.unlabeled_sampler.state_dict(),
            "aug_generator": self.aug_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "best": dict(self.best),
            "ema_best": dict(self.ema_best),
            "oracle": dict(self.oracle),
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
        for r, rs in zip(self.regularisers, state.get("regularisers", [])):
            r.load_state_dict(rs)
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
        self.oracle = dict(state.get("oracle", self.oracle))
        self.elapsed = float(state["elapsed"])

    def save_checkpoint(self) -> None:
        if self.run_dir is not None:
            _atomic_save(self.state_dict(), self.run_dir / CHECKPOINT)

    # ------------------------------------------------------------------ training
    def _aug(self, x: Tensor) -> Tensor:
        return self.augment(x, self.aug_generator)

    def train_step(self, log_terms: bool = False) -> dict[str, Any]:
        """One iteration of ``CE(labeled) + Σ_j weight_j(t)·L_j``; returns the logged scalars
        (as tensors until logged).

        The model is called once, on ``[labeled | source ; unlabeled | target]``; every term
        (SuperCM, the base method, the regularisers) reads what it needs from that one
        :class:`~supercm.methods.Batch`. ``log_terms``: also ask the terms for their extra
        scalars (SuperCM's E1..E4; extra forward-only work, asked on logged iterations only).
        """
        model = self.model
        model.train()
        lab = self.labeled_sampler.next().to(self.device)
        unl = self.unlabeled_sampler.next().to(self.device)
        x_l_raw, y_l = self.x_train[lab], self.y_train[lab]
        x_u_raw = self.x_train[unl]
        x = torch.cat([self._aug(x_l_raw), self._aug(x_u_raw)])
        batch = Batch(model, x, torch.cat([x_l_raw, x_u_raw]), y_l.numel(), y_l, self._aug,
                      self.iteration, self.cfg.train.iterations)
        terms = [(t, w, key) for t, w, key in self._weighted_terms()
                 if w > 0 and (unl.numel() > 0 or not t.needs_unlabeled)]
        for term, _, _ in terms:
            term.before_forward(batch)
        batch.output = model(x)
        ce = F.cross_entropy(batch.logits_labeled, y_l)
        loss = ce
        logs: dict[str, Any] = {"ce": ce.detach()}
        for term, weight, key in terms:
            term_loss = term.loss(batch)
            if term_loss is None:
                continue
            loss = loss + weight * term_loss
            logs[key] = term_loss.detach()
            if log_terms:
                logs.update(term.log_terms(batch))
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(
                f"loss became {loss.item()} at iteration {self.iteration}; lower optim.lr or cm.beta "
                f"(the last checkpoint, if any, is intact)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        for term in self.terms:
            term.after_step(model)
        if self.ema_model is not None:
            self._update_ema()
        self.iteration += 1
        logs.update(loss=loss.detach(), acc_labeled=(batch.logits_labeled.argmax(1) == y_l).float().mean(),
                    w=rampup(self.iteration - 1, self.cfg.method.rampup))
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
            # Domain adaptation scans the target test set at every evaluation, for the (labelled)
            # oracle rule; the other rules never look at it to choose.
            test = evaluate(model, self.x_test, self.y_test) if improved or final or self.uda else None
            rec[prefix + "val"], rec[prefix + "test"] = val, test
            if improved:
                best.update(iteration=self.iteration, val=val, test=test)
        if self.uda and rec["test"] > self.oracle["test"]:
            self.oracle.update(iteration=self.iteration, test=rec["test"])
        return rec

    def fit(self) -> RunResult:
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
            oracle_test_accuracy=self.oracle["test"] if self.uda else None,
            oracle_iteration=self.oracle["iteration"] if self.uda else None,
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
