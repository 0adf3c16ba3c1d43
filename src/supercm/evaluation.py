"""Evaluation and model selection: accuracy (sharded over data-parallel ranks) and the selection rules.

The rules a run reports, each a test accuracy:

* **best validation** — the iterate with the best accuracy on the labeled validation split (in
  domain adaptation: held-out *source* samples; it reads no target label). The headline.
* **EMA** — the same rule for the weight-EMA copy of the model (``train.ema_decay`` > 0).
* **last** — the final iterate.
* **oracle** (domain adaptation only) — the iterate with the best *target test* accuracy. It
  selects on the test set, as the field's common code does: an upper bound, never a result.

The test set is scanned only where a rule reports it (a new best validation accuracy, the final
model, and every evaluation in domain adaptation for the oracle), so it chooses nothing else.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .data.stream import iter_rows
from .logs import RunResult


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000, index: Tensor | None = None,
             world: int = 1, rank: int = 0) -> float:
    """Top-1 accuracy of ``argmax logits`` in eval mode (restores the previous mode) over the rows
    ``index`` of ``x``/``y`` (all rows without it), read ``batch_size`` rows at a time as ``x[chunk]``
    (an :class:`~supercm.data.stream.ImageStore` decodes the chunks ahead in its worker processes).

    Data-parallel (``world`` > 1, inside an initialised process group): each rank scores its own
    contiguous share of the rows and one all-reduce adds the counts, so every rank returns the
    accuracy of the whole set after 1/world of the work (the count is exact: no padding, no
    sample seen twice)."""
    n = int(y.numel()) if index is None else int(index.numel())
    if n == 0:
        return float("nan")
    if index is None:
        index = torch.arange(n, device=y.device)
    lo, hi = rank * n // world, (rank + 1) * n // world
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=y.device)
    chunks = [index[i : min(i + batch_size, hi)] for i in range(lo, hi, batch_size)]
    for chunk, x_chunk in zip(chunks, iter_rows(x, chunks)):
        logits = model(x_chunk).logits
        correct += (logits.argmax(dim=1) == y[chunk]).sum()
    model.train(was_training)
    if world > 1:
        torch.distributed.all_reduce(correct)
    return int(correct) / n


class Selection:
    """Scores models on the validation and test sets and keeps each selection rule's choice.

    ``x_train``/``y_train`` with ``val_index``: the validation rows; ``x_test``/``y_test``: the test
    (target test) set; ``uda``: also keep the oracle rule. State (:meth:`state_dict`) is checkpointed."""

    def __init__(self, x_train: Tensor, y_train: Tensor, val_index: Tensor, x_test: Tensor, y_test: Tensor, *,
                 uda: bool, world: int = 1, rank: int = 0):
        self.x_train, self.y_train, self.val_index = x_train, y_train, val_index
        self.x_test, self.y_test = x_test, y_test
        self.uda, self.world, self.rank = uda, world, rank
        self.best = {"iteration": 0, "val": -1.0, "test": float("nan")}
        self.ema_best = {"iteration": 0, "val": -1.0, "test": float("nan")}
        self.oracle = {"iteration": 0, "test": -1.0}

    def __call__(self, iteration: int, model: nn.Module, ema_model: nn.Module | None = None, *, final: bool = False,
                 on_best: Callable[[float], None] | None = None) -> dict[str, float | None]:
        """The evaluation record of ``iteration``: validation accuracy of each model; test accuracy
        where a rule reports it. ``on_best(val)`` runs when ``model`` (not the EMA) improves."""
        rec: dict[str, float | None] = {"iteration": iteration}
        models = [("", model, self.best)]
        if ema_model is not None:
            models.append(("ema_", ema_model, self.ema_best))
        for prefix, m, best in models:
            val = evaluate(m, self.x_train, self.y_train, index=self.val_index, world=self.world, rank=self.rank)
            improved = val > best["val"]
            test = (evaluate(m, self.x_test, self.y_test, world=self.world, rank=self.rank)
                    if improved or final or self.uda else None)
            rec[prefix + "val"], rec[prefix + "test"] = val, test
            if improved:
                best.update(iteration=iteration, val=val, test=test)
                if not prefix and on_best is not None:
                    on_best(val)
        if self.uda and rec["test"] > self.oracle["test"]:
            self.oracle.update(iteration=iteration, test=rec["test"])
        return rec

    def result(self, final: dict, *, ema: bool, seconds: float, iterations: int) -> RunResult:
        """What the run reports, from the last evaluation record ``final`` and the rules' choices."""
        return RunResult(
            best_iteration=self.best["iteration"],
            # -1 is "never improved": no validation split (num_validation=0); reported as null.
            best_val_accuracy=self.best["val"] if self.best["val"] >= 0 else float("nan"),
            test_accuracy_at_best_val=self.best["test"],
            final_val_accuracy=final["val"],
            final_test_accuracy=final["test"],
            ema_best_val_accuracy=(self.ema_best["val"] if self.ema_best["val"] >= 0 else float("nan")) if ema else None,
            ema_test_accuracy_at_best_val=self.ema_best["test"] if ema else None,
            seconds=seconds,
            iterations=iterations,
            # -1: no labelled target test set (own folders without data.options.test): null, as the rest.
            oracle_test_accuracy=self.oracle["test"] if self.uda and self.oracle["test"] >= 0 else None,
            oracle_iteration=self.oracle["iteration"] if self.uda and self.oracle["test"] >= 0 else None,
        )

    def state_dict(self) -> dict:
        return {"best": dict(self.best), "ema_best": dict(self.ema_best), "oracle": dict(self.oracle)}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.ema_best = dict(state["best"]), dict(state["ema_best"])
        self.oracle = dict(state.get("oracle", self.oracle))
