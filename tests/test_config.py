"""Config validation: unknown keys and wrong types are errors that name the key."""

from __future__ import annotations

import pytest

from supercm.config import Config, ConfigError, from_dict, load_config, parse_override


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("cm:\n  beta: 0.2\ntrain:\n  iterations: 7\n")
    cfg = load_config(p, ["cm.beta=0.5", "method.name=pseudo_label", "method.options.threshold=0.9", "optim.decay_at=null"])
    assert cfg.cm.beta == 0.5 and cfg.train.iterations == 7
    assert cfg.method.options == {"threshold": 0.9} and cfg.optim.decay_at is None
    assert isinstance(from_dict({"optim": {"lr": 1}}).optim.lr, float)  # ints are accepted for floats
    assert from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "data,match",
    [
        ({"cm": {"betta": 1}}, r"unknown config key 'cm.betta'; known keys here: alpha, beta"),
        ({"trian": {}}, r"unknown config key 'trian'"),
        ({"cm": {"beta": "high"}}, r"'cm.beta' must be of type float, got 'high'"),
        ({"train": {"iterations": 1.5}}, r"'train.iterations' must be of type int"),
        ({"train": {"progress": "yes"}}, r"'train.progress' must be of type bool"),
        ({"cm": {"beta": -1}}, r"'cm.beta' must be ≥ 0"),
        ({"cm": {"centroids": "kmeans"}}, r"'cm.centroids' must be one of paper, mean, ema, learned"),
        ({"cm": {"features": "twice"}}, r"'cm.features' must be 'reuse' or 'eval_pass'"),
        ({"cm": 3}, r"section 'cm' must be a mapping"),
    ],
)
def test_bad_configs_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(data)


def test_bad_overrides_and_files(tmp_path):
    with pytest.raises(ConfigError, match="must look like key=value"):
        parse_override("cm.beta")
    with pytest.raises(ConfigError, match="'cm.beta' must be of type float"):
        load_config(None, ["cm.beta.x=1"])
    with pytest.raises(ConfigError, match="'cm.beta' is a value, not a section"):
        load_config(None, ["cm.beta=1", "cm.beta.x=1"])
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        load_config(None, ["trian.iterations=1"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(bad)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("cm: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(unsafe)


def test_replace_returns_validated_copy():
    cfg = Config()
    new = cfg.replace(**{"cm.beta": 0.4})
    assert new.cm.beta == 0.4 and cfg.cm.beta == 0.0
    with pytest.raises(ConfigError):
        cfg.replace(**{"cm.beta": -1})
