"""The run directory: its file names, its lock, the checks of what is already in it, and its writes.

A run directory is never lost or poisoned: every file is written atomically (a per-process
temporary name, then ``os.replace``), a process holds an exclusive ``flock`` on ``.lock`` while it
trains in it, every file found there is checked against the config before anything is written, a
checkpoint is only written when every weight and buffer is finite (the trainer's guard checks that
first) and records the config it was written for, and logs written after the checkpoint a run
resumes from are cut back atomically.

:class:`RunDir` is what the trainer holds; :func:`read_run_config` is the one reader of a run's
``config.yaml`` (the command line and ``supercm.analysis`` use it too).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from .config import Config, ConfigError, from_dict, read_yaml_file
from .data import SSLSplit
from .fileio import atomic_write, load_failure_reason

CHECKPOINT = "checkpoint.pt"
BEST_MODEL = "best_model.pt"  # weights of the best-validation model: what the run reports
SPLIT = "split.json"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
EVALS = "eval.jsonl"
SUMMARY = "summary.json"
CLASSES = "classes.json"  # class names in label order, where the dataset knows them
LOCK = ".lock"

#: Keys a checkpoint's config may differ in from ``config.yaml``: they change neither the
#: trajectory so far nor the data (raising ``train.iterations`` extends a finished run).
RESUMABLE_CHANGES = ("train.iterations", "train.progress", "train.tensorboard", "train.checkpoint_every")


class RunDirError(ValueError):
    """A run directory cannot be used as asked; the message names the file and the fix."""


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` that a kill or a full disk cannot leave half-written."""
    # Serialised in memory first: torch.save straight to a full disk fails with a zip-writer
    # message ("unexpected pos"); a plain write fails with ENOSPC, which names the problem.
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def truncate_jsonl(path: Path, last_iteration: int) -> None:
    """Drop lines written after the checkpoint we resume from (they will be written again).

    The kept prefix is written to a temporary file that replaces the log atomically: a kill
    at any moment leaves either the whole old log or the truncated one.
    """
    if not path.exists():
        return
    data = path.read_bytes()
    keep = 0
    for line in data.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n") or json.loads(line)["iteration"] > last_iteration:
                break
        except (ValueError, KeyError, TypeError):
            break  # a line cut by the kill: drop it and everything after
        keep += len(line)
    if keep < len(data):
        atomic_write(path, data[:keep])


def log_iterations(path: Path) -> int:
    """The number of complete records in a jsonl log (0 when absent)."""
    if not path.exists():
        return 0
    return sum(1 for line in path.read_bytes().splitlines() if line.strip())


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dictionaries."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict) and k != "options" and k != "augmentation":
            keys += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(prefix + k)
    return keys


def read_run_config(run_dir: Path) -> Config:
    """The config saved in ``run_dir/config.yaml``, or a :class:`RunDirError`/:class:`ConfigError` saying why not."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not a run directory (no {CONFIG}); start a run with 'supercm train CONFIG'")
    data = read_yaml_file(path)
    if not data:
        raise RunDirError(
            f"{path} is empty or truncated, so the run's config is unknown; restore it "
            f"(the checkpoint records the config it was written for) or start a new run directory"
        )
    try:
        return from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def read_checkpoint(path: Path) -> dict:
    """A checkpoint's state, or a :class:`RunDirError` when it is corrupt, not ours, or diverged."""
    try:
        # On the CPU: RNG states must stay CPU byte tensors; load_state_dict moves weights and
        # optimizer state to their own devices. weights_only: a crafted file runs no code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = load_failure_reason(exc)  # never torch's advice to load unsafely
        raise RunDirError(
            f"{path} is corrupt or not a SuperCM checkpoint ({reason}); it cannot be resumed: "
            f"start the run again in a new run directory"
        ) from None
    needed = ("iteration", "model", "optimizer", "scheduler", "labeled_sampler", "split_sha256")
    missing = [k for k in needed if not isinstance(state, dict) or k not in state]
    if missing:
        raise RunDirError(
            f"{path} is not a SuperCM checkpoint (no {missing[0]!r}); it cannot be resumed: "
            f"start the run again in a new run directory"
        )
    if not all_finite(state["model"].values()):
        raise RunDirError(
            f"{path} holds non-finite weights (NaN or inf: the run diverged); it cannot be resumed: "
            f"start again with a lower optim.lr or cm.beta in a new run directory"
        )
    return state


def all_finite(tensors) -> bool:
    """Whether every floating-point tensor is free of NaN and inf (one host sync)."""
    flags = [torch.isfinite(t).all() for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


#: Descriptors of the run-directory locks this process holds.
_HELD_LOCKS: set[int] = set()


def _close_inherited_locks() -> None:
    """In a forked child (a DataLoader worker of the stream pipeline): close the parent's lock
    descriptors. A ``flock`` belongs to the open file, which a fork shares: without this, the workers of
    a killed trainer would keep its run directory locked until they notice their parent is gone."""
    for fd in _HELD_LOCKS:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


class DirLock:
    """An exclusive ``flock`` on ``run_dir/.lock``: one process trains in a directory at a time."""

    def __init__(self, run_dir: Path):
        import fcntl

        self._fcntl = fcntl
        path = run_dir / LOCK
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunDirError(f"cannot write in the run directory {run_dir}: {exc.strerror}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            raise RunDirError(
                f"{run_dir} is in use: a run is training in it (process {holder}); wait for it to end "
                f"or choose another run directory (nothing was written)"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        _HELD_LOCKS.add(self.fd)

    def release(self) -> None:
        if self.fd is not None:
            _HELD_LOCKS.discard(self.fd)
            self._fcntl.flock(self.fd, self._fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class RunDir:
    """One run's directory: locked while a process trains in it, checked before it is written.

    ``checkpoint_iteration`` is the iteration of the checkpoint on disk that this process wrote
    or resumed from (None: none), which is what :meth:`usable` reports after a divergence."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock: DirLock | None = None
        self.checkpoint_iteration: int | None = None

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    @property
    def locked(self) -> bool:
        return self._lock is not None

    def lock(self) -> None:
        """Create the directory if needed and take its lock (a :class:`RunDirError` if another process holds it)."""
        d = self.path
        if d.exists() and not d.is_dir():
            raise RunDirError(f"run directory {d} exists and is not a directory; choose another --run-dir")
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create the run directory {d}: {exc.strerror or exc}") from None
        self._lock = DirLock(d)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def check(self, cfg: Config, resuming: bool) -> tuple[dict | None, SSLSplit | None]:
        """Check every file in the directory against ``cfg`` before anything is written.

        Returns the checkpoint to resume (None: none) and the saved split where it belongs to this
        run (None: draw it)."""
        d = self.path
        ckpt_path, cfg_path, split_path = d / CHECKPOINT, d / CONFIG, d / SPLIT
        has_ckpt = ckpt_path.exists()
        if has_ckpt and not resuming:
            raise RunDirError(
                f"{d} already holds a run ({CHECKPOINT}); continue it with 'supercm train --resume {d}' "
                f"(Trainer.resume in Python) or choose another run directory (nothing was overwritten)"
            )
        same_config = False
        if cfg_path.exists():
            try:
                saved = read_run_config(d)
            except (ConfigError, RunDirError):
                if resuming or has_ckpt:
                    raise
                saved = None  # no checkpoint depends on it: the directory is reused
            # Compared after filling defaults, so a run saved before a new config key existed
            # (with that key's default behaviour) still resumes.
            same_config = saved is not None and saved.to_dict() == cfg.to_dict()
            if resuming and not same_config:
                raise RunDirError(f"{d} holds a run with another config; resume it with its own config ({CONFIG})")
        if not has_ckpt:
            if (d / SUMMARY).exists():
                raise RunDirError(
                    f"{d} holds {SUMMARY} but no {CHECKPOINT} (a finished run whose checkpoint was removed); "
                    f"choose another run directory (nothing was overwritten)"
                )
            if not same_config:
                results = [n for n in (METRICS, EVALS) if log_iterations(d / n) > 0]
                results += [BEST_MODEL] if (d / BEST_MODEL).exists() else []
                if results:
                    raise RunDirError(
                        f"{d} holds results of a run with another config ({', '.join(results)}) and no checkpoint; "
                        f"choose another run directory, or delete those files to reuse it (nothing was overwritten)"
                    )
        split = None
        if split_path.exists() and (has_ckpt or same_config):
            try:
                split = SSLSplit.load(split_path)  # never redrawn on resume
            except (ValueError, KeyError, TypeError) as exc:
                raise RunDirError(str(exc)) from None
        checkpoint = read_checkpoint(ckpt_path) if has_ckpt else None
        if checkpoint is not None:
            self.check_checkpoint_config(checkpoint, cfg)
        return checkpoint, split

    def check_checkpoint_config(self, state: dict, cfg: Config) -> None:
        if "config" not in state:  # written before checkpoints recorded their config
            return
        try:
            saved = from_dict(state["config"]).to_dict()
        except ConfigError:
            saved = state["config"]
        diff = [k for k in config_diff(saved, cfg.to_dict()) if k not in RESUMABLE_CHANGES]
        if diff:
            raise RunDirError(
                f"{self.path / CHECKPOINT} was written for another config than {self.path / CONFIG} "
                f"(they differ in {', '.join(diff[:5])}); restore the config.yaml this run was started with"
            )

    def write_run_files(self, cfg: Config, classes: list[str] | None, split: SSLSplit, iteration: int) -> None:
        """config.yaml, classes.json and split.json (atomically), and logs cut back to ``iteration``."""
        d = self.path
        text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
        if not (d / CONFIG).exists() or (d / CONFIG).read_text() != text:
            if not (d / CHECKPOINT).exists():
                atomic_write(d / CONFIG, text)
        if classes is not None:  # the label order of the data (e.g. Office-Home's official list order)
            text = json.dumps(classes, indent=1)
            if not (d / CLASSES).exists() or (d / CLASSES).read_text() != text:
                atomic_write(d / CLASSES, text)
        split_path = d / SPLIT
        if not split_path.exists() or _saved_split_differs(split_path, split):
            split.save(split_path)
        # Lines logged after the checkpoint belong to the lost part of the run.
        truncate_jsonl(d / METRICS, iteration)
        truncate_jsonl(d / EVALS, iteration)

    def save_checkpoint(self, state: dict) -> None:
        atomic_save(state, self.path / CHECKPOINT)
        self.checkpoint_iteration = int(state["iteration"])

    def save_best_model(self, iteration: int, val: float, model_state: dict) -> None:
        """The selected (best-validation) model's weights beside the last checkpoint, so analyses
        (``supercm pad``, ``supercm plot``) look at the model whose accuracy is reported. Read it
        with ``torch.load(path, weights_only=True)``."""
        atomic_save({"iteration": iteration, "val": val, "model": model_state}, self.path / BEST_MODEL)

    def write_summary(self, result: dict) -> None:
        atomic_write(self.path / SUMMARY, json.dumps(result, indent=2, allow_nan=False))


def _saved_split_differs(path: Path, split: SSLSplit) -> bool:
    try:
        return json.loads(path.read_text()).get("sha256") != split.checksum()
    except (ValueError, OSError, AttributeError):
        return True


def usable(run_dir: RunDir | None) -> str:
    """What is left to use after a divergence, truthfully."""
    if run_dir is None:
        return "nothing was saved (no run directory)"
    if run_dir.checkpoint_iteration is None:
        return f"no checkpoint was written before it (nothing in {run_dir.path} holds trained weights)"
    return (f"{run_dir.path / CHECKPOINT} from iteration {run_dir.checkpoint_iteration} is intact and holds "
            f"finite weights (it was not overwritten)")
