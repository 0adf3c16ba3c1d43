"""Issue 19: the surfaces around the run directory (images, analyses, tuning, the benchmark sweep,
torchrun) as reliable as the run directory itself.

The catalogue (``test_bad_input_is_one_line``) drives the real command line with bad inputs of
each class the issue lists and checks the answer: exit code 2, one line ``supercm: error: ...``
naming the problem, no traceback, no leftover study or folder, and never the advice to load a file
with ``weights_only=False``. The tests after it cover what now works instead of failing (runs on own
folders without validation or test split, the project's own results file, every image mode) and
what a kill does to ``tune``, the benchmark sweep and torchrun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_images import write_image

from supercm.cli import main

ROOT = Path(__file__).resolve().parent.parent
DIGITS_YAML = str(ROOT / "configs" / "digits.yaml")
UDA_YAML = str(ROOT / "configs" / "uda" / "image_folder-dann-cm.yaml")
SSL_FAST = ["data.num_labeled=50", "data.num_validation=50", "model.options={width: 16, depth: 1}",
            "train.iterations=6", "train.eval_every=3", "train.checkpoint_every=3", "train.batch_labeled=10",
            "train.batch_unlabeled=10", "train.progress=false", "train.tensorboard=false"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    """Own folders: src/CLASS/*.jpg (2 classes × 6) and tgt/*.png (12, no labels), and ResNet-18 weights."""
    import torchvision

    root = tmp_path_factory.mktemp("folders")
    for k, c in enumerate(("cat", "dog")):
        for i in range(6):
            write_image(root / "src" / c / f"{c}{i}.jpg", k, i)
            write_image(root / "tgt" / f"{c}{i}.png", k, 100 + i, "PNG")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), root / "r18.pth")
    return root


def uda_args(root: Path, *extra: str) -> list[str]:
    """``supercm train`` of the shipped own-folders config (num_validation: 0, no data.options.test), tiny."""
    return [UDA_YAML, f"data.options.source={root / 'src'}", f"data.options.target={root / 'tgt'}",
            "data.options.size=40", "data.options.crop=32", f"data.options.cache_dir={root / 'cache'}",
            "data.options.progress=false", "model.backbone=resnet18", f"model.options.weights={root / 'r18.pth'}",
            "train.iterations=2", "train.batch_labeled=2", "train.batch_unlabeled=2", "train.eval_every=1",
            "train.checkpoint_every=2", "train.device=cpu", "train.progress=false", "train.tensorboard=false", *extra]


@pytest.fixture(scope="module")
def uda_run(folders) -> Path:
    run = folders / "uda_run"
    assert main(["train", *uda_args(folders), "--run-dir", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def ssl_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ssl") / "run"
    assert main(["train", DIGITS_YAML, *SSL_FAST, "--run-dir", str(run)]) == 0
    return run


# --------------------------------------------------------------------------- catalogue: setups


def _copy_run(run: Path, tmp: Path) -> Path:
    import shutil

    dst = tmp / "run"
    shutil.copytree(run, dst)
    return dst


def _best_model(payload):
    """``supercm pad`` of a copy of the SSL run whose best_model.pt is ``payload(original bytes)``."""

    def setup(tmp, runs):
        run = _copy_run(runs["ssl"], tmp)
        p = run / "best_model.pt"
        p.write_bytes(payload(p.read_bytes()))
        return ["pad", str(run)]

    return setup


def _damaged(name: str, payload: bytes, command: str):
    def setup(tmp, runs):
        run = _copy_run(runs["ssl"], tmp)
        (run / name).write_bytes(payload)
        return [command, str(run), *(["--out", str(tmp / "p"), "--no-tsne"] if command == "plot" else [])]

    return setup


def _crafted(_: bytes) -> bytes:
    import io

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    buf = io.BytesIO()
    torch.save({"iteration": 1, "model": Evil()}, buf)
    return buf.getvalue()


def _results(text: str, *extra: str):
    def setup(tmp, runs):
        (tmp / "r.jsonl").write_text(text)
        return ["compare", "--results", str(tmp / "r.jsonl"), *extra]

    return setup


def _tune(*extra: str):
    return lambda tmp, runs: ["tune", DIGITS_YAML, *SSL_FAST, "--out", str(tmp / "tune"), *extra]


def _weights_file(payload: bytes):
    def setup(tmp, runs):
        (tmp / "w.pt").write_bytes(payload)
        return ["train", *uda_args(runs["folders"]), f"model.options.weights={tmp / 'w.pt'}",
                "--run-dir", str(tmp / "new")]

    return setup


def _list(text: str):
    def setup(tmp, runs):
        (tmp / "list.txt").write_text(text)
        return ["train", *uda_args(runs["folders"]), f"data.options.source={tmp / 'list.txt'}",
                f"data.root={runs['folders']}", "--run-dir", str(tmp / "new")]

    return setup


ROW = '{"method": "dann", "seed": %s, "test_accuracy_at_best_val": 0.5}\n'

CATALOGUE = [
    # ---- analysis arguments
    ("plot-max-points-zero", lambda tmp, runs: ["plot", str(runs["ssl"]), "--out", str(tmp / "p"), "--max-points", "0"],
     "--max-points: must be ≥ 1"),
    ("plot-max-points-negative", lambda tmp, runs: ["plot", str(runs["ssl"]), "--out", str(tmp / "p"),
                                                    "--max-points", "-5"], "--max-points: must be ≥ 1"),
    ("compare-confidence-2", _results(ROW % 0, "--confidence", "2"), "--confidence: must be a level in (0, 1)"),
    ("compare-confidence-0", _results(ROW % 0, "--confidence", "0"), "--confidence: must be a level in (0, 1)"),
    ("compare-confidence-word", _results(ROW % 0, "--confidence", "high"), "--confidence: must be a number"),
    ("pad-repeats-zero", lambda tmp, runs: ["pad", str(runs["ssl"]), "--repeats", "0"], "--repeats: must be ≥ 1"),
    # ---- results files: the file and line of a bad row
    ("results-seed-word", _results(ROW % 0 + ROW % '"one"'), "r.jsonl:2: 'seed' must be a whole number, got 'one'"),
    ("results-seed-float", _results(ROW % "1.5"), "r.jsonl:1: 'seed' must be a whole number, got 1.5"),
    ("results-seed-null", _results(ROW % "null"), "r.jsonl:1: 'seed' must be a whole number, got None"),
    ("results-row-a-list", _results("[1, 2]\n"), "r.jsonl:1 is not a JSON object"),
    ("results-a-folder", lambda tmp, runs: ["compare", "--results", str(tmp)], "is a folder; give a JSON-lines file"),
    ("results-group-by-unknown", _results(ROW % 0, "--group-by", "methd"), "r.jsonl:1 has no field 'methd' to group by"),
    # ---- run directories read by compare / plot / pad: the damaged file named
    ("compare-summary-truncated", _damaged("summary.json", b'{"best_iteration": 3, "best_v', "compare"),
     "summary.json is not valid JSON (cut short?)"),
    ("compare-summary-a-list", _damaged("summary.json", b"[1, 2]\n", "compare"), "summary.json is not a run's summary"),
    ("compare-config-invalid", _damaged("config.yaml", b"data: [x\n", "compare"), "config.yaml' is not valid YAML"),
    ("compare-config-a-list", _damaged("config.yaml", b"- a\n", "compare"), "must hold a mapping at the top level"),
    ("pad-config-a-list", _damaged("config.yaml", b"- a\n", "pad"), "must hold a mapping at the top level"),
    ("plot-config-invalid", _damaged("config.yaml", b"data: [x\n", "plot"), "config.yaml' is not valid YAML"),
    # ---- weights files torch cannot read: one line naming the file, never torch's unsafe advice
    ("best-model-truncated", _best_model(lambda b: b[: len(b) // 2]), "best_model.pt cannot be read as SuperCM weights: "
                                                                        "it is truncated or corrupt"),
    ("best-model-empty", _best_model(lambda b: b""), "best_model.pt cannot be read as SuperCM weights: it is empty"),
    ("best-model-text", _best_model(lambda b: b"hello\n"), "it is not a file written by torch.save"),
    ("best-model-crafted", _best_model(_crafted), "it holds Python objects besides tensors"),
    ("best-model-foreign", _best_model(lambda b: _torch_bytes({"weights": torch.ones(2)})),
     "best_model.pt is not a SuperCM checkpoint"),
    ("weights-text", _weights_file(b"hello world\n"), "w.pt: it is not a file written by torch.save"),
    ("weights-crafted", _weights_file(_crafted(b"")), "w.pt: it holds Python objects besides tensors"),
    ("weights-truncated", _weights_file(b"PK\x03\x04" + b"\0" * 64), "w.pt: it is truncated or corrupt"),
    # ---- tune
    ("tune-trials-zero", _tune("--trials", "0"), "--trials: must be ≥ 1"),
    ("tune-trials-negative", _tune("--trials", "-2"), "--trials: must be ≥ 1"),
    ("tune-storage-bogus", _tune("--trials", "1", "--storage", "bogus://x"), "unknown database kind 'bogus'"),
    ("tune-storage-not-a-url", _tune("--trials", "1", "--storage", "notaurl"), "it is not a database URL"),
    ("tune-storage-unwritable", lambda tmp, runs: [*_tune("--trials", "1")(tmp, runs), "--storage",
                                                   f"sqlite:///{_a_file(tmp)}/study.db"],
     "the SQLite file cannot be created or opened"),
    ("tune-storage-no-driver", _tune("--trials", "1", "--storage", "postgresql://u@127.0.0.1:1/x"),
     "cannot be opened"),
    # ---- path-label lists: the cause named
    ("list-label-gap", _list("src/cat/cat0.jpg 0\nsrc/dog/dog0.jpg 1\nsrc/dog/dog1.jpg 7\n"),
     "list.txt line 3: label 7 leaves label(s) 2, 3, 4, 5, 6 without images"),
    ("list-label-from-one", _list("src/cat/cat0.jpg 1\nsrc/dog/dog0.jpg 2\n"),
     "list.txt line 1: label 1 leaves label(s) 0 without images"),
    ("list-contradiction", _list("src/cat/cat0.jpg 0\nsrc/dog/dog0.jpg 1\nsrc/cat/cat0.jpg 1\n"),
     "cat0.jpg is listed with label 0 (line 1) and label 1 (line 3)"),
    ("list-contradiction-other-spelling", _list("src/cat/cat0.jpg 0\nsrc/dog/dog0.jpg 1\n./src/cat/../cat/cat0.jpg 1\n"),
     "is listed with label 0 (line 1) and label 1 (line 3)"),
]


def _torch_bytes(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _a_file(tmp: Path) -> Path:
    (tmp / "afile").write_text("a file, not a folder\n")
    return tmp / "afile"


@pytest.mark.parametrize("name,setup,expected", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_is_one_line(name, setup, expected, tmp_path, ssl_run, folders, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = setup(tmp_path, {"ssl": ssl_run, "folders": folders})
    before = {p for p in tmp_path.rglob("*")}
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if "Warning" not in line and not line.startswith("  ")]
    assert rc == 2, err
    assert "Traceback" not in err and "weights_only" not in err, err
    assert len(lines) == 1 and lines[0].startswith("supercm: error: "), err
    assert expected in lines[0], lines[0]
    new = {p for p in tmp_path.rglob("*")} - before
    assert not new, f"a refused command left {sorted(map(str, new))}"  # no study, no run directory


def test_the_catalogue_covers_every_class():
    assert len(CATALOGUE) >= 35


# --------------------------------------------------------------------------- runs on own folders


def test_own_folders_run_reports_null_oracle_and_plot_and_pad_work(uda_run, tmp_path, capsys):
    """The shipped own-folders config (num_validation 0, no data.options.test): no number is made up."""
    summary = json.loads((uda_run / "summary.json").read_text())
    assert summary["oracle_test_accuracy"] is None and summary["oracle_iteration"] is None
    assert summary["best_val_accuracy"] is None and summary["final_test_accuracy"] is None
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    capsys.readouterr()
    assert main(["plot", str(uda_run), "--out", str(tmp_path / "plots")]) == 0, capsys.readouterr().err
    assert (tmp_path / "plots" / "curves.png").stat().st_size > 0 and (tmp_path / "plots" / "tsne.png").stat().st_size > 0
    assert main(["pad", str(uda_run), "--repeats", "2", "--json", str(tmp_path / "pad.json")]) == 0, capsys.readouterr().err
    pad = json.loads((tmp_path / "pad.json").read_text())["run"]
    assert pad["n_per_domain"] == 12 and "unlabelled images (target)" in pad["target"]
    assert 0 <= pad["pad_mean"] <= 2


def test_compare_groups_the_projects_own_results_file_by_configuration(tmp_path, capsys):
    path = ROOT / "benchmarks" / "results" / "uda_accuracy_dann.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    configs = {(r["pair"], r["method"], r["cm"]) for r in rows}
    capsys.readouterr()
    assert main(["compare", "--results", str(path)]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "group" not in line]
    assert len(table) == len(configs) == 12
    assert all(f"| {len(rows) // len(configs)} |" in line for line in table)  # three seeds each, not one
    assert "oracle" not in "".join(table) and "rules" not in "".join(table)


def _per_run_results(path: Path) -> bool:
    """A results file of runs over several seeds (rows with a seed), not a curve of one run (e.g.
    benchmarks/mask_rate.py's) nor a one-seed exploration (e.g. uda_long_schedule.jsonl: each of its
    groups is one run by design, so it cannot show a grouping key that splits seeds)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return "seed" in rows[0] and len({r["seed"] for r in rows}) > 1


@pytest.mark.parametrize("path", [p for p in sorted((ROOT / "benchmarks" / "results").glob("*.jsonl"))
                                  if _per_run_results(p)], ids=lambda p: p.name)
def test_every_results_file_of_the_project_groups_its_seeds(path, capsys):
    """Each shipped results file has several seeds per configuration: no group of one may appear."""
    capsys.readouterr()
    assert main(["compare", "--results", str(path)]) == 0
    out = capsys.readouterr().out
    assert "hold a single run" not in out, out


def test_a_group_of_one_run_is_said_not_shown_as_mean_and_std(tmp_path, capsys):
    rows = [{"method": "a", "seed": s, "test_accuracy_at_best_val": 0.5 + s / 10} for s in range(3)]
    rows.append({"method": "b", "seed": 0, "test_accuracy_at_best_val": 0.7})
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["compare", "--results", str(tmp_path / "r.jsonl")]) == 0
    out = capsys.readouterr().out
    line_b = next(line for line in out.splitlines() if line.startswith("| method=b"))
    assert "±" not in line_b and "– (one run)" in line_b
    assert "1 of 2 group(s) hold a single run" in out


# --------------------------------------------------------------------------- images: every mode


def _modes(folder: Path) -> dict[str, Path]:
    """One file per mode Pillow opens: a red left half and a blue right half (grey modes: a ramp)."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.zeros((24, 30, 3), np.uint8)
    rgb[:, :15] = (200, 30, 30)
    rgb[:, 15:] = (30, 30, 200)
    ramp16 = (np.arange(24 * 30).reshape(24, 30) * 90).astype(np.uint16)  # 0 … 64710
    files = {}

    def save(name, im, **kw):
        files[name] = folder / name
        im.save(files[name], **kw)

    save("rgb.png", Image.fromarray(rgb))
    save("grey8.png", Image.fromarray(np.rint(ramp16 / 257).astype(np.uint8)))
    save("grey16.png", Image.fromarray(ramp16))
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), quality=95)
    save("palette.png", Image.fromarray(rgb).convert("P"))
    save("bilevel.png", Image.fromarray(rgb[..., 0]).convert("1"))
    save("float01.tiff", Image.fromarray((ramp16 / 65535.0).astype(np.float32)))
    save("float_wide.tiff", Image.fromarray((ramp16 / 10.0 - 3000).astype(np.float32)))
    save("rgba_opaque.png", Image.fromarray(np.dstack([rgb, np.full((24, 30), 255, np.uint8)])))
    half = np.dstack([rgb, np.full((24, 30), 255, np.uint8)])
    half[:12, :, 3] = 0
    save("rgba_transparent.png", Image.fromarray(half))
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # stored sideways: a viewer turns it 90° clockwise
    save("exif_rotated.jpg", im, exif=exif.tobytes(), quality=95)
    frames = [Image.fromarray(rgb), Image.fromarray(rgb[:, ::-1])]
    files["animated.gif"] = folder / "animated.gif"
    frames[0].save(files["animated.gif"], save_all=True, append_images=frames[1:])
    return files


def test_every_image_mode_is_read_as_a_viewer_shows_it_or_named(tmp_path):
    from supercm.data.images import decode_images

    files = _modes(tmp_path / "modes")
    names = list(files)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x, kept = decode_images(list(files.values()), 24, cache_dir=tmp_path / "cache", progress=False)
    assert kept == list(range(len(files)))
    img = {n: x[i].numpy().astype(int) for i, n in enumerate(names)}
    red, blue = np.array([200, 30, 30]), np.array([30, 30, 200])
    for n in ("rgb.png", "cmyk.jpg", "palette.png", "rgba_opaque.png", "animated.gif"):
        assert np.abs(img[n][:, 12, 4] - red).max() <= 12 and np.abs(img[n][:, 12, 19] - blue).max() <= 12, n
    # 16-bit grey: the ramp, not saturated white; the same picture as its 8-bit version and the float one
    assert img["grey16.png"].mean() < 160 and img["grey16.png"].min() < 20
    assert np.abs(img["grey16.png"] - img["grey8.png"]).max() <= 2
    assert np.abs(img["float01.tiff"] - img["grey8.png"]).max() <= 2
    wide = img["float_wide.tiff"]  # rescaled from its range (named below): the ramp spans [0, 255]
    assert wide.min() <= 2 and wide.max() >= 250 and np.corrcoef(wide.ravel(), img["grey8.png"].ravel())[0, 1] > 0.99
    assert set(np.unique(Image.open(files["bilevel.png"]).convert("L"))) <= {0, 255}
    # EXIF orientation 6: upright, so the red half is on top (stored: on the left)
    assert np.abs(img["exif_rotated.jpg"][:, 4, 12] - red).max() <= 12
    assert np.abs(img["exif_rotated.jpg"][:, 19, 12] - blue).max() <= 12
    # transparent pixels on white, and named
    assert (img["rgba_transparent.png"][:, 2, :] >= 250).all()
    (message,) = [str(w.message) for w in caught if "converted to 8-bit RGB" in str(w.message)]
    for n in ("rgba_transparent.png", "float_wide.tiff", "animated.gif"):
        assert n in message
    for n in ("rgb.png", "grey16.png", "exif_rotated.jpg", "cmyk.jpg", "rgba_opaque.png"):
        assert n not in message
    # the cache reproduces the pixels and the warning
    with pytest.warns(UserWarning, match="rgba_transparent.png"):
        again, _ = decode_images(list(files.values()), 24, cache_dir=tmp_path / "cache", progress=False)
    assert torch.equal(again, x)


def test_the_stream_pipeline_reads_modes_alike_and_names_them(tmp_path):
    from supercm.data.images import decode_images
    from supercm.data.stream import ImageStore

    files = list(_modes(tmp_path / "modes").values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, _ = decode_images(files, 24, cache=False, progress=False)
    store = ImageStore(files, 24, workers=0)
    with pytest.warns(UserWarning, match="rgba_transparent.png"):
        assert torch.equal(store[torch.arange(len(files))], x)


# --------------------------------------------------------------------------- messages naming the cause


def test_an_unwritable_image_cache_names_its_knobs_and_the_run_goes_on(folders, tmp_path, capsys):
    (tmp_path / "afile").write_text("not a folder")
    capsys.readouterr()
    with pytest.warns(UserWarning) as caught:
        rc = main(["train", *uda_args(folders), f"data.options.cache_dir={tmp_path / 'afile' / 'cache'}",
                   "--run-dir", str(tmp_path / "run")])
    assert rc == 0, capsys.readouterr().err
    msg = next(str(w.message) for w in caught if "decoded-image cache" in str(w.message))
    assert "data.options.cache_dir" in msg and "SUPERCM_IMAGE_CACHE" in msg and "data.options.cache=false" in msg
    assert "--run-dir" not in msg


def test_a_repeated_list_line_is_read_once_with_a_warning(folders, tmp_path):
    from supercm.data.images import read_image_list

    (tmp_path / "l.txt").write_text("src/cat/cat0.jpg 0\nsrc/dog/dog0.jpg 1\nsrc/cat/cat0.jpg 0\n")
    with pytest.warns(UserWarning, match="line 3 repeats line 1"):
        images = read_image_list(tmp_path / "l.txt", [folders])
    assert images.labels == [0, 1] and images.classes == ["cat", "dog"]


def test_a_stream_run_stopped_by_a_bad_image_before_any_checkpoint_says_start_again(folders, tmp_path, capsys):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(folders / "src", src)
    for p in (src / "cat").iterdir():
        p.write_bytes(p.read_bytes()[:40])  # every cat image truncated: the first batch meets one
    capsys.readouterr()
    rc = main(["train", *uda_args(folders), f"data.options.source={src}", "data.options.pipeline=stream",
               "data.options.workers=0", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("supercm: error: ") and "cannot decode" in line
    assert "intact" not in line and "start the run again" in line, line


# --------------------------------------------------------------------------- tune: a killed trial


def test_a_trial_left_running_by_a_killed_tune_is_failed_and_resumed(tmp_path, capsys):
    """What kill -9 leaves: a RUNNING trial, its run directory with a checkpoint, locks nobody holds."""
    optuna = pytest.importorskip("optuna")
    from supercm.train import Trainer
    from supercm.config import load_config

    out = tmp_path / "tune"
    out.mkdir()
    storage = f"sqlite:///{out.resolve() / 'study.db'}"
    study = optuna.create_study(study_name="supercm", storage=storage, direction="maximize")
    trial = study.ask()
    beta = trial.suggest_float("cm.beta", 0.01, 10.0, log=True)
    run_dir = out / "trial-0000"
    trial.set_user_attr("run_dir", str(run_dir))
    (out / ".trial-0000.tune.lock").write_text("12345")
    cfg = load_config(DIGITS_YAML, [*SSL_FAST, f"cm.beta={beta}"])

    class Killed(BaseException):
        pass

    def kill(rec):
        if rec["iteration"] == 6:
            raise Killed  # the process dies after its checkpoint at iteration 3

    with pytest.raises(Killed):
        Trainer(cfg, run_dir).fit(on_evaluate=kill)
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "summary.json").exists()
    capsys.readouterr()
    assert main(["tune", DIGITS_YAML, *SSL_FAST, "--trials", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "trial 0 was left running by a process that has ended" in err and f"resuming {run_dir}" in err
    study = optuna.load_study(study_name="supercm", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "COMPLETE"]
    assert study.trials[1].params == study.trials[0].params and study.trials[1].user_attrs["run_dir"] == str(run_dir)
    assert json.loads((run_dir / "summary.json").read_text())["iterations"] == 6  # resumed to the end
    assert not (out / "trial-0001").exists()


def test_a_study_whose_every_trial_diverged_says_so(tmp_path, capsys):
    pytest.importorskip("optuna")
    capsys.readouterr()
    rc = main(["tune", DIGITS_YAML, *SSL_FAST, "optim.lr=1e20", "--trials", "2", "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert rc == 2 and "Record does not exist" not in err
    assert err.strip().splitlines()[-1].startswith("supercm: error: no trial of study 'supercm' finished with a "
                                                   "validation accuracy (2 failed"), err


# --------------------------------------------------------------------------- the benchmark sweep

SWEEP = [sys.executable, str(ROOT / "benchmarks" / "uda_accuracy.py"), "--pairs", "optdigits-to-mnist10k",
         "--methods", "source_only", "--arms", "base", "--workers", "1"]


def _sweep_args(tmp: Path, seeds: int, iterations: int) -> list[str]:
    return [*SWEEP, "--seeds", str(seeds), "--run-root", str(tmp / "runs"), "--out", str(tmp / "r.jsonl"),
            "--data-root", str(_data_root()), f"train.iterations={iterations}", "train.eval_every=10",
            "train.checkpoint_every=10"]


def _data_root() -> Path:
    root = Path(os.environ.get("SUPERCM_DATA", "/tmp/supercm-data"))
    if not (root / "optdigits").exists() or not (root / "mnist10k").exists():
        pytest.skip("needs 'supercm fetch-data optdigits/mnist10k' under $SUPERCM_DATA")
    return root


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and ps")
def test_a_killed_sweep_takes_its_worker_with_it(tmp_path):
    proc = subprocess.Popen(_sweep_args(tmp_path, 1, 100000), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.time() + 120
        while not (tmp_path / "runs" / "optdigits-to-mnist10k-source_only-seed0" / "checkpoint.pt").exists():
            assert time.time() < deadline and proc.poll() is None, "the sweep did not start its run"
            time.sleep(0.5)
        workers = _children(proc.pid)
        assert workers
        proc.kill()  # kill -9 of the sweep
        proc.wait()
        deadline = time.time() + 10
        while any(_alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), "a worker outlived its killed sweep"
    finally:  # whatever happened, no process of this test lives on
        proc.kill()
        for w in {*workers, *_children(proc.pid)}:
            try:
                os.kill(w, signal.SIGKILL)
            except OSError:
                pass


def test_a_rerun_skips_a_directory_a_live_process_holds_and_runs_the_rest(tmp_path):
    import fcntl

    held = tmp_path / "runs" / "optdigits-to-mnist10k-source_only-seed0"
    held.mkdir(parents=True)
    fd = os.open(held / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another live process trains there
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    try:
        res = subprocess.run(_sweep_args(tmp_path, 2, 20), env=ENV, capture_output=True, text=True, timeout=300)
    finally:
        os.close(fd)
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    skipped = [line for line in res.stderr.splitlines() if line.startswith("skipping")]
    assert len(skipped) == 1 and f"in use by process {os.getpid()}" in skipped[0], res.stderr[-3000:]
    done = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in done] == [1]  # the rest ran
    assert res.returncode != 0 and "1 run(s) skipped or failed" in res.stderr
    # once the other process is gone, a rerun does the skipped run and keeps the finished one
    res = subprocess.run(_sweep_args(tmp_path, 2, 20), env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(json.loads(line)["seed"] for line in (tmp_path / "r.jsonl").read_text().splitlines()) == [0, 1]


# --------------------------------------------------------------------------- torchrun and SIGTERM


def _torchrun(*args: str, **kw):
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "supercm", "train", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_torchrun_prints_supercms_error_once_and_names_it_per_rank(tmp_path):
    proc = _torchrun(DIGITS_YAML, "train.device=cpu", "cm.beta=-1", "--run-dir", str(tmp_path / "run"))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    printed = [line for line in err.splitlines() if line.startswith("supercm: error:")]
    assert printed == ["supercm: error: config key 'cm.beta' must be ≥ 0 and finite, got -1.0"], err[-3000:]
    # torchrun's failure summary carries supercm's line (from the rank's error file), not <N/A>
    assert "traceback : supercm: error: config key 'cm.beta'" in err, err[-3000:]


def test_a_terminated_training_says_so_and_how_to_go_on(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "supercm", "train", DIGITS_YAML, "train.iterations=100000",
                             "train.checkpoint_every=20", "train.eval_every=20", "train.progress=false",
                             "train.tensorboard=false", "--run-dir", str(run)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "checkpoint.pt").exists():
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM  # still dies by the signal
    assert f"supercm: training terminated by SIGTERM; continue with 'supercm train --resume {run}'" in err, err


def test_a_crafted_preprocessing_cache_is_recomputed_without_torchs_unsafe_advice(tmp_path):
    from supercm.data.torchvision_sets import _read_cache

    (tmp_path / "c.pt").write_bytes(_crafted(b""))
    with pytest.warns(UserWarning, match="holds Python objects") as caught:
        assert _read_cache(tmp_path / "c.pt", 2, 2) is None
    assert not any("weights_only" in str(w.message) for w in caught)


def test_train_from_python_puts_the_callers_sigterm_handler_back(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    assert main(["train", DIGITS_YAML, *SSL_FAST, "--run-dir", str(tmp_path / "run")]) == 0
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("script,arg", [("uda_accuracy.py", "--workers=0"), ("ssl_accuracy.py", "--seeds=-1")])
def test_sweep_counts_below_one_are_a_usage_line(script, arg):
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), arg], env=ENV, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1].endswith("must be ≥ 1, got " + arg.split("=")[1])
