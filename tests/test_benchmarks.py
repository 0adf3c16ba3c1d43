"""Keep benchmarks/ from rotting: each benchmark's core runs on tiny sizes and writes the expected JSON."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import common  # noqa: E402
import head  # noqa: E402
import head_fusion  # noqa: E402
import overhead  # noqa: E402
import throughput  # noqa: E402
import time_to_accuracy  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _roundtrip(name: str, data: dict, markdown: str, tmp_path: Path) -> dict:
    jp, mp = common.write_results(name, data, markdown, tmp_path)
    assert mp.read_text().startswith("### ")
    loaded = json.loads(jp.read_text())
    assert {"benchmark", "command", "machine", "settings"} <= set(loaded)
    assert {"commit", "cpu", "torch", "threads"} <= set(loaded["machine"])
    return loaded


def test_summaries_and_interleaving():
    s = common.summarize([3.0, 1.0, 2.0, 4.0])
    assert s["median"] == 2.5 and s["min"] == 1.0 and s["max"] == 4.0 and s["q1"] <= s["median"] <= s["q3"]
    assert common.ratio_summary([2.0, 4.0], [1.0, 2.0])["median"] == 2.0
    calls: list[str] = []
    times = common.interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=2, warmup=1)
    assert calls == ["a", "b", "b", "a", "a", "b"]  # order rotated each repetition
    assert [len(v) for v in times.values()] == [2, 2]


@pytest.mark.parametrize("n,d,k", [(8, 6, 3), (40, 16, 100)])
def test_head_reference_matches_project(n, d, k):
    """The loop reference and the project's head give the same loss, centroids and gradients."""
    for dtype in (torch.float64, torch.float32):
        r = head.check_agreement(n, d, k, steps=3, dtype=dtype)
        assert r["max_rel_loss_diff"] < (1e-9 if dtype == torch.float64 else 1e-4)


def test_head_benchmark_runs(tmp_path):
    common.set_threads(1)
    row = head.time_config(n=16, d=8, k=10, reps=2, warmup=0)
    data = {"benchmark": "head", "command": "test", "machine": common.machine_info(),
            "settings": {"reps": 2, "warmup": 0, "threads": 1}, "results": [row]}
    loaded = _roundtrip("head", data, head.to_markdown(data), tmp_path)
    r = loaded["results"][0]
    assert {"n", "d", "K", "project_s", "reference_s", "speedup", "agreement"} <= set(r)
    assert r["speedup"]["median"] > 0 and r["speedup"]["n"] == 2


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="torch.compile on CPU needs a C++ compiler")
def test_head_fusion_benchmark_runs(tmp_path):
    """The compiled arm is checked against the eager head inside time_shape (loss and gradients)."""
    common.set_threads(1)
    row = head_fusion.time_shape(n=12, d=6, k=4, reps=1, warmup=0, echo=lambda *_: None)
    data = {"benchmark": "head_fusion", "command": "test", "machine": common.machine_info(),
            "settings": {"reps": 1, "warmup": 0, "threads": 1}, "results": [row]}
    r = _roundtrip("head_fusion", data, head_fusion.to_markdown(data), tmp_path)["results"][0]
    assert r["compile_s"] > 0 and r["compiled_speedup_over_eager"]["median"] > 0
    assert r["hand_fused_speedup_over_eager"]["median"] > 0


def test_overhead_benchmark_runs(tmp_path):
    data = overhead.run(backbones=["cnn"], methods=["supervised"], reps=1, warmup=0, batch=4,
                        model_options={"cnn": {"width": 4}}, memory=False, threads=1, echo=lambda *_: None)
    loaded = _roundtrip("overhead", data, overhead.to_markdown(data), tmp_path)
    r = loaded["results"][0]
    assert set(r["ratio"]) == {"reuse", "eval_pass"}
    assert set(r["seconds_per_step"]) == {"base", "reuse", "eval_pass"}
    assert r["ratio"]["reuse"]["median"] > 0
    mem = overhead.measure_memory({"backbone": "cnn", "method": "supervised", "batch": 4,
                                   "model_options": {"width": 4}}, "reuse", steps=1)
    assert {"method", "before_mib", "peak_mib", "step_mib"} <= set(mem)


def test_overhead_arms_differ_only_in_supercm():
    spec = {"backbone": "cnn", "method": "vat", "batch": 4}
    base, reuse, ev = (overhead.arm_config(spec, a) for a in overhead.ARMS)
    assert base.cm.beta == 0 and reuse.cm.beta > 0 and ev.cm.features == "eval_pass"
    assert base.replace(**{"cm.beta": reuse.cm.beta}) == reuse


def test_time_to_accuracy_runs(tmp_path):
    data = time_to_accuracy.run(seeds=1, iterations=20, eval_every=10, threads=1, echo=lambda *_: None)
    loaded = _roundtrip("time_to_accuracy", data, time_to_accuracy.to_markdown(data), tmp_path)
    arms = loaded["runs"][0]["arms"]
    assert set(arms) == {"CE", "SuperCM"}
    for a in arms.values():
        assert [e["iteration"] for e in a["evals"]] == [10, 20]
        assert {"iteration", "seconds", "val"} <= set(a["evals"][0])
        assert a["evals"][-1]["val"] == a["final_val"]
        assert a["time_to_final_val_s"] <= a["train_seconds"]


def test_throughput_benchmark_runs(tmp_path):
    data = throughput.run(tasks=["uda"], batch=2, reps=1, warmup=0, threads=1, channels_last=True, echo=lambda *_: None)
    r = _roundtrip("throughput", data, throughput.to_markdown(data), tmp_path)["results"][0]
    assert set(r["seconds_per_step"]) == set(throughput.ARMS + throughput.CL_ARMS)
    assert set(r["channels_last_speedup"]) == {"fp32", "bf16"}
    assert r["bf16_speedup"]["supercm"]["median"] > 0 and r["supercm_overhead"]["fp32"]["median"] > 0


def test_throughput_arms_differ_only_in_precision_and_supercm():
    t = {a: throughput.build_trainer("uda", a, 2) for a in ("fp32-base", "bf16-supercm", "fp32-authors")}
    assert t["fp32-base"].cfg.replace(**{"train.precision": "bf16", "cm.beta": 1.0}) == t["bf16-supercm"].cfg
    assert t["fp32-authors"].cfg.cm.features == "eval_pass" and t["bf16-supercm"].cfg.cm.features == "reuse"


def test_throughput_ddp_scaling_runs():
    r = throughput.time_ddp("uda", batch=2, reps=1, steps=1, warmup=0)
    assert set(r["seconds_per_step"]) == {"1", "2"} and r["speedup_2_over_1"]["median"] > 0


def test_image_throughput_measures_both_pipelines(tmp_path, monkeypatch, capsys):
    import image_throughput

    monkeypatch.setattr(sys, "argv", ["image_throughput.py", "--backbone", "resnet18", "--size", "32", "--crop", "32",
                                      "--images", "8", "--reps", "1", "--steps", "1", "--drain", "1",
                                      "--workers", "0", "1", "--device", "cpu", "--out", str(tmp_path),
                                      "--tensor-baseline", "--side", "40"])
    image_throughput.main()
    r = json.loads((tmp_path / "image_throughput.json").read_text())
    assert r["images"] == 16 and r["cache_build_images_per_s"] > 0
    assert set(r["stream_decode"]) == {"stream_w0", "stream_w1"}
    assert r["train"]["ratio_stream_over_memory"]["median"] > 0 and r["train"]["stream_workers"] == 1
    assert r["train"]["ratio_memory_over_tensor"]["median"] > 0 and r["train"]["tensor"]["images_per_s"] > 0
    assert "stream / memory" in capsys.readouterr().out


def test_throughput_compile_arms_and_the_resnet50_task_build():
    compiled = throughput.build_trainer("uda", "fp32-supercm-compile", 2)
    assert compiled.cfg.train.compile and compiled.objective.model_call is not compiled.model
    assert compiled.cfg.replace(**{"train.compile": False}) == throughput.build_trainer("uda", "fp32-supercm", 2).cfg
    resnet = throughput.build_trainer("uda_resnet50", "fp32-supercm", 2)
    assert resnet.cfg.model.backbone == "resnet50" and resnet.model.backbone.out_features == 256


def test_gpu_suite_smoke_runs_every_cell_on_the_cpu(tmp_path):
    """benchmarks/gpu_suite.py --smoke: every method, precision and measurement at tiny sizes, so the
    one-command GPU run cannot rot before a GPU appears (the compiled arm is left out of the smoke run)."""
    import gpu_suite

    common.set_threads(1)
    data = gpu_suite.run(gpu_suite.SMOKE, device="cpu", echo=lambda *_: None)
    r = _roundtrip("gpu_suite", data, gpu_suite.to_markdown(data), tmp_path)
    assert not r["skipped"], r["skipped"]
    cells = {(x["kind"], x["method"], x["precision"]) for x in r["results"]}
    assert cells == {(k, m, p) for p in ("fp32", "bf16")
                     for k, ms in (("ssl", gpu_suite.SSL_METHODS), ("uda", gpu_suite.UDA_METHODS)) for m in ms}
    for x in r["results"]:
        assert x["supercm_overhead"]["median"] > 0 and x["reps_done"] == gpu_suite.SMOKE["reps"]
        for arm in x["arms"].values():
            assert arm["images_per_s"] > 0 and 0 < arm["busy_fraction"] <= 1
            assert arm["host_syncs_per_step"] is None and x["peak_memory_mib"] is None  # CUDA only
    assert r["stream"]["images_per_s"] > 0 and r["stream"]["supply_over_demand"] > 0
    assert "| SSL cnn | vat | 2+2 | bf16 |" in (tmp_path / "gpu_suite.md").read_text()


def test_gpu_suite_budget_guard_skips_with_a_note():
    import gpu_suite

    data = gpu_suite.run(gpu_suite.SMOKE, budget=0.0, device="cpu", echo=lambda *_: None)
    assert not data["results"] and data["stream"] is None
    assert len(data["skipped"]) == len(gpu_suite.plan(gpu_suite.SMOKE))
    assert all("over the time budget" in s["reason"] for s in data["skipped"])
    full = gpu_suite.plan(gpu_suite.FULL)  # the GPU run: 16 eager cells, the stream, then 8 compiled cells
    assert len(full) == 25 and full[16] == ("stream",) and all(c[3] == "bf16-compile-cl" for c in full[17:])


def test_busy_fraction_is_the_union_of_intervals():
    import gpu_suite

    assert gpu_suite.union_fraction([(0, 2), (1, 3), (5, 6)], 0, 10) == 0.4
    assert gpu_suite.union_fraction([(-5, 1), (9, 20)], 0, 10) == 0.2
    # The CUDA path reads the profiler's raw events (the API it calls exists in this torch); a CPU-only
    # profile holds no device activity, which is reported as None, not as an idle GPU.
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.ones(8).sum()
    assert gpu_suite._device_busy(prof) is None


def test_ceiling_times_every_arm_against_the_bare_pass(tmp_path):
    import ceiling

    data = ceiling.run(batch=2, reps=1, warmup=0, threads=1, methods=["supervised"], echo=lambda *_: None)
    r = _roundtrip("ceiling", data, ceiling.to_markdown(data), tmp_path)
    assert [x["arm"] for x in r["results"]] == ["bare", "supervised", "supervised+supercm"]
    assert r["results"][0]["over_bare"]["median"] == 1.0 and r["supercm_overhead"]["supervised"]["median"] > 0
    assert not any(k.startswith("ceiling-") for k in throughput.TASKS)  # its temporary tasks are gone


def test_precision_census_counts_dtypes_and_conversions():
    import precision_profile

    census = precision_profile.Census()
    with census:
        a = torch.ones(3)
        b = a.to(torch.bfloat16) * 2
        b.float()
    assert census.conversions == {"torch.float32->torch.bfloat16": 1, "torch.bfloat16->torch.float32": 1}
    assert census.by_dtype["torch.bfloat16"] >= 2


def test_uda_curves_average_each_evaluation_over_seeds(tmp_path, capsys):
    import uda_curves

    for seed, tests in enumerate([(0.50, 0.70), (0.60, 0.80)]):
        run = tmp_path / f"p-dann-cm-seed{seed}"
        run.mkdir()
        run.joinpath("eval.jsonl").write_text("".join(
            json.dumps({"iteration": 100 * (k + 1), "val": 0.9, "test": t}) + "\n" for k, t in enumerate(tests)))
    (tmp_path / "p-dann-seed0").mkdir()  # "dann" must not take in the dann-cm runs, nor a run without eval.jsonl
    text = uda_curves.table(tmp_path, "p", ["dann-cm"])
    assert "| dann-cm, target test % | 2 | 55.0 ± 7.1 | 75.0 ± 7.1 |" in text
    with pytest.raises(SystemExit, match="no run of p with arms dann"):
        uda_curves.table(tmp_path, "p", ["dann"])


def test_uda_precision_table_says_which_comparisons_are_decided():
    """The "Decided?" table: per comparison and rule, the paired t half-width now (bold within ±h), else the
    seeds that would reach ±h at the sd so far; its last column the seeds at which every rule would."""
    import math

    import numpy as np
    import uda_accuracy
    from scipy import stats

    pair = "mnist10k-to-mnistm_style"
    # per seed: source only, DANN (a gain of 6 ± 1 points), DANN + SuperCM (a gain of 2 points ± 4)
    gains_dann = [0.05, 0.07, 0.06, 0.05, 0.07, 0.06]
    gains_cm = [0.06, -0.02, 0.04, -0.01, 0.05, 0.00]
    records = []
    for seed, (g1, g2) in enumerate(zip(gains_dann, gains_cm)):
        base = 0.60 + 0.01 * seed
        for method, cm, acc in [("source_only", False, base), ("dann", False, base + g1), ("dann", True, base + g1 + g2)]:
            rules = {"best_validation": acc, "last": acc, "oracle_test_selected": acc + 0.01}
            records.append({"pair": pair, "method": method, "cm": cm, "seed": seed, "overrides": [], "rules": rules})

    def hw(d):
        return 100 * stats.t.ppf(0.975, len(d) - 1) * np.std(d, ddof=1) / math.sqrt(len(d))

    lines = uda_accuracy.precision_table(records, [pair], ["source_only", "dann"])
    assert lines[2] == "| pair | comparison | seeds | source-val | last | oracle | seeds for every rule |"
    rows = {line.split(" | ")[1]: line for line in lines if line.startswith(f"| {pair}")}
    assert set(rows) == {"DANN − source only", "DANN + SuperCM − DANN"}  # no source only + SuperCM runs: no row

    def needed(d):
        sd = 100 * np.std(d, ddof=1)
        return next(m for m in range(2, 1000) if stats.t.ppf(0.975, m - 1) * sd / math.sqrt(m) <= 1.5)

    h1 = hw(gains_dann)  # sd 0.89 points: ±1.42 at 4 seeds, ±2.22 at 3
    assert h1 <= 1.5 and needed(gains_dann) == 4
    assert rows["DANN − source only"] == f"| {pair} | DANN − source only | 6 | **±{h1:.2f}** | **±{h1:.2f}** | **±{h1:.2f}** | 4 |"
    h2, m = hw(gains_cm), needed(gains_cm)
    assert h2 > 1.5 and m > 6 and rows["DANN + SuperCM − DANN"].endswith(f"| ±{h2:.2f} ({m}) | {m} |")
    # a looser target decides it; the whole Markdown table carries the section
    assert f"**±{h2:.2f}**" in "\n".join(uda_accuracy.precision_table(records, [pair], ["dann"], half_width=h2 + 0.01))
    assert "**Decided?**" in uda_accuracy.table(records)


def test_uda_runs_to_add_table_costs_deciding_every_comparison():
    """Each arm must reach the most seeds any of its comparisons needs (under every rule), and the runs
    to add are the seeds it lacks; a comparison without an sd yet makes its arms "–" and the sum a bound."""
    import math

    import numpy as np
    import uda_accuracy
    from scipy import stats

    pair, other = "mnist10k-to-mnistm_style", "mnist10k-to-mnistm_pool"
    gains_dann = [0.06, -0.02, 0.04, -0.01, 0.05, 0.00]  # DANN − source only: needs more than 6 seeds for ±1.5
    gains_cm = [0.05, 0.07, 0.06, 0.05, 0.07, 0.06]  # DANN + SuperCM − DANN: needs 4 (DANN takes the larger)
    records = []

    def add(p, method, cm, seed, acc):
        rules = {"best_validation": acc, "last": acc + (0.01 if cm else 0.0)}
        records.append({"pair": p, "method": method, "cm": cm, "seed": seed, "overrides": [], "rules": rules})

    for seed, (g1, g2) in enumerate(zip(gains_dann, gains_cm)):
        base = 0.60 + 0.01 * seed
        add(pair, "source_only", False, seed, base)
        add(pair, "dann", False, seed, base + g1)
        add(pair, "dann", True, seed, base + g1 + g2)
    for seed in range(6, 9):  # extra source-only seeds: counted as had
        add(pair, "source_only", False, seed, 0.6)
    add(other, "source_only", False, 0, 0.5)  # one seed: no sd, so no estimate
    add(other, "dann", False, 0, 0.6)

    def needed(d):
        sd = 100 * np.std(d, ddof=1)
        return next(m for m in range(2, 1000) if stats.t.ppf(0.975, m - 1) * sd / math.sqrt(m) <= 1.5)

    m = needed(gains_dann)
    assert needed(gains_cm) == 4 and m > 9
    lines = uda_accuracy.runs_to_add_table(records, [pair, other], ["source_only", "dann"])
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in lines if line.startswith("| mnist")}
    assert rows[(pair, "source only")] == f"| {pair} | source only | 9 | {m} | {m - 9} |"
    assert rows[(pair, "DANN")] == f"| {pair} | DANN | 6 | {m} | {m - 6} |"  # the larger of its two comparisons' needs
    assert rows[(pair, "DANN + SuperCM")] == f"| {pair} | DANN + SuperCM | 6 | 4 | 0 |"  # more than it needs: 0, not −2
    assert rows[(pair, "every arm")] == f"| {pair} | every arm | | | {(m - 9) + (m - 6)} |"
    assert rows[(other, "DANN")] == f"| {other} | DANN | 1 | – | – |"
    assert rows[(other, "every arm")] == f"| {other} | every arm | | | ≥ 0 |"
    assert (other, "DANN + SuperCM") not in rows  # an arm never run gets no row
    assert "**Runs to add**" in uda_accuracy.table(records)


def test_uda_arm_and_gain_tables_put_every_rule_side_by_side():
    """The two at-a-glance tables BENCHMARKS quotes: each arm's mean ± std per rule, and each paired gain
    per rule (mean [t interval] wins/seeds), computed here directly from the per-seed values."""
    import math
    import statistics

    import uda_accuracy
    from scipy import stats

    pair = "mnist10k-to-mnistm_style"
    src = [0.60, 0.62, 0.61]
    dann = [0.66, 0.70, 0.65]
    records = []
    for seed, (a, b) in enumerate(zip(src, dann)):
        for method, acc in (("source_only", a), ("dann", b)):
            rules = {"best_validation": acc, "last": acc - 0.01}
            if method == "dann":
                rules["snd"] = acc - 0.02  # a rule only one arm records: "–" for the other, no gain
            records.append({"pair": pair, "method": method, "cm": False, "seed": seed, "overrides": [], "rules": rules})

    arms = uda_accuracy.arm_table(records, [pair], ["source_only", "dann"])
    assert arms[2] == "| pair | arm | seeds | source-val | last | SND |"
    m, s = 100 * statistics.mean(dann), 100 * statistics.stdev(dann)
    assert f"| {pair} | DANN | 3 | {m:.2f} ± {s:.2f} | {m - 1:.2f} ± {s:.2f} | {m - 2:.2f} ± {s:.2f} |" in arms
    assert any(line.startswith(f"| {pair} | source only | 3 |") and line.endswith("| – |") for line in arms)
    assert not any("SuperCM" in line for line in arms[4:])  # no SuperCM runs: no rows for them

    gains = uda_accuracy.gains_table(records, [pair], ["source_only", "dann"])
    d = [100 * (b - a) for a, b in zip(src, dann)]
    half = stats.t.ppf(0.975, 2) * statistics.stdev(d) / math.sqrt(3)
    cell = f"{statistics.mean(d):+.1f} [{statistics.mean(d) - half:+.1f}, {statistics.mean(d) + half:+.1f}] 3/3"
    assert f"| {pair} | DANN − source only | {cell} | {cell} | – |" in gains
    assert len([line for line in gains if line.startswith("| mnist")]) == 1  # comparisons without runs are left out
    text = uda_accuracy.table(records)
    assert text.index("**Every arm under every rule**") < text.index("**Paired gains under every rule**") < text.index(
        "**Decided?**")
