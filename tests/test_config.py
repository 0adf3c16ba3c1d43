"""Config validation: unknown keys and wrong types are errors that name the key."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import yaml

from supercm import options as options_mod
from supercm.config import CMConfig, Config, ConfigError, RegulariserConfig, from_dict, load_config, parse_override
from supercm.methods import check_terms
from supercm.options import OptionSpec, check_options


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


# --------------------------------------------------------------------------- pydantic-backed checks

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "data" / "config_to_dict"


@pytest.mark.parametrize("key,value,kind", [
    ("train.iterations", True, "int"), ("train.seed", False, "int"), ("optim.decay_at", True, "int | None"),
    ("cm.beta", True, "float"), ("optim.lr", False, "float"), ("regularisers", [{"name": "mcc", "weight": True}], None),
])
def test_bools_are_not_numbers(key, value, kind):
    section, name = key.split(".") if "." in key else (key, None)
    data = {section: {name: value}} if name else {section: value}
    match = rf"must be of type {kind}, got {value}" if kind else r"'regularisers\[0\].weight' must be of type float, got True"
    with pytest.raises(ConfigError, match=match.replace("|", r"\|")):
        from_dict(data)


def test_bools_are_not_numbers_in_options():
    specs = {"n": OptionSpec(int, "[1, inf)"), "x": OptionSpec(float, "[0, 1)")}
    for name in specs:
        with pytest.raises(ConfigError, match=rf"option k.{name} for o must be of type (int|float), got True \(bool\)"):
            check_options({name: True}, specs, "k", "o")
    assert check_options({"x": 0, "n": 2}, specs, "k", "o") == {"x": 0.0, "n": 2}
    assert type(check_options({"x": 0}, specs, "k", "o")["x"]) is float  # ints are accepted for floats


@pytest.mark.parametrize("golden", sorted(GOLDEN.glob("*.yaml")), ids=lambda p: p.stem)
def test_to_dict_yaml_is_byte_identical_to_the_dataclass_config(golden):
    """config.yaml and the checkpoint's config hash are yaml.safe_dump(cfg.to_dict(), sort_keys=False):
    the goldens were written by the dataclass config (before pydantic) and must not move."""
    cfg = Config() if golden.stem == "defaults" else load_config(ROOT / "configs" / golden.name.replace("__", "/"))
    assert yaml.safe_dump(cfg.to_dict(), sort_keys=False) == golden.read_text()


def test_every_shipped_config_round_trips_through_to_dict():
    paths = sorted((ROOT / "configs").rglob("*.yaml"))
    assert len(paths) > 100
    for path in paths:
        cfg = load_config(path)
        text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
        again = from_dict(cfg.to_dict())
        assert again == cfg and yaml.safe_dump(again.to_dict(), sort_keys=False) == text, path
        assert list(cfg.to_dict()) == ["data", "model", "cm", "method", "regularisers", "optim", "train"]
        check_terms(cfg)


def test_to_dict_is_a_plain_copy():
    cfg = from_dict({"method": {"name": "vat", "options": {"xi": 1e-6}}})
    d = cfg.to_dict()
    d["method"]["options"]["xi"] = 5.0
    assert cfg.method.options == {"xi": 1e-6} and type(d["cm"]) is dict


@pytest.mark.parametrize("data,match", [
    ({"method": {"name": "flexmatch"}}, r"config key 'method.name' must be one of bnm, dann, .*, vat, got 'flexmatch'"),
    ({"regularisers": [{"name": "mcc"}, {"name": "nope"}]}, r"config key 'regularisers\[1\].name' must be one of .*got 'nope'"),
    ({"method": {"options": {"threshold": 0.9}}}, r"unknown option method.options.threshold for method 'supervised'; allowed: forward"),
    ({"method": {"name": "pseudo_label", "options": {"threshold": 5}}},
     r"option method.options.threshold for method 'pseudo_label' must be in \[0, 1\], got 5.0"),
    ({"method": {"name": "vat", "options": {"xi": math.nan}}}, r"option method.options.xi for method 'vat' must be in \(0, inf\)"),
    ({"method": {"name": "pseudo_label", "options": {"variant": "c"}}},
     r"method.options.variant for method 'pseudo_label' must be one of authors, textbook, got 'c'"),
    ({"regularisers": [{"name": "mcc", "options": {"temperature": 0}}]}, r"method.options.temperature for method 'mcc' must be in"),
])
def test_check_terms_names_the_key(data, match):
    cfg = from_dict(data)  # the config layer knows no term registry
    with pytest.raises(ConfigError, match=match):
        check_terms(cfg)


@pytest.mark.parametrize("data,match", [
    ({"method": {"name": "supercm"}}, r"'method.name' cannot be 'supercm': SuperCM is switched on by cm.beta > 0"),
    ({"regularisers": [{"name": "supervised"}]}, r"'regularisers\[0\].name' cannot be 'supervised'"),
    ({"regularisers": [{"name": "mcc", "weight": -1}]}, r"'regularisers\[0\].weight' must be ≥ 0 and finite, got -1.0"),
    ({"regularisers": [3]}, r"config section 'regularisers\[0\]' must be a mapping, got 3"),
    ({"regularisers": {"name": "mcc"}}, r"config key 'regularisers' must be a list of mappings"),
    ({"optim": {"decay_at": -3}}, r"'optim.decay_at' must be ≥ 0 \(or null: never\), got -3$"),
    ({"optim": {"decay_factor": math.inf}}, r"'optim.decay_factor' must be > 0 and finite \(the learning rate"),
    ({"optim": {"name": "rmsprop"}}, r"'optim.name' must be 'adam' or 'sgd', got 'rmsprop'"),
    ({"train": {"precision": "fp8"}}, r"'train.precision' must be one of fp32, bf16, fp16, got 'fp8'"),
    ({"train": {"device": "gpu"}}, r"'train.device' must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    ({"cm": {"centroids": 3}}, r"'cm.centroids' must be of type str, got 3 \(int\)"),
    ({"cm": {"momentum": 1}}, r"'cm.momentum' must be in \[0, 1\), got 1.0"),
    ({"cm": {"zeta": 1, "betta": 2}}, r"unknown config key 'cm.betta'"),  # the first unknown key, sorted
    ({"data": {"augmentation": {"draw": "batch"}}}, r"set data.augment_draw instead"),
    ("cm", r"config section '<root>' must be a mapping"),
])
def test_more_config_messages(data, match):
    with pytest.raises(ConfigError, match=match) as info:
        from_dict(data)
    assert "\n" not in str(info.value)


def test_sections_built_by_hand_are_checked_with_the_same_messages():
    with pytest.raises(ConfigError, match=r"config key 'cm.beta' must be ≥ 0 and finite, got -1.0"):
        CMConfig(beta=-1)
    with pytest.raises(ConfigError, match=r"cannot be 'supercm'"):
        RegulariserConfig(name="supercm")
    with pytest.raises(ConfigError, match=r"config key 'cm.beta' must be of type float"):
        Config(cm={"beta": "high"})
    assert Config(cm=CMConfig(beta=0.5)).cm.beta == 0.5


def test_option_names_that_clash_with_pydantic_are_fine():
    specs = {"copy": OptionSpec(bool), "model_config": OptionSpec(int, "[0, inf)"), "schema": OptionSpec()}
    assert check_options({"copy": True, "model_config": 3, "schema": [1]}, specs, "k", "o") == {
        "copy": True, "model_config": 3, "schema": [1]}
    with pytest.raises(ConfigError, match=r"option k.model_config for o must be in \[0, inf\), got -1"):
        check_options({"model_config": -1}, specs, "k", "o")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
    return names


def test_options_imports_nothing_from_supercm_and_config_not_methods():
    src = ROOT / "src" / "supercm"
    assert not [n for n in _imports(src / "options.py") if n.startswith((".", "supercm"))]
    config_imports = _imports(src / "config.py")
    assert not [n for n in config_imports if "methods" in n or "train" in n]
    assert ConfigError is options_mod.ConfigError  # supercm.config re-exports the one class
    base_imports = _imports(src / "methods" / "base.py")
    assert "..options" in base_imports and "..config" not in base_imports


def test_option_annotations_outside_the_checked_set_are_not_refused():
    """As before pydantic: list/tuple hints take either (YAML has no tuples), other classes are not checked."""
    specs = {"size": OptionSpec(tuple[int, int]), "path": OptionSpec(Path), "items": OptionSpec(list[int] | None)}
    assert check_options({"size": [224, 224], "path": "x", "items": None}, specs, "k", "o") == {
        "size": [224, 224], "path": "x", "items": None}
    with pytest.raises(ConfigError, match=r"option k.size for o must be of type tuple, got 3 \(int\)"):
        check_options({"size": 3}, specs, "k", "o")
