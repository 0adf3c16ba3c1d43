"""Worker processes that end with the process that started them.

A pool worker (``demo``, the benchmark sweeps) whose parent is killed with ``kill -9`` would
otherwise live on as an orphan: finish its run holding the run directory's lock, then block
forever writing its result to a pipe nobody reads. :func:`die_with_parent`, called first in the
worker (a pool ``initializer``), asks Linux to send it SIGKILL when its parent dies
(``PR_SET_PDEATHSIG``) and, everywhere, starts a thread that ends the worker once its parent is
gone (its parent pid changes). Killed, the worker's ``flock`` on its run directory is released by
the kernel, and its last checkpoint is intact for a rerun to resume.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

#: Seconds between two checks of the parent by the watchdog thread.
POLL_SECONDS = 1.0


def _pdeathsig() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(parent_pid: int | None = None) -> None:
    """End this process when ``parent_pid`` (default: the current parent) is no longer its parent."""
    parent = parent_pid if parent_pid is not None else os.getppid()
    _pdeathsig()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(POLL_SECONDS)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="supercm-lifeline", daemon=True).start()
