"""Reading a finished run back: its config, data, split and selected model, and its features.

Features for analysis are taken *deterministically*: eval mode (running BatchNorm
statistics), no augmentation, every sample, in order — never from a training loader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import build
from ..config import Config
from ..data import ArrayDataset, DomainPair, SSLSplit, load_dataset
from ..fileio import UnreadableFileError, load_tensors
from ..models import CMClassifier
from ..rundir import BEST_MODEL, CHECKPOINT, CONFIG, SPLIT, read_run_config

#: Layers :func:`extract_features` can read: the backbone output (the CM's input) or the logits.
LAYERS = ("features", "logits")


@dataclass
class LoadedRun:
    """A run directory read back. ``checkpoint`` names the weights loaded (best_model.pt when the
    run kept its best-validation model, else the last checkpoint) and ``iteration`` their step."""

    run_dir: Path
    cfg: Config
    data: ArrayDataset
    split: SSLSplit
    model: CMClassifier
    checkpoint: str
    iteration: int
    pair: DomainPair | None = None  # domain adaptation: the run's source and target

    @property
    def name(self) -> str:
        return self.run_dir.name


def build_model(cfg: Config, data: ArrayDataset) -> CMClassifier:
    """The model the trainer builds for ``cfg`` on ``data`` (untrained, on the CPU)."""
    return build.build_model(cfg, data, torch.device("cpu"))


def read_config(run_dir: str | Path) -> Config:
    """The run's config, read as the trainer reads it (:func:`supercm.rundir.read_run_config`)."""
    return read_run_config(Path(run_dir))


def load_run(run_dir: str | Path, *, data_root: str | None = None, which: str = "best") -> LoadedRun:
    """Load the run in ``run_dir`` with its selected model (``which="best"``: the best-validation
    weights, falling back to the last checkpoint for runs trained before best_model.pt existed;
    ``which="last"``: the last checkpoint). ``data_root`` overrides the run's ``data.root``."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    # The trainer's data ([source ; target] in domain adaptation), from data_root when given.
    data = build.load_data(cfg.replace(**{"data.root": data_root}) if data_root else cfg)
    pair = data.dataset if data.uda else None
    data = data.joined
    split = SSLSplit.load(run_dir / SPLIT)
    model = build_model(cfg, data)
    names = [BEST_MODEL, CHECKPOINT] if which == "best" else [CHECKPOINT]
    for name in names:
        path = run_dir / name
        if path.is_file():
            state = load_tensors(path, "SuperCM weights")  # weights_only: a crafted file runs no code
            if not isinstance(state, dict) or "model" not in state or "iteration" not in state:
                raise UnreadableFileError(f"{path} is not a SuperCM checkpoint (no 'model' and 'iteration')")
            _warn_if_not_the_reported_model(run_dir, name, int(state["iteration"]))
            try:
                model.load_state_dict(state["model"])
            except (RuntimeError, TypeError, AttributeError) as exc:
                raise UnreadableFileError(f"{path} does not fit the model of {run_dir / CONFIG} "
                                          f"({' '.join(str(exc).split())[:160]})") from None
            model.eval()
            return LoadedRun(run_dir, cfg, data, split, model, name, int(state["iteration"]), pair)
    raise FileNotFoundError(f"{run_dir} holds no trained weights ({' or '.join(names)})")


def _warn_if_not_the_reported_model(run_dir: Path, name: str, iteration: int) -> None:
    """best_model.pt should hold the iteration summary.json reports; it may not after a resume from
    an older checkpoint that did not reach the same validation accuracy again (not on the CPU, where
    resume is exact)."""
    import warnings

    summary = run_dir / "summary.json"
    if name != BEST_MODEL or not summary.is_file():
        return
    try:
        best = json.loads(summary.read_text()).get("best_iteration")
    except (ValueError, AttributeError, OSError):  # a damaged summary: nothing to compare with
        return
    if isinstance(best, int) and best != iteration:
        warnings.warn(f"{run_dir}: {BEST_MODEL} holds iteration {iteration} but summary.json reports the best "
                      f"validation accuracy at iteration {best}", stacklevel=3)


@torch.no_grad()
def extract_features(model: nn.Module, x: Tensor, *, layer: str = "features", batch_size: int = 1000) -> Tensor:
    """``layer`` outputs of ``model`` for every row of ``x``, in eval mode (mode restored after).

    ``features``: the backbone output h(x) (the CM's input); ``logits``: the classifier's output.
    """
    if layer not in LAYERS:
        raise ValueError(f"unknown layer {layer!r}; choose one of {', '.join(LAYERS)}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, x.shape[0], batch_size):
        o = model(x[i : i + batch_size].to(device))
        out.append(getattr(o, layer).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl / eval.jsonl file (an empty list when it is missing)."""
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            break  # a line cut by a kill
    return rows


def to_input_shape(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Bring images ``x`` (N, C', H', W') — or flat square images (N, H'·W') — to ``shape`` (C, H, W):
    bilinear resize to H×W, a single channel repeated to C. Values are kept as they are."""
    import torch.nn.functional as F

    if x.dim() == 2:
        side = round(x.shape[1] ** 0.5)
        if side * side != x.shape[1]:
            raise ValueError(f"cannot read samples of width {x.shape[1]} as square images")
        x = x.view(-1, 1, side, side)
    if x.dim() != 4 or len(shape) != 3:
        raise ValueError(f"cannot bring samples of shape {tuple(x.shape[1:])} to {shape}")
    c, h, w = shape
    if x.shape[1] not in (1, c):
        raise ValueError(f"cannot bring {x.shape[1]} channels to {c}")
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return x.expand(-1, c, -1, -1).contiguous() if x.shape[1] != c else x


@dataclass
class Domains:
    """Two sets of inputs to compare, with the names printed beside the PAD."""

    source: Tensor
    target: Tensor
    source_name: str
    target_name: str


def run_domains(run: LoadedRun, target: str | None = None, *, data_root: str | None = None, resize: bool = False) -> Domains:
    """The two domains of a run.

    * SSL run, no ``target``: its training images (labeled ∪ unlabeled, validation excluded) vs
      its test images — the same distribution, so a PAD near 0 is the expected floor;
    * SSL run, ``target`` a dataset name: the run's test images vs every image (train and test) of
      that dataset, which must have the run's input shape (``resize=True``: bring it there with
      :func:`to_input_shape`);
    * domain-adaptation runs (``data.target`` set): the source's test images vs the target's test
      images (both held out of training; ``target`` must not be given). A run on own folders without
      labelled target test images (``data.options.test`` unset) compares every source image with every
      unlabelled target image instead (PAD reads no labels).
    """
    data = run.data
    if run.pair is not None:
        if target is not None:
            raise ValueError(f"{run.run_dir} is a domain-adaptation run: its domains are its own source and target; drop --target")
        s, t = run.pair.source, run.pair.target
        if len(s.test_x) and len(t.test_x):
            return Domains(s.test_x, t.test_x, f"{run.cfg.data.name} test (source)", f"{run.cfg.data.target} test (target)")
        # Own folders (data.options.test unset): no held-out test images; the domains are then every
        # source image and every (unlabelled) target image — no label is read either way.
        return Domains(s.train_x, t.train_x, f"{run.cfg.data.name} images (source)",
                       f"{run.cfg.data.target} unlabelled images (target)")
    if target is None:
        train_idx = torch.cat([run.split.labeled, run.split.unlabeled])
        return Domains(data.train_x[train_idx], data.test_x, f"{data.name} train", f"{data.name} test")
    other = load_dataset(target, data_root or run.cfg.data.root)
    x = torch.cat([other.train_x, other.test_x])
    if tuple(x.shape[1:]) != data.input_shape:
        if not resize:
            raise ValueError(
                f"{target} samples have shape {tuple(x.shape[1:])} but the run was trained on {data.input_shape}; "
                f"pass --resize to bring them to the run's shape"
            )
        x = to_input_shape(x, data.input_shape)
    return Domains(data.test_x, x, f"{data.name} test", f"{target} (all)")
