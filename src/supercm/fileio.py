"""Atomic file writes: a kill or a full disk leaves the old file or the new one, never a mix."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def tmp_path(path: Path) -> Path:
    """A temporary name beside ``path`` that no other process (or earlier kill) shares."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def atomic_write(path: Path, payload: bytes | str) -> None:
    """Write ``payload`` to ``path`` so that a kill leaves the old file or the new one, never a mix.

    On any error (a full disk included) the temporary file is removed and the old file is intact.
    """
    path = Path(path)
    data = payload.encode() if isinstance(payload, str) else payload
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class UnreadableFileError(ValueError):
    """A file torch cannot read (truncated, not a torch file, or holding more than tensors); one line
    naming the file."""


def load_failure_reason(exc: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` failed, in words, on one line. Never torch's own
    text about the unsafe loader: a file holding Python objects is refused, not loaded another way."""
    text = " ".join(str(exc).split())
    if isinstance(exc, EOFError) or "Ran out of input" in text:
        return "it is empty or cut short"
    if "Weights only load failed" in text or "weights_only" in text:
        return ("it holds Python objects besides tensors, numbers and containers, which are never loaded "
                "(a crafted file, or one saved by other code); save a plain state dict of tensors")
    if ("central directory" in text or "PytorchStreamReader" in text or "zip archive" in text
            or (isinstance(exc, OSError) and exc.errno in (None, 22))):  # 22: EINVAL, a seek past a cut end
        return "it is truncated or corrupt (not a complete torch.save archive)"
    if isinstance(exc, KeyError) or "invalid load key" in text or isinstance(exc, UnicodeDecodeError):
        return "it is not a file written by torch.save"
    return f"{type(exc).__name__}: {text[:100]}" if text else type(exc).__name__


def load_tensors(path: str | os.PathLike, what: str = "a torch file"):
    """``torch.load(path, map_location="cpu", weights_only=True)``: a crafted file runs no code. Any
    failure but a missing file is an :class:`UnreadableFileError` naming the file and the reason."""
    import warnings

    import torch

    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch's note about pickle protocols is not the user's concern
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:
        raise UnreadableFileError(f"{path} cannot be read as {what}: {load_failure_reason(exc)}") from None


def lock_holder(lock_file: str | os.PathLike) -> str | None:
    """Who holds the ``flock`` on ``lock_file`` (the pid written in it, or ``"another process"``), or
    None when nobody does (no file, or a lock left by a process that has died: the kernel freed it)."""
    import fcntl

    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
