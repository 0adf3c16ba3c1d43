"""Image datasets from disk (issue 12): every layout and list format on small trees written here,
the decoded uint8 cache, batched RandomResizedCrop, the ResNet backbones with weights from a file,
and one CPU run folder → cache → ResNet-18 → DANN + SuperCM."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from supercm.config import ConfigError, from_dict
from supercm.data import DATASETS, BadImageError, DatasetLayoutError, load_dataset, load_uda
from supercm.data.augment import Augment
from supercm.data.images import OFFICEHOME_CLASSES, decode_images
from supercm.models import ImageInput, build_backbone
from supercm.train import CLASSES, Trainer

SIZE, CROP = 20, 16


def write_image(path: Path, label: int, seed: int, fmt: str | None = None) -> None:
    """A small image whose colour says its class (so a tiny run can learn), with noise."""
    rng = np.random.default_rng(seed)
    colour = np.array([(label * 70) % 256, (label * 130 + 40) % 256, (label * 200 + 90) % 256])
    pixels = np.clip(colour + rng.normal(0, 20, (24, 30, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def opts(tmp_path, **kw):
    return {"size": SIZE, "crop": CROP, "cache_dir": str(tmp_path / "cache"), "progress": False, "workers": 2, **kw}


# --------------------------------------------------------------------------- layouts


def office31_folders(root: Path, domain: str = "amazon", per_class: int = 2, classes=("back_pack", "bike", "mug")):
    for c in classes:
        for i in range(per_class):
            write_image(root / "office31" / domain / "images" / c / f"frame_{i:04d}.jpg", len(c), i)


def test_office31_folder_layout_labels_follow_the_benchmark_class_list(tmp_path):
    office31_folders(tmp_path)
    ds = load_dataset("office31_amazon", str(tmp_path), **opts(tmp_path))
    assert ds.num_classes == 31 and len(ds.classes) == 31
    assert ds.train_x.dtype == torch.uint8 and ds.train_x.shape == (6, 3, SIZE, SIZE)
    want = sorted([ds.classes.index(c) for c in ("back_pack", "bike", "mug")] * 2)
    assert ds.train_y.tolist() == want
    assert ds.test_x is ds.train_x  # the field's transductive protocol: a domain's test set is all its images
    assert ds.augment == {"resized_crop": CROP, "flip": True} and ds.input_transform["crop"] == CROP


def test_officehome_official_archive_real_world_with_a_space_and_list_order(tmp_path):
    base = tmp_path / "OfficeHomeDataset_10072016"
    # Folder layout of the official archive: "Real World" with its space.
    for c in ("Alarm_Clock", "Drill"):
        for i in range(2):
            write_image(base / "Real World" / c / f"{i:05d}.jpg", len(c), i)
    ds = load_dataset("officehome_real_world", str(tmp_path), **opts(tmp_path))
    assert ds.classes == list(OFFICEHOME_CLASSES) and ds.classes[0] == "Drill"  # not alphabetical
    assert sorted(set(ds.train_y.tolist())) == [0, OFFICEHOME_CLASSES.index("Alarm_Clock")]
    # The same domain read from a list in the official (non-alphabetical) order, a path with a space.
    lines = [f"Real World/Drill/0000{i}.jpg 0" for i in range(2)]
    lines += [f"Real World/Alarm_Clock/0000{i}.jpg {OFFICEHOME_CLASSES.index('Alarm_Clock')}" for i in range(2)]
    (base / "image_list").mkdir()
    (base / "image_list" / "Real_World.txt").write_text("\n".join(lines) + "\n")
    listed = load_dataset("officehome_real_world", str(tmp_path), **opts(tmp_path, layout="list"))
    assert sorted(listed.train_y.tolist()) == sorted(ds.train_y.tolist())


def test_a_list_contradicting_its_class_folders_is_refused(tmp_path):
    base = tmp_path / "officehome"
    write_image(base / "Art" / "Alarm_Clock" / "1.jpg", 0, 0)
    (base / "image_list").mkdir(parents=True)
    (base / "image_list" / "Art.txt").write_text("Art/Alarm_Clock/1.jpg 0\n")  # alphabetical label: wrong
    with pytest.raises(DatasetLayoutError, match="official list order"):
        load_dataset("officehome_art", str(tmp_path), **opts(tmp_path))


def test_image_lists_spaces_absolute_relocated_comments_and_png(tmp_path):
    base = tmp_path / "image_CLEF"
    write_image(base / "c" / "113 0001.png", 0, 1, "PNG")  # a space in the file name
    write_image(base / "c" / "114_0002.jpg", 1, 2)
    write_image(base / "c" / "115_0003.jpg", 2, 3)
    (base / "list").mkdir(parents=True)
    (base / "list" / "cList.txt").write_text(
        "# comment\n"
        "c/113 0001.png 0\n"                                       # relative to the dataset folder
        f"{base / 'c' / '114_0002.jpg'} 1\n"                       # absolute, exists
        "/data/someone/imageCLEF/c/115_0003.jpg   11\n\n"          # absolute from another machine: relocated
    )
    ds = load_dataset("imageclef_c", str(tmp_path), **opts(tmp_path))
    assert ds.num_classes == 12 and ds.train_y.tolist() == [0, 1, 11]


@pytest.mark.parametrize("text,match", [("c/a.jpg\n", "malformed"), ("c/a.jpg zero\n", "malformed"),
                                        ("c/missing.jpg 0\n", "not found"), ("c/a.jpg 12\n", "outside")])
def test_malformed_lists_are_one_clear_error(tmp_path, text, match):
    base = tmp_path / "image_CLEF"
    write_image(base / "c" / "a.jpg", 0, 0)
    (base / "list").mkdir(parents=True)
    (base / "list" / "cList.txt").write_text(text)
    with pytest.raises(DatasetLayoutError, match=match):
        load_dataset("imageclef_c", str(tmp_path), **opts(tmp_path))


def test_office_caltech_and_a_missing_dataset_names_the_layout(tmp_path):
    for c in ("projector", "back_pack"):
        write_image(tmp_path / "office_caltech_10" / "caltech" / c / "1.jpg", len(c), 0)
    ds = load_dataset("office_caltech_caltech", str(tmp_path), **opts(tmp_path))
    assert ds.num_classes == 10 and ds.train_y.tolist() == [0, 9]
    with pytest.raises(DatasetLayoutError, match="office31/amazon/images/back_pack"):
        load_dataset("office31_amazon", str(tmp_path / "nowhere"), **opts(tmp_path))
    with pytest.raises(DatasetLayoutError, match="no folder for domain 'webcam'"):
        load_dataset("office_caltech_webcam", str(tmp_path), **opts(tmp_path))
    (tmp_path / "office_caltech_10" / "dslr" / "not_a_class").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="not classes of this dataset"):
        load_dataset("office_caltech_dslr", str(tmp_path), **opts(tmp_path))


# --------------------------------------------------------------------------- bad images + cache


def test_truncated_images_fail_by_path_or_are_skipped_with_a_warning(tmp_path):
    office31_folders(tmp_path, "webcam")
    bad = tmp_path / "office31" / "webcam" / "images" / "mug" / "frame_0001.jpg"
    truncate(bad)
    with pytest.raises(BadImageError, match="frame_0001.jpg"):
        load_dataset("office31_webcam", str(tmp_path), **opts(tmp_path))
    with pytest.warns(UserWarning, match=r"left out 1 of 6 .*frame_0001.jpg"):
        ds = load_dataset("office31_webcam", str(tmp_path), **opts(tmp_path, bad_images="skip"))
    assert ds.train_x.shape[0] == 5 and ds.train_y.shape[0] == 5


def test_cache_is_reused_and_keyed_by_files_and_size(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / "imgs" / f"{i}.jpg"
        write_image(p, i, i)
        paths.append(p)
    cache = tmp_path / "cache"
    x1, kept = decode_images(paths, 12, cache_dir=cache, progress=False)
    assert kept == [0, 1, 2] and x1.shape == (3, 3, 12, 12)
    assert len(list(cache.glob("*.npy"))) == 1 and not list(cache.glob(".*tmp"))
    # Reused: a cache hit does not open the images (a corrupted file would fail to decode).
    x2, _ = decode_images(paths, 12, cache_dir=cache, progress=False)
    assert torch.equal(x1, x2)
    decode_images(paths, 10, cache_dir=cache, progress=False)  # another size: another entry
    write_image(paths[0], 5, 9)  # another file content (size/mtime): another entry
    decode_images(paths, 12, cache_dir=cache, progress=False)
    assert len(list(cache.glob("*.npy"))) == 3
    # The decode matches Pillow's default (bicubic) resize, as the field's ResizeImage of the RGB image.
    ref = np.asarray(Image.open(paths[1]).convert("RGB").resize((12, 12))).transpose(2, 0, 1)
    assert torch.equal(x1[1], torch.from_numpy(np.ascontiguousarray(ref)))


# --------------------------------------------------------------------------- image_folder


def user_folders(root: Path, classes=("cat", "dog"), per_class=6):
    for k, c in enumerate(classes):
        for i in range(per_class):
            write_image(root / "src" / c / f"{c} {i}.jpg", k, i)  # spaces in the names
            write_image(root / "tgt" / "any" / "depth" / f"{c}{i}.png", k, 100 + i, "PNG")
    (root / "src" / "empty_class").mkdir()


def test_image_folder_uda_and_ssl(tmp_path):
    user_folders(tmp_path)
    o = opts(tmp_path, source=str(tmp_path / "src"), target=str(tmp_path / "tgt"))
    with pytest.warns(UserWarning, match="empty_class"):
        pair = load_uda("image_folder", "image_folder", str(tmp_path), **o)
    assert pair.source.classes == ["cat", "dog"] and pair.source.num_classes == 2
    assert pair.target.train_x.shape[0] == 12 and (pair.target.train_y == -1).all()
    assert pair.target.test_x.shape[0] == 0  # no labelled target images: no target test accuracy
    with pytest.raises(ValueError, match="set data.target: image_folder"):
        load_dataset("image_folder", str(tmp_path), **o)
    # SSL from one labelled folder, with a labelled list as its test set (relative paths).
    (tmp_path / "test.txt").write_text("src/dog/dog 0.jpg 1\nsrc/cat/cat 1.jpg 0\n")
    with pytest.warns(UserWarning):
        ssl = load_dataset("image_folder", str(tmp_path), **opts(tmp_path, source="src", test="test.txt"))
    assert ssl.train_x.shape[0] == 12 and ssl.test_y.tolist() == [1, 0]


# --------------------------------------------------------------------------- augmentation + input stage


def test_resized_crop_is_seeded_in_range_and_the_input_stage_centre_crops():
    x = torch.randint(0, 256, (8, 3, SIZE, SIZE), dtype=torch.uint8)
    aug = Augment(resized_crop=CROP, flip=True)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    assert a.shape == (8, 3, CROP, CROP) and a.dtype == torch.float32 and torch.equal(a, b)
    assert 0 <= float(a.min()) and float(a.max()) <= 1
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(4)))
    stage = ImageInput(CROP, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    out = stage(x)
    off = (SIZE - CROP) // 2
    assert torch.allclose(out, (x[..., off:off + CROP, off:off + CROP].float() / 255 - 0.5) / 0.25)
    assert stage(a).shape == a.shape


# --------------------------------------------------------------------------- backbones


def test_resnet_weights_from_a_file_and_a_missing_file_is_one_line(tmp_path):
    import torchvision

    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    net = build_backbone("resnet18", (3, 32, 32), weights=str(path), bottleneck=16)
    assert torch.equal(net.pretrained.conv1.weight, ref.conv1.weight) and net.out_features == 16
    net.eval()
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 16)
    with pytest.raises(ValueError, match="no such file") as err:
        build_backbone("resnet18", (3, 32, 32), weights=str(tmp_path / "missing.pth"))
    assert "\n" not in str(err.value)
    assert build_backbone("resnet18", (3, 32, 32), weights="none", bottleneck=0).out_features == 512


def test_imagenet_weights_offline_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ValueError, match=r"resnet50-0676ba61\.pth.*IMAGENET1K_V2") as err:
        build_backbone("resnet50", (3, 224, 224))
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- the whole path on the CPU


def test_folder_to_resnet18_dann_supercm_run_records_classes_and_trains_bottleneck_at_full_lr(tmp_path):
    import torchvision

    user_folders(tmp_path, per_class=8)
    for c, k in (("cat", 0), ("dog", 1)):  # a labelled target test set
        for i in range(3):
            write_image(tmp_path / "tgt_test" / c / f"{i}.jpg", k, 200 + i)
    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    cfg = from_dict({
        "data": {"name": "image_folder", "target": "image_folder", "num_validation": 4,
                 "options": {**opts(tmp_path, size=40, crop=32), "source": str(tmp_path / "src"),
                             "target": str(tmp_path / "tgt"), "test": str(tmp_path / "tgt_test")}},
        "model": {"backbone": "resnet18", "options": {"weights": str(weights), "bottleneck": 32}},
        "method": {"name": "dann", "options": {"hidden": 16}},
        "cm": {"beta": 0.1},
        "optim": {"name": "sgd", "lr": 0.01, "schedule": "annealed", "backbone_lr_mult": 0.1, "weight_decay": 1e-3},
        "train": {"iterations": 4, "batch_labeled": 4, "batch_unlabeled": 4, "eval_every": 2, "device": "cpu",
                  "progress": False, "tensorboard": False, "ema_decay": 0.0},
    })
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(cfg, tmp_path / "run")
    lrs = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    bb = trainer.model.backbone
    assert lrs[id(bb.pretrained.conv1.weight)] == pytest.approx(0.001)
    assert lrs[id(bb.bottleneck[0].weight)] == pytest.approx(0.01)
    assert lrs[id(trainer.model.head.encoder.weight)] == pytest.approx(0.01)
    result = trainer.fit()
    assert json.loads((tmp_path / "run" / CLASSES).read_text()) == ["cat", "dog"]
    assert math.isfinite(result.final_test_accuracy) and result.iterations == 4
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final_test_accuracy"] is not None


def test_unknown_image_option_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data.options.sizes"):
        from_dict({"data": {"name": "office31_amazon", "target": "office31_webcam", "options": {"sizes": 3}}})
    assert "office31_amazon" in DATASETS and "officehome_real_world" in DATASETS and "imageclef_p" in DATASETS


def _r18_weights(tmp_path: Path) -> Path:
    import torchvision

    path = tmp_path / "r18.pth"
    if not path.exists():
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def test_a_shipped_office_config_runs_end_to_end_on_a_generated_tree(tmp_path):
    """configs/uda/office31-A-to-W-dann-cm.yaml as shipped, with a generated Office-31 (2 images per
    class per domain) and only the scale overridden: ResNet-18 from a weights file at 32 px, 4 iterations."""
    import yaml

    from supercm.config import load_config

    from supercm.data.images import OFFICE31_CLASSES

    _office31_tree(tmp_path / "data")
    root = Path(__file__).resolve().parent.parent
    cfg = load_config(root / "configs" / "uda" / "office31-A-to-W-dann-cm.yaml", [
        f"data.root={tmp_path / 'data'}", "data.num_validation=31",
        "data.options=" + json.dumps(opts(tmp_path, size=40, crop=32)),
        "model.backbone=resnet18", "model.options=" + json.dumps({"weights": str(_r18_weights(tmp_path)), "bottleneck": 32}),
        "train.iterations=4", "train.eval_every=2", "train.checkpoint_every=2", "train.batch_labeled=4",
        "train.batch_unlabeled=4", "train.device=cpu", "train.progress=false", "train.tensorboard=false",
    ])
    assert cfg.method.name == "dann" and cfg.cm.beta > 0 and cfg.optim.backbone_lr_mult == 0.1
    result = Trainer(cfg, tmp_path / "run").fit()
    assert result.iterations == 4 and math.isfinite(result.final_test_accuracy)
    assert json.loads((tmp_path / "run" / CLASSES).read_text()) == list(OFFICE31_CLASSES)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["name"] == "office31_amazon"


def _office31_tree(root: Path, per_class: int = 2) -> None:
    from supercm.data.images import OFFICE31_CLASSES

    for domain in ("amazon", "webcam"):
        for k, c in enumerate(OFFICE31_CLASSES):
            for i in range(per_class):
                write_image(root / "office31" / domain / "images" / c / f"frame_{i:04d}.jpg", k, i)


def test_the_benchmark_runner_goes_from_a_generated_tree_to_the_results_table(tmp_path):
    """benchmarks/uda_accuracy.py on a generated Office-31 (the shipped A→W DANN configs, ResNet-18
    from a weights file at 32 px, 2 iterations, 2 seeds, ± SuperCM): one results file, the table under
    every selection rule with the paired gain, and a second call finds every run done."""
    import subprocess
    import sys

    _office31_tree(tmp_path / "data")
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "results" / "office31.jsonl"
    cmd = [sys.executable, str(root / "benchmarks" / "uda_accuracy.py"), "--pairs", "office31-A-to-W", "--methods",
           "dann", "--seeds", "2", "--workers", "1", "--run-root", str(tmp_path / "runs"), "--out", str(out),
           "--data-root", str(tmp_path / "data"), "data.num_validation=31",
           "data.options=" + json.dumps(opts(tmp_path, size=40, crop=32)), "model.backbone=resnet18",
           "model.options=" + json.dumps({"weights": str(_r18_weights(tmp_path)), "bottleneck": 32}),
           "train.iterations=2", "train.eval_every=1", "train.checkpoint_every=1", "train.batch_labeled=4",
           "train.batch_unlabeled=4", "train.device=cpu"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(root / "src") + ":" + __import__("os").environ.get("PYTHONPATH", "")}
    out.parent.mkdir()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["cm"], r["seed"]) for r in records) == [(False, 0), (False, 1), (True, 0), (True, 1)]
    assert all(r["iterations"] == 2 and set(r["rules"]) == {"best_validation", "last", "oracle_test_selected", "dev",
                                                             "snd", "entropy", "im"} for r in records)
    md = out.with_suffix(".md").read_text()
    for rule in ("source-val", "last", "DEV", "SND", "entropy", "IM", "oracle (test-selected)"):
        assert f"**Rule: {rule}**" in md
    rows = [line for line in md.splitlines() if line.startswith("| office31-A-to-W | dann |")]
    assert len(rows) == 7 and all(row.count("/2 |") == 1 for row in rows)  # wins out of 2 paired seeds
    assert "**Regret against the oracle**" in md and "| SND | 4 |" in md  # every run, each rule
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "office31-A-to-W-dann-cm-seed0", "office31-A-to-W-dann-cm-seed1", "office31-A-to-W-dann-seed0",
        "office31-A-to-W-dann-seed1"]
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and "4 runs already" in again.stderr and "0 to go" in again.stderr


def test_image_run_resumes_exactly(tmp_path):
    """The uint8 cache + on-device RandomResizedCrop path draws from checkpointed generators only."""
    import yaml

    user_folders(tmp_path, per_class=4)
    cfg = from_dict({
        "data": {"name": "image_folder", "target": "image_folder", "num_validation": 2,
                 "options": {**opts(tmp_path, size=24, crop=16), "source": str(tmp_path / "src"),
                             "target": str(tmp_path / "tgt")}},
        "model": {"backbone": "cnn", "options": {"width": 4, "convs_per_block": 1}},
        "method": {"name": "dann", "options": {"hidden": 8}},
        "cm": {"beta": 0.2},
        "optim": {"name": "sgd", "lr": 0.01, "schedule": "annealed"},
        "train": {"iterations": 6, "checkpoint_every": 3, "eval_every": 3, "log_every": 1, "batch_labeled": 3,
                  "batch_unlabeled": 3, "device": "cpu", "progress": False, "tensorboard": False, "ema_decay": 0.0},
    })
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = Trainer(cfg, tmp_path / "full")
        full.fit()
        Trainer(cfg.replace(**{"train.iterations": 3}), tmp_path / "half").fit()
        (tmp_path / "half" / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
        resumed = Trainer.resume(tmp_path / "half")
        resumed.fit()
    assert (tmp_path / "full" / "metrics.jsonl").read_text() == (tmp_path / "half" / "metrics.jsonl").read_text()
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    # No target test set was given: the target test accuracy does not exist and is reported as null.
    assert json.loads((tmp_path / "full" / "summary.json").read_text())["final_test_accuracy"] is None


def test_eval_pass_centroids_go_through_the_input_stage(tmp_path):
    """cm.features=eval_pass recomputes labeled features from the raw (uint8) batch: it must pass the
    model's input stage, like every other forward."""
    user_folders(tmp_path, per_class=3)
    cfg = from_dict({
        "data": {"name": "image_folder", "target": "image_folder", "num_validation": 0,
                 "options": {**opts(tmp_path, size=24, crop=16), "source": str(tmp_path / "src"),
                             "target": str(tmp_path / "tgt")}},
        "model": {"backbone": "resnet18", "options": {"weights": "none", "bottleneck": 8}},
        "cm": {"beta": 0.2, "features": "eval_pass"},
        "train": {"iterations": 1, "batch_labeled": 2, "batch_unlabeled": 2, "device": "cpu", "progress": False,
                  "tensorboard": False, "ema_decay": 0.0},
    })
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = Trainer(cfg, None)
    assert math.isfinite(float(t.train_step()["cm"]))


def test_explicit_list_option_and_option_types(tmp_path):
    office31_folders(tmp_path, "dslr")
    lst = tmp_path / "my lists" / "d.txt"  # a space in the list's own folder name
    lst.parent.mkdir()
    lst.write_text("dslr/images/mug/frame_0000.jpg 17\ndslr/images/bike/frame_0001.jpg 1\n")
    ds = load_dataset("office31_dslr", str(tmp_path), **opts(tmp_path, lists={"dslr": str(lst)}))
    assert ds.train_y.tolist() == [17, 1] and ds.classes[17] == "mug"
    cfg = from_dict({"data": {"name": "office31_dslr", "options": {"lists": {"dslr": "x.txt"}, "bad_images": "skip"}}})
    assert cfg.data.options["lists"] == {"dslr": "x.txt"}
    with pytest.raises(ConfigError, match="data.options.size"):
        from_dict({"data": {"name": "office31_dslr", "options": {"size": "big"}}})
    with pytest.raises(ValueError, match="bad_images must be one of fail, skip"):
        load_dataset("office31_dslr", str(tmp_path), **opts(tmp_path, bad_images="ignore"))


def test_own_two_folders_train_dann_supercm_from_one_command(tmp_path, capsys):
    from supercm.cli import main

    user_folders(tmp_path, per_class=3)
    root = Path(__file__).resolve().parent.parent
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="empty_class"):
        rc = main(["train", str(root / "configs" / "uda" / "image_folder-dann-cm.yaml"),
                   f"data.options.source={tmp_path / 'src'}", f"data.options.target={tmp_path / 'tgt'}",
                   "data.options.size=40", "data.options.crop=32", f"data.options.cache_dir={tmp_path / 'cache'}",
                   "data.options.progress=false", "model.backbone=resnet18",
                   f"model.options.weights={_r18_weights(tmp_path)}", "train.iterations=2", "train.batch_labeled=2",
                   "train.batch_unlabeled=2", "train.device=cpu", "train.progress=false", "train.tensorboard=false",
                   "--run-dir", str(run)])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 2 and summary["final_test_accuracy"] is None  # no labelled target images
    assert json.loads((run / CLASSES).read_text()) == ["cat", "dog"]


def test_resized_crop_boxes_follow_random_resized_crop():
    """Sampling a coordinate ramp recovers each crop box (bilinear interpolation and averaging are exact
    on a linear function): integer positions inside the image, area fraction in [0.08, 1], aspect ratio
    in [3/4, 4/3] (up to the rounding of width and height to pixels), as torchvision draws them."""
    n, side, s = 400, 64, 16
    ramp = torch.arange(side, dtype=torch.float32)
    x = torch.stack([ramp.view(1, -1).expand(side, side), ramp.view(-1, 1).expand(side, side)]).expand(n, 2, side, side)
    out = Augment(resized_crop=s)(x.contiguous(), torch.Generator().manual_seed(0))

    def box(first, last):
        size = (last - first) * s / (s - 1)
        return first + 0.5 - size / (2 * s), size

    left, bw = box(out[:, 0, 0, 0], out[:, 0, 0, -1])
    top, bh = box(out[:, 1, 0, 0], out[:, 1, -1, 0])
    for start, size in ((left, bw), (top, bh)):
        assert (start > -0.3).all() and (start + size < side + 0.3).all()
        assert (start - start.round()).abs().max() < 0.3 and (size - size.round()).abs().max() < 0.3
    area = bw * bh / side**2
    assert area.min() > 0.07 and area.max() < 1.01 and area.std() > 0.15
    ratio = bw / bh
    assert ratio.min() > 0.70 and ratio.max() < 1.40
