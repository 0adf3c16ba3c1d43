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
