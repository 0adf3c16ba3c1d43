"""Option dictionaries checked by pydantic: the specs of the terms', backbones' and datasets' options.

A term (``method.options``), a backbone (``model.options``), a dataset (``data.options``) and the
augmentation (``data.augmentation``) each take a dictionary of keyword options. Their specs come
from the owner's own code (:func:`dataclass_specs`, :func:`signature_specs`): a type, an optional
range written like ``"[0, 1)"`` and optional choices. :func:`check_options` turns the specs into a
pydantic model (strict types, ints accepted for floats, bools refused for numbers, ranges as
``Field`` constraints, choices as ``Literal``, finite floats unless the range says ``inf``, unknown
names refused) and words its first error as one line that names the key, e.g.
``option method.options.threshold for method 'pseudo_label' must be in [0, 1], got 5``.

This module sits under everything that checks options (config, models, data, methods) and
imports nothing from supercm.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError, create_model

__all__ = ["ConfigError", "OptionSpec", "check_options", "choices_text", "dataclass_specs", "in_range",
           "signature_specs", "type_name"]


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the key."""


#: The pydantic error types of a violated bound (``ge``, ``gt``, ``le``, ``lt``, finite floats).
BOUND_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"})

_RANGE = re.compile(r"^\s*([\[(])\s*([^,]+?)\s*,\s*([^,]+?)\s*([\])])\s*$")


def _parse_range(interval: str) -> tuple[str, float, float, str]:
    m = _RANGE.match(interval)
    if m is None:
        raise ValueError(f"bad range {interval!r}; write it like '[0, 1)' or '(0, inf)'")
    return m.group(1), float(m.group(2)), float(m.group(3)), m.group(4)


def in_range(value: float, interval: str) -> bool:
    """Whether ``value`` lies in ``interval``, written like ``"[0, 1)"`` or ``"(0, inf)"``; NaN never does."""
    left, lo, hi, right = _parse_range(interval)
    if isinstance(value, float) and math.isnan(value):
        return False
    above = value >= lo if left == "[" else value > lo
    below = value <= hi if right == "]" else value < hi
    return above and below


@dataclass(frozen=True)
class OptionSpec:
    """What one option accepts: a type annotation, an optional range (``"[0, 1)"``) and choices."""

    hint: Any = Any
    range: str | None = None
    choices: tuple | None = None


def type_name(hint: Any) -> str:
    """``float``, ``int | None``...: an annotation as the messages name it."""
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def choices_text(choices: typing.Sequence, pair: bool = False) -> str:
    """``one of a, b, c``; with ``pair``, two choices read ``'a' or 'b'``."""
    if pair and len(choices) == 2:
        return f"{choices[0]!r} or {choices[1]!r}"
    return "one of " + ", ".join(map(str, choices))


def _is_number(hint: Any) -> bool:
    return hint in (int, float)


def _plain(hint: Any) -> Any:
    """The checked part of an annotation, as before pydantic: scalars, ``dict`` and ``list``/``tuple``
    (either, YAML has no tuples; items unchecked), unions of those; anything else is not checked."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_plain(arm) for arm in typing.get_args(hint))]  # noqa: UP007  (built at run time)
    if hint in (bool, int, float, str, type(None), dict):
        return hint
    if origin is dict:
        return dict
    if hint in (list, tuple) or origin in (list, tuple):
        return list | tuple
    return Any


def _annotation(spec: OptionSpec) -> Any:
    """The pydantic annotation of one option: its type, with the range as constraints and choices as Literal."""
    hint = _plain(spec.hint)
    if spec.choices is not None:
        return Literal[tuple(spec.choices)]
    if spec.range is None or hint is Any:
        return hint
    left, lo, hi, right = _parse_range(spec.range)
    bounds = {("ge" if left == "[" else "gt"): lo, ("le" if right == "]" else "lt"): hi}
    bounds = {k: (int(v) if v.is_integer() else v) for k, v in bounds.items() if math.isfinite(v)}
    allow_inf = (left == "[" and lo == -math.inf) or (right == "]" and hi == math.inf)
    constraint = Field(**bounds, allow_inf_nan=allow_inf)

    def constrain(arm: Any) -> Any:
        return Annotated[arm, constraint] if _is_number(arm) else arm

    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.Union[tuple(constrain(arm) for arm in typing.get_args(hint))]  # noqa: UP007  (built at run time)
    return constrain(hint)


@functools.lru_cache(maxsize=512)
def _model(specs: tuple[tuple[Any, OptionSpec], ...]) -> type:
    """A pydantic model of the options (cached per spec set); fields are aliased, so an option may be
    called ``copy`` or ``model_x`` without clashing with pydantic's own names."""
    fields = {f"o{i}": (_annotation(spec), Field(None, alias=name)) for i, (name, spec) in enumerate(specs)}
    config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, populate_by_name=False)
    return create_model("Options", __config__=config, **fields)


def _isinstance(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def check_options(options: Any, specs: dict[str, OptionSpec], key: str, owner: str, fix: str = "") -> dict:
    """Names, types and ranges of an option dictionary; returns it with ints converted for floats.

    ``key`` is the config key holding the dictionary (``"method.options"``), ``owner`` what
    takes the options (``"method 'vat'"``); every error is a :class:`ConfigError` naming
    ``key.name``. Floats must be finite unless their range says ``inf``; ``fix`` is added to
    the message of an unknown name.
    """
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ConfigError(f"config key {key!r} must be a mapping of option names to values, got {options!r}")
    items = tuple(specs.items())
    try:
        model = _model(items)
    except TypeError:  # a spec that cannot be hashed (an odd annotation): build the model uncached
        model = _model.__wrapped__(items)
    try:
        checked = model.model_validate(options)
    except ValidationError as exc:
        raise _option_error(exc, options, specs, key, owner, fix) from None
    field = {name: f"o{i}" for i, (name, _) in enumerate(items)}
    return {name: getattr(checked, field[name]) for name in options}


def _option_error(exc: ValidationError, options: dict, specs: dict[str, OptionSpec], key: str, owner: str,
                  fix: str) -> ConfigError:
    """pydantic's first error (unknown names first, then the options in the order given) as one line."""
    order = {name: i for i, name in enumerate(options)}
    unknown = ("extra_forbidden", "invalid_key")  # a name not in the specs, or not a string
    error = min(exc.errors(), key=lambda e: (0, str(e["loc"][0])) if e["type"] in unknown
                else (1, order.get(e["loc"][0], 0)))
    name = error["loc"][0]
    if error["type"] in unknown:
        allowed = ", ".join(sorted(specs)) or "none"
        return ConfigError(f"unknown option {key}.{name} for {owner}; allowed: {allowed}{fix}")
    spec, value = specs[name], options[name]
    where = f"option {key}.{name} for {owner}"
    if error["type"] in BOUND_ERRORS:
        shown = float(value) if spec.hint is float and type(value) is int else value
        if spec.range is None:
            return ConfigError(f"{where} must be a finite number, got {shown}")
        return ConfigError(f"{where} must be in {spec.range}, got {shown}")
    if error["type"] == "literal_error" and _isinstance(value, spec.hint):
        return ConfigError(f"{where} must be {choices_text(spec.choices)}, got {value!r}")
    return ConfigError(f"{where} must be of type {type_name(spec.hint)}, got {value!r} ({type(value).__name__})")


def dataclass_specs(cls: type) -> dict[str, OptionSpec]:
    """Option specs from a dataclass: field types, plus ``metadata={"range": ..., "choices": ...}``."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: OptionSpec(hints.get(f.name, Any), f.metadata.get("range"), f.metadata.get("choices"))
        for f in dataclasses.fields(cls)
    }


def signature_specs(fn: Any, skip: tuple[str, ...] = (), ranges: dict[str, str] | None = None,
                    choices: dict[str, tuple] | None = None) -> dict[str, OptionSpec]:
    """Option specs from a function's (or class's) keyword parameters and their annotations, with the
    ranges and choices given for some of them."""
    target = fn.__init__ if isinstance(fn, type) else fn
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001  (unresolvable annotations: check names only)
        hints = {}
    ranges, choices = ranges or {}, choices or {}
    params = inspect.signature(target).parameters
    return {
        name: OptionSpec(hints.get(name, Any), ranges.get(name), choices.get(name))
        for name, p in params.items()
        if name not in ("self", *skip) and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.default is not p.empty
    }
