"""Any timm model as a backbone (optional extra supercm[timm]): built by name with the ResNets'
bottleneck and weights rules, its pretrained part at the backbone learning rate. The tests use timm's
tiny ``test_resnet`` with random weights saved to files; they are skipped where timm is not installed
(it is not in the test extra: it pulls in huggingface_hub), except the one for its absence."""

from __future__ import annotations

import math
import sys
import warnings

import pytest
import torch
from test_images import opts, user_folders

from supercm.config import ConfigError, from_dict
from supercm.models import build_backbone
from supercm.models.resnet import WeightsMissingError
from supercm.train import Trainer

NAME = "test_resnet"  # timm's ~0.4 M-parameter test network (96-d features)


def test_without_timm_the_backbone_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm → ImportError
    with pytest.raises(ValueError, match=r"pip install 'supercm\[timm\]'"):
        build_backbone("timm", (3, 32, 32), name=NAME, weights="none")


def test_a_timm_model_by_name_with_the_bottleneck_and_its_normalisation():
    timm = pytest.importorskip("timm")
    bb = build_backbone("timm", (3, 32, 32), name=NAME, weights="none", bottleneck=16)
    assert bb.out_features == 16 and isinstance(bb.bottleneck[0], torch.nn.Linear)
    assert sum(p.numel() for p in bb.pretrained.parameters()) > 0
    bb.eval()
    x = torch.randn(4, 3, 32, 32)  # ImageNet-normalised, as the image datasets give
    # test_resnet was trained on mean = std = 0.5: the backbone maps ImageNet's normalisation onto it.
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    raw = x * std + mean
    torch.testing.assert_close(bb(x), bb.bottleneck(bb.pretrained((raw - 0.5) / 0.5)))
    assert build_backbone("timm", (3, 32, 32), name=NAME, weights="none", bottleneck=0).out_features == \
        timm.create_model(NAME, num_classes=0).num_features
    with pytest.raises(ValueError, match="not a timm model"):
        build_backbone("timm", (3, 32, 32), name="no_such_net", weights="none")
    with pytest.raises(ValueError, match="model.options.name must name a timm model"):
        build_backbone("timm", (3, 32, 32), weights="none")


def test_weights_from_a_file_and_files_that_do_not_fit(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    with_head = timm.create_model(NAME)  # a classifier-ful state dict, as timm checkpoints are
    torch.save(with_head.state_dict(), tmp_path / "w.pth")
    bb = build_backbone("timm", (3, 32, 32), name=NAME, weights=str(tmp_path / "w.pth"))
    for k, v in bb.pretrained.state_dict().items():
        assert torch.equal(v, with_head.state_dict()[k]), k
    torch.save({"state_dict": timm.create_model(NAME, num_classes=0).state_dict()}, tmp_path / "headless.pth")
    build_backbone("timm", (3, 32, 32), name=NAME, weights=str(tmp_path / "headless.pth"))
    torch.save(timm.create_model("resnet10t", num_classes=0).state_dict(), tmp_path / "other.pth")
    with pytest.raises(WeightsMissingError, match=f"do not fit timm model {NAME}"):
        build_backbone("timm", (3, 32, 32), name=NAME, weights=str(tmp_path / "other.pth"))
    with pytest.raises(WeightsMissingError, match="no such file"):
        build_backbone("timm", (3, 32, 32), name=NAME, weights=str(tmp_path / "missing.pth"))


def test_imagenet_weights_come_from_the_cache_or_a_download_the_user_allows(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    import huggingface_hub.constants
    from safetensors.torch import save_file

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch_hub"))
    with pytest.raises(WeightsMissingError, match=r"not in the Hugging Face or torch hub cache.*download=true"):
        build_backbone("timm", (3, 32, 32), name=NAME)  # weights=imagenet, download=false: no network touched
    # What a download leaves in the Hugging Face cache is read without the network.
    hub_id = timm.create_model(NAME).pretrained_cfg["hf_hub_id"]
    repo = tmp_path / "hf" / ("models--" + hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    reference = timm.create_model(NAME)
    save_file(reference.state_dict(), str(repo / "snapshots" / "abc123" / "model.safetensors"))
    bb = build_backbone("timm", (3, 32, 32), name=NAME)
    assert torch.equal(bb.pretrained.conv1[0].weight, reference.conv1[0].weight)


def test_timm_backbone_trains_dann_supercm_with_its_pretrained_part_at_the_backbone_lr(tmp_path):
    timm = pytest.importorskip("timm")
    user_folders(tmp_path, per_class=4)
    torch.save(timm.create_model(NAME).state_dict(), tmp_path / "w.pth")
    cfg = from_dict({
        "data": {"name": "image_folder", "target": "image_folder", "num_validation": 2,
                 "options": {**opts(tmp_path, size=36, crop=32), "source": str(tmp_path / "src"),
                             "target": str(tmp_path / "tgt")}},
        "model": {"backbone": "timm", "options": {"name": NAME, "weights": str(tmp_path / "w.pth"), "bottleneck": 16}},
        "method": {"name": "dann", "options": {"hidden": 8}},
        "cm": {"beta": 0.1},
        "optim": {"name": "sgd", "lr": 0.01, "schedule": "annealed", "backbone_lr_mult": 0.1},
        "train": {"iterations": 2, "batch_labeled": 4, "batch_unlabeled": 4, "eval_every": 2, "device": "cpu",
                  "progress": False, "tensorboard": False, "ema_decay": 0.0},
    })
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(cfg, None)
    lrs = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    bb = trainer.model.backbone
    assert all(lrs[id(p)] == pytest.approx(0.001) for p in bb.pretrained.parameters())
    assert all(lrs[id(p)] == pytest.approx(0.01) for p in bb.bottleneck.parameters())
    before = bb.pretrained.conv1[0].weight.detach().clone()
    result = trainer.fit()
    assert result.iterations == 2 and math.isfinite(result.final_val_accuracy)
    assert not torch.equal(before, bb.pretrained.conv1[0].weight)
    with pytest.raises(ConfigError, match="not a timm model"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trainer(cfg.replace(**{"model.options": {"name": "no_such_net", "weights": "none"}}), None)
