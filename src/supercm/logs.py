"""What a run reports and where: :class:`RunResult`, the training and evaluation logs, TensorBoard, the bar.

``metrics.jsonl`` holds the logged scalars of logged iterations, ``eval.jsonl`` one record per
evaluation, TensorBoard (when installed) the same scalars; every value is a plain JSON number or
null (never a bare ``NaN``). Logged tensors are read from the device once per logged iteration
(:func:`read_scalars`), averaged over the ranks in a data-parallel run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .rundir import EVALS, METRICS


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
    # Domain adaptation only: target test accuracy (and iteration) of the iterate each label-free rule
    # chose (supercm.evaluation.LABEL_FREE_RULES; the scores read no target label). DEV is None
    # without a source-validation split.
    dev_test_accuracy: float | None = None
    dev_iteration: int | None = None
    snd_test_accuracy: float | None = None
    snd_iteration: int | None = None
    entropy_test_accuracy: float | None = None
    entropy_iteration: int | None = None
    im_test_accuracy: float | None = None
    im_iteration: int | None = None

    def to_dict(self) -> dict:
        """As plain JSON values: an accuracy that does not exist (no validation split) is None, not NaN."""
        return jsonable(dict(self.__dict__))

    def selection_rules(self) -> dict[str, float | None]:
        """Test accuracy under each named model-selection rule. In domain adaptation "validation"
        is held-out *source* data and "test" the target test set; the label-free rules (``dev``, ``snd``,
        ``entropy``, ``im``) are there when the run recorded them (None: DEV without a validation split)."""
        rules = {"last": self.final_test_accuracy, "best_validation": self.test_accuracy_at_best_val}
        if self.oracle_test_accuracy is not None:
            rules["oracle_test_selected"] = self.oracle_test_accuracy
        for rule in ("dev", "snd", "entropy", "im"):
            if getattr(self, f"{rule}_iteration") is not None or getattr(self, f"{rule}_test_accuracy") is not None:
                value = getattr(self, f"{rule}_test_accuracy")
                rules[rule] = None if value is None or not math.isfinite(value) else value
        return rules


def jsonable(record: dict) -> dict:
    """NaN/inf floats → None, so the JSON files stay valid JSON (``json`` would write bare ``NaN``)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def read_scalars(logs: dict[str, Any], world: int = 1) -> dict[str, float]:
    """The logged values as Python floats, with one device read for all the tensors among them
    (``float(t)`` per value would wait for the device once per value). Data-parallel (``world`` > 1):
    the tensors are averaged over the ranks (each is a mean over the rank's equal share of the batch)."""
    tensors = {k: v.detach().reshape(()) for k, v in logs.items() if isinstance(v, Tensor)}
    out = {k: float(v) for k, v in logs.items() if not isinstance(v, Tensor)}
    if tensors:
        dtype = torch.float32
        for v in tensors.values():
            dtype = torch.promote_types(dtype, v.dtype)
        if any(v.device.type == "mps" for v in tensors.values()):
            dtype = torch.float32  # no float64 there
        stacked = torch.stack([v.to(dtype) for v in tensors.values()])
        if world > 1:
            torch.distributed.all_reduce(stacked)
            stacked /= world
        values = stacked.tolist()
        out.update(zip(tensors, values))
    return {k: out[k] for k in logs}


def tensorboard(run_dir: Path, iteration: int):
    """A TensorBoard writer that drops events a killed run wrote after ``iteration`` (None when
    tensorboard, an optional extra, is not installed)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=iteration or None)


class RunLogs:
    """The open logs of one :meth:`~supercm.train.Trainer.fit` call: files (``run_dir``), TensorBoard
    and the progress bar, each optional. ``wanted``: whether anything reads the logged scalars."""

    def __init__(self, run_dir: Path | None, iteration: int, total: int, *, tensorboard_on: bool, progress: bool):
        self.metrics = open(run_dir / METRICS, "a") if run_dir is not None else None
        self.evals = open(run_dir / EVALS, "a") if run_dir is not None else None
        self.tb = tensorboard(run_dir, iteration) if run_dir is not None and tensorboard_on else None
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=iteration, dynamic_ncols=True, leave=False)

    @property
    def wanted(self) -> bool:
        return self.metrics is not None or self.tb is not None or self.bar is not None

    def scalars(self, iteration: int, scalars: dict[str, float]) -> None:
        if self.metrics is not None:
            self.metrics.write(json.dumps(jsonable({"iteration": iteration, **scalars})) + "\n")
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"train/{k}", v, iteration)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{scalars['loss']:.3f}", ce=f"{scalars['ce']:.3f}", refresh=False)

    def evaluation(self, record: dict, best_val: float) -> None:
        if self.evals is not None:
            self.evals.write(json.dumps(jsonable(record)) + "\n")
            self.evals.flush()
            self.metrics.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k != "iteration" and v is not None:
                    self.tb.add_scalar(f"eval/{k}", v, record["iteration"])
        if self.bar is not None:
            self.bar.set_postfix(val=f"{record['val']:.3f}", best=f"{best_val:.3f}", refresh=False)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def flush(self) -> None:
        if self.metrics is not None:
            self.metrics.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        for f in (self.metrics, self.evals):
            if f is not None:
                f.close()
        if self.tb is not None:
            self.tb.close()
