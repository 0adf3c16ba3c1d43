"""The stream pipeline (issue 12 §2, data.options.pipeline=stream): images decoded from disk in
DataLoader worker processes must train exactly as the decoded uint8 cache does, resume exactly after
a kill, and report an undecodable file by its path in the training process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from process_group import gloo_group, spawn
from test_images import opts, truncate, user_folders, write_image

from supercm.config import ConfigError, from_dict
from supercm.data import BadImageError, load_dataset, load_uda
from supercm.data.stream import ImageStore, close_workers
from supercm.train import CHECKPOINT, EVALS, METRICS, Trainer

HERE = Path(__file__).resolve().parent


def tree(root: Path) -> Path:
    user_folders(root, per_class=5)
    for c, k in (("cat", 0), ("dog", 1)):  # a labelled target test set, evaluated at every evaluation
        for i in range(3):
            write_image(root / "tgt_test" / c / f"{i}.jpg", k, 300 + i)
    return root


def config(root: Path, pipeline: str, workers: int, *, method: str = "dann", iterations: int = 6, **train):
    data = {"options": {**opts(root, size=24, crop=16), "source": str(root / "src"), "pipeline": pipeline,
                        "workers": workers, "test": str(root / "tgt_test")}}
    if method == "dann":  # domain adaptation from two folders
        data.update(name="image_folder", target="image_folder", num_validation=2)
        data["options"]["target"] = str(root / "tgt")
    else:  # SSL from one folder: Mean Teacher needs a second view of the raw batch
        data.update(name="image_folder", num_labeled=4, num_validation=2)
    return from_dict({
        "data": data,
        "model": {"backbone": "cnn", "options": {"width": 4, "convs_per_block": 1}},
        "method": {"name": method, "options": {"hidden": 8} if method == "dann" else {}},
        "cm": {"beta": 0.2},
        "optim": {"name": "sgd", "lr": 0.01, "schedule": "annealed"},
        "train": {"iterations": iterations, "checkpoint_every": 3, "eval_every": 3, "log_every": 1,
                  "batch_labeled": 3, "batch_unlabeled": 3, "device": "cpu", "progress": False,
                  "tensorboard": False, "ema_decay": 0.9, **train},
    })


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tree's empty class folder
        return fn(*args, **kwargs)


def same_run(a: Path, b: Path) -> None:
    for name in (METRICS, EVALS):
        assert (a / name).read_text() == (b / name).read_text(), name
    wa = torch.load(a / CHECKPOINT, weights_only=True)
    wb = torch.load(b / CHECKPOINT, weights_only=True)
    for key in ("model", "ema_model"):
        for (name, x), y in zip(wa[key].items(), wb[key].values()):
            assert torch.equal(x, y), f"{key}.{name}"


@pytest.mark.parametrize("method", ["dann", "mean_teacher"])
def test_stream_trains_bit_for_bit_like_the_memory_pipeline(tmp_path, method):
    root = tree(tmp_path)
    runs = {}
    for pipeline, workers in (("memory", 2), ("stream", 2), ("stream", 0)):
        run = tmp_path / f"{pipeline}{workers}"
        trainer = quiet(Trainer, config(root, pipeline, workers, method=method), run)
        quiet(trainer.fit)
        runs[pipeline, workers] = (run, trainer)
    memory, trainer = runs["memory", 2]
    assert isinstance(trainer.x_train, torch.Tensor)
    for key in (("stream", 2), ("stream", 0)):
        run, streamed = runs[key]
        assert isinstance(streamed.x_train, ImageStore) and isinstance(streamed.x_test, ImageStore)
        # Every training read came from the prefetch (6 steps × 2 reads); on demand: the dry run and
        # the evaluations.
        assert streamed.x_train.reads["prefetched"] == 12
        same_run(memory, run)
    assert json.loads((memory / "summary.json").read_text())["final_test_accuracy"] is not None


def test_a_stream_run_killed_mid_run_resumes_exactly(tmp_path):
    """SIGKILL after the checkpoint of iteration 3 (at the evaluation of iteration 4, while the loader's
    workers were decoding batches ahead); --resume must end where an uninterrupted memory run ends."""
    root = tree(tmp_path)
    cfg = config(root, "stream", 2, iterations=8, eval_every=4)
    killed = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal, warnings
        import torch
        torch.set_num_threads({torch.get_num_threads()})  # this process's: float sums split alike
        warnings.simplefilter("ignore")
        from supercm.config import load_config
        from supercm.train import Trainer

        cfg = load_config({str(tmp_path / "cfg.yaml")!r})
        def die(record):
            if record["iteration"] == 4:
                os.kill(os.getpid(), signal.SIGKILL)
        Trainer(cfg, {str(killed)!r}).fit(on_evaluate=die)
    """)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    with open(tmp_path / "stderr.txt", "wb") as err:  # not a pipe: the orphaned workers would hold it open
        proc = subprocess.run([sys.executable, "-c", script], check=False, env=env, stdout=subprocess.DEVNULL,
                              stderr=err, timeout=120)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()[-2000:]
    state = torch.load(killed / CHECKPOINT, weights_only=True)
    assert state["iteration"] == 3
    assert max(json.loads(line)["iteration"] for line in (killed / METRICS).read_text().splitlines()) == 4

    resumed = quiet(Trainer.resume, killed)
    quiet(resumed.fit)
    assert resumed.x_train.reads["prefetched"] == 2 * 5  # iterations 4..8, from the restored samplers
    full = tmp_path / "memory"
    quiet(quiet(Trainer, cfg.replace(**{"data.options": {**cfg.data.options, "pipeline": "memory"}}), full).fit)
    same_run(full, killed)


def test_a_file_that_cannot_be_decoded_stops_the_run_by_path_and_the_run_resumes(tmp_path):
    root = tree(tmp_path)
    # Evaluations in domain adaptation read every target training image of this small tree (the label-free
    # selection rules), so the first one comes after the step that draws the bad file: the training path.
    cfg = config(root, "stream", 2, iterations=8, checkpoint_every=2, eval_every=4)
    bad = root / "tgt" / "any" / "depth" / "cat3.png"  # a target image first drawn at iteration 4 (seed 0)
    good = bad.read_bytes()
    truncate(bad)
    trainer = quiet(Trainer, cfg, tmp_path / "run")  # nothing is decoded ahead of time
    # The store does not know whether a checkpoint exists: ``supercm train`` adds how to go on
    # (test_reliability_surfaces: resume only when a checkpoint was written).
    with pytest.raises(BadImageError, match=r"cat3\.png.*replace the file"):
        quiet(trainer.fit)
    stopped_at = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["iteration"]
    assert stopped_at == 2
    # Through the command line, the one-line error says how to go on: this run wrote a checkpoint.
    from supercm.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(["train", "--resume", str(tmp_path / "run")]) == 2
    line = err.getvalue().strip().splitlines()[-1]
    assert "cat3.png" in line and f"continue the run with 'supercm train --resume {tmp_path / 'run'}'" in line, line
    bad.write_bytes(good)  # the user replaces the file
    resumed = quiet(Trainer.resume, tmp_path / "run")
    assert quiet(resumed.fit).iterations == 8
    quiet(quiet(Trainer, cfg, tmp_path / "clean").fit)
    same_run(tmp_path / "clean", tmp_path / "run")


def test_bad_images_skip_leaves_out_the_same_images_as_the_memory_pipeline(tmp_path):
    root = tree(tmp_path)
    (root / "src" / "empty_class").rmdir()
    truncate(root / "src" / "dog" / "dog 2.jpg")
    o = {**opts(tmp_path, size=24, crop=16), "source": str(root / "src"), "target": str(root / "tgt"),
         "bad_images": "skip"}
    with pytest.warns(UserWarning, match=r"left out 1 of 10 .*dog 2\.jpg"):
        memory = load_uda("image_folder", "image_folder", str(root), **o)
    with pytest.warns(UserWarning, match=r"left out 1 of 10 .*dog 2\.jpg"):
        stream = load_uda("image_folder", "image_folder", str(root), **o, pipeline="stream")
    assert isinstance(stream.source.train_x, ImageStore) and len(stream.source.train_x) == 9
    assert torch.equal(memory.source.train_y, stream.source.train_y)
    assert torch.equal(memory.source.train_x, stream.source.train_x[torch.arange(9)])
    assert torch.equal(memory.target.train_x[3:5], stream.target.train_x[3:5])
    # The scan is cached under the files' key: a second load decodes nothing up front.
    with pytest.warns(UserWarning, match="left out 1"):
        again = load_uda("image_folder", "image_folder", str(root), **{**o, "pipeline": "stream"})
    assert again.source.train_x.paths == stream.source.train_x.paths
    # bad_images=fail reads nothing up front; the file is named when a batch needs it.
    lazy = quiet(load_dataset, "image_folder", str(root), **{**o, "target": None, "bad_images": "fail",
                                                             "pipeline": "stream", "workers": 0})
    with pytest.raises(BadImageError, match=r"dog 2\.jpg"):
        lazy.train_x[torch.arange(10)]


def test_store_reads_like_the_cached_tensor(tmp_path):
    root = tree(tmp_path)
    o = {**opts(tmp_path, size=24, crop=16), "source": str(root / "src")}
    memory = quiet(load_dataset, "image_folder", str(root), **o)
    for workers in (0, 2):
        store = quiet(load_dataset, "image_folder", str(root), **{**o, "pipeline": "stream", "workers": workers}).train_x
        assert store.shape == memory.train_x.shape and store.dtype == torch.uint8 and len(store) == 10
        rows = torch.tensor([7, 0, 3, 3, -1])
        assert torch.equal(store[rows], memory.train_x[rows])
        assert torch.equal(store[2:5], memory.train_x[2:5]) and torch.equal(store[4], memory.train_x[4])
        mask = torch.arange(10) % 3 == 0
        assert torch.equal(store[mask], memory.train_x[mask])
        chunks = [torch.tensor([1, 2, 3]), torch.tensor([9]), torch.tensor([5, 6, 7, 8, 0])]
        assert all(torch.equal(a, memory.train_x[c]) for a, c in zip(store.batches(chunks), chunks))
        with pytest.raises(IndexError, match="out of range"):
            store[torch.tensor([10])]
    close_workers()


def test_prefetch_runs_ahead_on_sampler_copies_and_a_read_off_the_plan_is_still_right(tmp_path):
    from supercm.train import BatchSampler

    root = tree(tmp_path)
    store = quiet(load_dataset, "image_folder", str(root), **opts(tmp_path, size=24, crop=16),
                  source=str(root / "src"), pipeline="stream").train_x
    memory = quiet(load_dataset, "image_folder", str(root), **opts(tmp_path, size=24, crop=16), source=str(root / "src"))
    a, b = BatchSampler(torch.arange(10), 3, 1), BatchSampler(torch.arange(4, 10), 2, 2)
    with store.prefetch([a, b]):
        for _ in range(4):
            for s in (a, b):
                rows = s.next()
                assert torch.equal(store[rows], memory.train_x[rows])
        assert store.reads["prefetched"] == 8
        rows = torch.tensor([9, 8])  # not what the copies drew: decoded on demand, same pixels
        with pytest.warns(RuntimeWarning, match="did not follow"):
            assert torch.equal(store[rows], memory.train_x[rows])
        rows = a.next()  # the plan goes on after a stray read
        assert torch.equal(store[rows], memory.train_x[rows]) and store.reads["prefetched"] == 9
    assert store._stream is None


@pytest.mark.parametrize("options,match", [
    ({"pipeline": "disk"}, "data.options.pipeline .* must be one of memory, stream, got 'disk'"),
    ({"workers": -1}, r"data.options.workers .* must be in \[0, inf\)"),
    ({"prefetch": 0}, r"data.options.prefetch .* must be in \[1, inf\)"),
    ({"bad_images": "ignore"}, "data.options.bad_images .* must be one of fail, skip"),
])
def test_pipeline_options_are_one_line_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        from_dict({"data": {"name": "office31_amazon", "target": "office31_webcam", "options": options}})
    with pytest.raises(ConfigError, match="unknown option data.options.pipeline for dataset 'digits'"):
        from_dict({"data": {"name": "digits", "options": {"pipeline": "stream"}}})


def _ddp_stream_worker(rank, world, init_file, root, out_dir):
    try:
        with gloo_group(rank, world, init_file) as hold:
            cfg = config(Path(root), "stream", 1, batch_labeled=4, batch_unlabeled=4, sync_batchnorm=True)
            trainer = hold(quiet(Trainer, cfg, os.path.join(out_dir, "ddp") if rank == 0 else None))
            quiet(trainer.fit)
            torch.save({"prefetched": trainer.x_train.reads["prefetched"]}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        close_workers()


def test_data_parallel_ranks_stream_only_their_share(tmp_path):
    """2 gloo processes with pipeline=stream: each rank's prefetch decodes its own half of every
    global batch (every training read came from it), and the run trains what one process trains
    from the memory pipeline (float32 sums in another order: 1e-5 relative)."""
    root = tree(tmp_path / "data")
    spawn(_ddp_stream_worker, 2, str(tmp_path / "store"), str(root), str(tmp_path))
    assert [torch.load(tmp_path / f"rank{r}.pt")["prefetched"] for r in range(2)] == [12, 12]
    one = quiet(Trainer, config(root, "memory", 0, batch_labeled=4, batch_unlabeled=4), tmp_path / "one")
    quiet(one.fit)
    a, b = ([json.loads(line) for line in (tmp_path / d / METRICS).read_text().splitlines()] for d in ("ddp", "one"))
    assert len(a) == len(b) == 6
    for ra, rb in zip(a, b):
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-7), (ra["iteration"], k)
