"""Shared helpers of the benchmarks: interleaved timing, robust summaries, machine info, output.

Every benchmark times its arms *interleaved* in one process (arm A, arm B, arm A, ...
with the order rotated each repetition) and reports the median of per-repetition
ratios with their spread, so a slow drift of the machine (another job starting on
the same cores) hits both arms alike instead of biasing the ratio.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------------------- machine
#: Default torch thread count of the benchmarks. One thread: on this shared 2-core machine,
#: with the other core busy, 2 threads made tiny ops ~100× slower (OpenMP workers waiting
#: for a core), which would measure the neighbour's load rather than our code.
DEFAULT_THREADS = 1


def set_threads(n: int | None) -> int:
    """Fix torch's intra-op thread count (default :data:`DEFAULT_THREADS`) and return it."""
    n = int(n) if n else DEFAULT_THREADS
    torch.set_num_threads(n)
    return torch.get_num_threads()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    """Short HEAD, with ``+dirty`` when tracked files differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dirty_files() -> list[str]:
    """Tracked files that differ from HEAD (the measured code is HEAD plus these)."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout
    except OSError:
        return []
    return [line[3:] for line in out.splitlines() if line.strip()]


def machine_info() -> dict:
    info = {
        "commit": git_commit(),
        "uncommitted_src": [f for f in dirty_files() if f.startswith("src/")],
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": "cuda:" + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


# ----------------------------------------------------------------------------- timing
def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved_times(
    arms: Mapping[str, Callable[[], object]], reps: int, warmup: int = 1, block: int | Mapping[str, int] = 1
) -> dict[str, list[float]]:
    """Seconds per call of each arm, one value per repetition, measured interleaved.

    Each repetition runs every arm for ``block`` calls (an int, or one per arm), in an
    order rotated by one each repetition (A B C, B C A, C A B, ...). ``warmup`` untimed
    repetitions come first.
    """
    names = list(arms)
    blocks = {k: (block[k] if isinstance(block, Mapping) else block) for k in names}
    out: dict[str, list[float]] = {k: [] for k in names}
    for rep in range(warmup + reps):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for name in order:
            fn = arms[name]
            _sync()
            t0 = time.perf_counter()
            for _ in range(blocks[name]):
                fn()
            _sync()
            if rep >= warmup:
                out[name].append((time.perf_counter() - t0) / blocks[name])
    return out


def calibrate_block(fn: Callable[[], object], target_s: float = 0.05, max_block: int = 1000) -> int:
    """Calls of ``fn`` needed for one timed block to last about ``target_s`` (for µs-scale work)."""
    fn()
    t0 = time.perf_counter()
    fn()
    dt = max(time.perf_counter() - t0, 1e-7)
    return max(1, min(max_block, round(target_s / dt)))


def summarize(values: list[float]) -> dict:
    """Median, quartiles (IQR) and range of a sample."""
    v = sorted(values)
    if len(v) >= 2:
        q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive")
    else:
        q1 = q3 = v[0]
    return {"median": statistics.median(v), "q1": q1, "q3": q3, "min": v[0], "max": v[-1], "n": len(v)}


def ratio_summary(num: list[float], den: list[float]) -> dict:
    """Summary of the per-repetition ratios num[i] / den[i]."""
    return summarize([a / b for a, b in zip(num, den)])


def fmt_ratio(s: dict, digits: int = 3) -> str:
    """``median [q1–q3]`` of a summary."""
    return f"{s['median']:.{digits}f} [{s['q1']:.{digits}f}–{s['q3']:.{digits}f}]"


# ----------------------------------------------------------------------------- output
def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(info: Mapping) -> str:
    load = info.get("loadavg_at_start")
    src = info.get("uncommitted_src")
    return (
        f"commit `{info['commit']}`" + (f" (uncommitted changes in {', '.join(src)})" if src else "")
        + f"; {info['cpu_count']}-core {info['cpu']} ({info['device']}); "
        f"torch {info['torch']}, {info['threads']} thread(s); Python {info['python']}; {info['date']}"
        + (f"; load average at start {load}" if load else "")
    )


def markdown_heading(title: str, data: Mapping) -> list[str]:
    """A results section's first lines: its title, the command that produced it and the machine."""
    return [f"### {title}", "", f"Command: `{data['command']}`  ", "Machine: " + machine_line(data["machine"]) + "  "]


def write_results(name: str, data: dict, markdown: str, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` under ``out_dir`` (default benchmarks/results)."""
    out = Path(out_dir) if out_dir is not None else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    jp, mp = out / f"{name}.json", out / f"{name}.md"
    jp.write_text(json.dumps(data, indent=2, default=float) + "\n")
    mp.write_text(markdown.rstrip() + "\n")
    return jp, mp
