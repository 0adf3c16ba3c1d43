"""The CM head of the working tree versus the head of an earlier commit, and the loop reference.

    python benchmarks/head_before_after.py REV      # e.g. 3ff8c90

Loads ``src/supercm/cm.py`` as it was at REV (``git show``) beside the current one and times
both, with benchmarks/head.py's loop reference, interleaved in one process (one iteration =
centroid update + forward + loss + backward; n = 128; float32; 1 thread).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402
import head as hb  # noqa: E402

CONFIGS = [(128, 128, 10), (128, 128, 100), (128, 512, 100), (128, 128, 1000)]


def load_old(rev: str):
    src = subprocess.run(["git", "show", f"{rev}:src/supercm/cm.py"], capture_output=True, text=True, check=True, cwd=HERE.parent).stdout
    path = Path(tempfile.mkdtemp()) / "cm_old.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("cm_old", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    rev = argv[0] if argv else "HEAD"
    old_cm = load_old(rev)
    common.set_threads(1)
    rows = []
    for n, d, k in CONFIGS:
        new, ref = hb.make_pair(d, k)
        old = old_cm.ClusteringModule(d, k, centroids="paper", check_inputs=False)
        old.load_state_dict(new.state_dict())
        x, y = hb.make_batch(n, d, k, seed=0)
        x.requires_grad_(True)

        arms = {
            "new": hb.step_arm(hb.project_step, new, x, y),
            "old": hb.step_arm(hb.project_step, old, x, y),
            "reference": hb.step_arm(hb.reference_step, ref, x, y),
        }
        blocks = {a: common.calibrate_block(f, target_s=0.03) for a, f in arms.items()}
        t = common.interleaved_times(arms, reps=15, warmup=2, block=blocks)
        med = {a: 1e6 * common.summarize(v)["median"] for a, v in t.items()}
        rows.append([n, k, d, f"{med['old']:.0f}", f"{med['new']:.0f}",
                     common.fmt_ratio(common.ratio_summary(t["old"], t["new"])),
                     common.fmt_ratio(common.ratio_summary(t["reference"], t["old"]), 1),
                     common.fmt_ratio(common.ratio_summary(t["reference"], t["new"]), 1)])
        print(rows[-1], flush=True)
    print(common.markdown_table(
        ["n", "K", "d", f"{rev} µs", "now µs", "speed-up now vs " + rev, "reference / " + rev, "reference / now"], rows))


if __name__ == "__main__":
    main()
