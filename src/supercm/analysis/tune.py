"""Tuning β and δ by Bayesian optimisation (Optuna's TPE), on the *validation* split only.

Each trial is a normal run directory ``OUT/trial-NNNN`` (config.yaml, metrics, eval.jsonl,
best_model.pt, summary.json), trained by the one trainer with the trial's values. The
objective is the run's best validation accuracy; the test accuracy at that point is kept
as a trial attribute for the record and never reaches the sampler. After every
evaluation the validation accuracy is reported to Optuna, whose percentile pruner stops
a clearly bad trial: past half of the iterations, one whose best validation accuracy so
far is in the bottom tenth of the earlier trials' at the same iteration (validation
accuracy on a few hundred images is noisy; a median rule pruned near-copies of the
best trial in a 10-trial search on digits).

The study lives in a database (SQLite ``OUT/study.db`` by default; any Optuna storage
URL, e.g. PostgreSQL, lets several machines work on one study). ``trials`` is the
number of *finished* (complete or pruned) trials wanted: running the same command again
after an interruption adds only the missing trials, numbered after the existing ones.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, ConfigError, load_config, yaml_load
from ..fileio import lock_holder
from ..methods import Term, build_method, check_terms
from ..train import CHECKPOINT, LOCK, Trainer


@dataclass(frozen=True)
class Param:
    """A searched config key: ``kind`` is ``log`` or ``float`` (in [low, high]), ``int`` or ``choice``."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        if self.kind == "log":
            return trial.suggest_float(self.key, self.low, self.high, log=True)
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high))
        return trial.suggest_categorical(self.key, list(self.choices))


def parse_param(text: str) -> Param:
    """``cm.beta=log:0.01:10``, ``optim.lr=float:1e-4:1e-2``, ``train.batch_labeled=int:16:64``,
    ``cm.centroids=choice:paper,mean``."""
    usage = f"--param {text!r} must look like KEY=log:LOW:HIGH, KEY=float:LOW:HIGH, KEY=int:LOW:HIGH or KEY=choice:A,B"
    if "=" not in text:
        raise ConfigError(usage)
    key, spec = text.split("=", 1)
    kind, _, rest = spec.partition(":")
    if kind == "choice":
        choices = tuple(yaml_load(c) for c in rest.split(",") if c)  # the config's reader: 3e-4 is a number
        if not choices:
            raise ConfigError(usage)
        return Param(key.strip(), kind, choices=choices)
    if kind not in ("log", "float", "int"):
        raise ConfigError(usage)
    try:
        low, high = (float(v) for v in rest.split(":"))
    except ValueError:
        raise ConfigError(usage) from None
    if not low < high or (kind == "log" and low <= 0):
        raise ConfigError(f"--param {text!r}: need LOW < HIGH{' and LOW > 0 for log' if kind == 'log' else ''}")
    return Param(key.strip(), kind, low, high)


def has_unlabeled_loss(cfg: Config) -> bool:
    """Whether the config's base method adds an unlabeled loss (so δ matters)."""
    method = build_method(cfg.method.name, cfg.method.options)
    return type(method).loss is not Term.loss


def default_space(cfg: Config) -> list[Param]:
    """β on a log scale in [0.01, 10]; δ on a log scale in [0.01, 100] when the method has an unlabeled loss."""
    space = [Param("cm.beta", "log", 0.01, 10.0)]
    if has_unlabeled_loss(cfg):
        space.append(Param("method.delta", "log", 0.01, 100.0))
    return space


@dataclass
class TuneResult:
    best_params: dict
    best_value: float  # best validation accuracy
    best_trial: int
    best_run_dir: str
    best_test_accuracy: float | None  # recorded only, never used to choose
    finished_trials: int
    config_path: Path
    study: Any


def _finished(study) -> int:
    from optuna.trial import TrialState

    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


def tune(
    config: str | Path | None,
    trials: int,
    out_dir: str | Path,
    *,
    overrides: tuple[str, ...] | list[str] = (),
    params: list[Param] | None = None,
    storage: str | None = None,
    study_name: str = "supercm",
    seed: int = 0,
    prune: bool = True,
    log=print,
) -> TuneResult:
    """Run trials until the study holds ``trials`` finished ones; write ``OUT/best.yaml``."""
    import optuna

    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"--trials must be a whole number ≥ 1, got {trials!r}")
    cfg = load_config(config, list(overrides))
    check_terms(cfg)
    space = params or default_space(cfg)
    for p in space:  # fail now, not in trial 3, on a misspelt key or a value out of range
        probe = p.choices[0] if p.kind == "choice" else int(p.low) if p.kind == "int" else p.low
        check_terms(cfg.replace(**{p.key: probe}))  # a term's option too (checked above the config layer)
    out = Path(out_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage or f"sqlite:///{out.resolve() / 'study.db'}"
    if storage is not None:  # a bad URL fails before anything is written
        storage = open_storage(storage)
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or open_storage(url)
    pruner = (optuna.pruners.PercentilePruner(10.0, n_startup_trials=3, n_warmup_steps=cfg.train.iterations // 2)
              if prune else optuna.pruners.NopPruner())
    # A resumed study gets a new sampler seed (offset by the trials it holds), or its random
    # start-up phase would propose the first points again.
    sampler = optuna.samplers.TPESampler(seed=seed + _trial_count(study_name, storage),
                                         n_startup_trials=min(10, max(2, trials // 2)))
    study = optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True, direction="maximize",
                                sampler=sampler, pruner=pruner)
    _recover_abandoned(study, log)

    def objective(trial) -> float:
        values = {p.key: p.suggest(trial) for p in space}
        resume = trial.user_attrs.get("resume_run_dir")
        run_dir = Path(resume) if resume else out / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        alive = _hold(run_dir.with_name(f".{run_dir.name}.tune.lock"))  # says "this trial is running" to other tunes
        if resume and (run_dir / CHECKPOINT).is_file():
            trainer = Trainer.resume(run_dir)
        else:
            trainer = Trainer(cfg.replace(**values, **{"train.progress": False}), run_dir)

        def on_evaluate(rec: dict) -> None:
            trial.report(rec["val"], rec["iteration"])  # validation accuracy only
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation {rec['val']:.4f} at iteration {rec['iteration']}")

        try:
            result = trainer.fit(on_evaluate=on_evaluate)
        except optuna.TrialPruned:
            log(f"trial {trial.number}: {values} pruned")
            raise
        finally:
            os.close(alive)
        trial.set_user_attr("test_accuracy_at_best_val", result.test_accuracy_at_best_val)  # for the record
        log(f"trial {trial.number}: {values} best validation {result.best_val_accuracy:.4f}")
        return result.best_val_accuracy

    todo = max(0, trials - _finished(study))
    if todo:
        log(f"study {study_name!r} in {url}: {_finished(study)} finished trials, running {todo} more")
        # A diverging trial (NaN loss at a large β) fails alone; the search goes on.
        study.optimize(objective, n_trials=todo, catch=(FloatingPointError,))
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
        raise ValueError(f"no trial of study {study_name!r} finished with a validation accuracy ({failed} failed, "
                         f"{_finished(study)} pruned or done); see the trials' messages above (a diverging run: lower "
                         f"optim.lr or the searched range of cm.beta), then run the same command again")
    best = study.best_trial
    best_cfg = cfg.replace(**best.params)
    cfg_path = out / "best.yaml"
    cfg_path.write_text(
        f"# best of {_finished(study)} trials of study {study_name!r} (validation accuracy {best.value:.4f}, "
        f"trial {best.number})\n" + yaml.safe_dump(best_cfg.to_dict(), sort_keys=False)
    )
    test = best.user_attrs.get("test_accuracy_at_best_val")
    return TuneResult(dict(best.params), float(best.value), best.number, best.user_attrs.get("run_dir", ""),
                      None if test is None or math.isnan(test) else float(test), _finished(study), cfg_path, study)


def open_storage(url: str):
    """The Optuna storage at ``url``, or a one-line error saying why it cannot be opened."""
    import optuna

    try:
        return optuna.storages.get_storage(url)
    except Exception as exc:  # noqa: BLE001  (SQLAlchemy's and the drivers' errors, whatever they are)
        name = type(exc).__name__
        if url.startswith("sqlite:"):
            why = "the SQLite file cannot be created or opened: its folder must exist and be writable"
        elif name == "NoSuchModuleError":
            why = f"unknown database kind {url.split(':', 1)[0]!r}"
        elif name == "ArgumentError":
            why = "it is not a database URL"
        elif isinstance(exc, ImportError):
            why = "the driver of this database is not installed"
        else:
            why = f"{name}: {' '.join(str(exc).split())[:120]}"
        raise ValueError(f"--storage {url!r} cannot be opened ({why}); give an Optuna storage URL such as "
                         f"sqlite:///PATH/study.db in a writable folder, or leave it out (OUT/study.db)") from None


def _hold(path: Path) -> int:
    """An open descriptor holding an exclusive ``flock`` on ``path`` (released when closed or the process dies)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ValueError(f"{path.parent / path.name[1:].removesuffix('.tune.lock')} is in use by another tune") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _recover_abandoned(study, log) -> None:
    """Trials left RUNNING by a process that died (kill -9, a lost machine): each is marked failed and
    its values queued again, to be resumed in its own run directory from its last checkpoint. A trial
    is abandoned when the lock its tune held (``.trial-NNNN.tune.lock`` beside the run directory, or the
    run directory's own lock) exists here and no live process holds it; a trial running on another
    machine (no such file here) is left alone."""
    from optuna.trial import TrialState


    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run_dir = t.user_attrs.get("run_dir")
        if not run_dir:
            continue
        run_dir = Path(run_dir)
        marks = [p for p in (run_dir.with_name(f".{run_dir.name}.tune.lock"), run_dir / LOCK) if p.exists()]
        if not marks or any(lock_holder(p) is not None for p in marks):
            continue
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"resume_run_dir": str(run_dir)}, skip_if_exists=False)
        log(f"trial {t.number} was left running by a process that has ended (killed?): marked failed; its values "
            f"are tried again, resuming {run_dir} from its last checkpoint")


def _trial_count(name: str, storage) -> int:
    import optuna

    try:
        return len(optuna.load_study(study_name=name, storage=storage).trials)
    except KeyError:  # no such study yet
        return 0
