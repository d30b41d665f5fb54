"""One searched key of a study (`Param`): a list of choices or a range, parsed from the study file's
`space:` and validated before any trial runs. Every value of a list, and both ends of a range and a value
drawn from inside it (as Optuna gives them: floats for uniform, ints for int), are set on the base and
checked against the config schema (and the model's options); the schema's types also refuse a range over a
true/false key, a float range over a whole-number key, true among numbers. A step must be finite, positive,
whole for int ranges and no larger than the range.
"""
from __future__ import annotations

import copy
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from cifarlab.config import set_key
from cifarlab.errors import UserError, short
from cifarlab.schema import ExperimentConfig, validate_config

RANGE_KINDS = ("uniform", "log_uniform", "int", "log_int")


@dataclass(frozen=True)
class Param:
    """One searched key: a list of choices, or a range (kind in RANGE_KINDS) from low to high."""
    key: str
    kind: str
    choices: tuple = ()
    low: float = 0.0
    high: float = 0.0
    step: float | None = None

    @property
    def is_log(self) -> bool:
        return self.kind.startswith("log")

    def suggest(self, trial) -> Any:
        if self.kind == "choice":
            return decode(trial.suggest_categorical(self.key, [encode(v) for v in self.choices]))
        if self.kind in ("int", "log_int"):
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.is_log, step=int(self.step or 1))
        return trial.suggest_float(self.key, self.low, self.high, log=self.is_log, step=self.step)


def encode(value: Any) -> Any:
    """Optuna's choices must be None/bool/int/float/str: lists and mappings travel as JSON text."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def decode(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


def parse_param(key: str, spec: Any, where: str) -> Param:
    if isinstance(spec, list):
        if not spec:
            raise UserError(f"{where}: space key '{key}' has an empty list of values: give at least one")
        return Param(key, "choice", tuple(spec))
    if isinstance(spec, dict):
        kinds = [k for k in spec if k in RANGE_KINDS]
        extra = [k for k in spec if k not in RANGE_KINDS and k != "step"]
        if len(kinds) != 1 or extra:
            raise UserError(f"{where}: space key '{key}' must be a list of values or one of "
                            f"{{{': [low, high]}, {'.join(RANGE_KINDS)}: [low, high]}}, got {spec}")
        kind = kinds[0]
        rng = spec[kind]
        ok = (isinstance(rng, list) and len(rng) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                              and math.isfinite(v) for v in rng))
        if not ok or rng[0] >= rng[1]:
            raise UserError(f"{where}: space key '{key}': {kind} needs [low, high] numbers with low < high, got {rng}")
        if kind.startswith("log") and rng[0] <= 0:
            raise UserError(f"{where}: space key '{key}': {kind} needs a positive low end, got {rng[0]}")
        if kind.endswith("int") and not all(float(v).is_integer() for v in rng):
            raise UserError(f"{where}: space key '{key}': {kind} needs whole numbers, got {rng}")
        low, high = rng
        if not math.isfinite(high - low):
            raise UserError(f"{where}: space key '{key}': {kind} [{low}, {high}] spans more than a float can hold: "
                            "narrow the range")
        step = spec.get("step")
        if step is not None:
            _check_step(key, kind, step, low, high, where)
        return Param(key, kind, low=low, high=high, step=step)
    raise UserError(f"{where}: space key '{key}' must be a list of values or a range such as "
                    f"{{log_uniform: [1.0e-4, 1.0e-1]}}, got {spec!r}")


MAX_STEPS = 10**12  # Optuna counts a float range's steps in 28-digit decimals; no search needs more than this


def _check_step(key: str, kind: str, step: Any, low: float, high: float, where: str) -> None:
    """A range's step: a finite positive number, whole for int ranges, no larger than the range, and not so
    small that the range holds more than MAX_STEPS of them (Optuna's decimal arithmetic fails there)."""
    about = f"{where}: space key '{key}': step"
    if kind.startswith("log"):
        raise UserError(f"{about} does not go with {kind} (log ranges have no step): drop it, or use "
                        f"{kind.removeprefix('log_')} with a step")
    if not isinstance(step, (int, float)) or isinstance(step, bool) or not math.isfinite(step) or step <= 0:
        raise UserError(f"{about} must be a finite positive number, got {short(step)}")
    if kind == "int" and not float(step).is_integer():
        raise UserError(f"{about} must be a whole number for an int range, got {step}: use e.g. step: 1")
    if step > high - low:
        raise UserError(f"{about} {step} is larger than the range [{low}, {high}]: give a step of at most {high - low:g}")
    if (high - low) / step > MAX_STEPS:
        raise UserError(f"{about} {step} cuts [{low}, {high}] into more than {MAX_STEPS:.0e} steps: give a larger step")


def _schema_types(key: str) -> set | None:
    """The Python types the config schema accepts at dotted `key` (bool, int, float, str, ...); None where the
    schema does not say (a model option, an unknown key: those are left to validation by value)."""
    node, found = ExperimentConfig, None
    for part in key.split("."):
        fields = getattr(node, "model_fields", None) if isinstance(node, type) else None
        if not fields or part not in fields:
            return None
        found = _leaf_types(fields[part].annotation)
        node = next((t for t in found if isinstance(t, type) and issubclass(t, BaseModel)), None)
    return found


def _leaf_types(annotation: Any) -> set:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*map(_leaf_types, args))
    if origin is typing.Annotated:
        return _leaf_types(args[0])
    if origin is typing.Literal:
        return {type(a) for a in args}
    return {origin or annotation}


def _check_kind(base: dict, p: Param, where: str) -> None:
    """What the schema's types tell before any value is tried: a range over a true/false setting, a float range
    over a whole-number setting (every trial would fail, or train with 24.0), a true/false among numbers."""
    accepts = _schema_types(p.key)
    if accepts is None:
        return
    numeric = bool(accepts & {int, float})
    if p.kind != "choice" and bool in accepts and not numeric:
        raise UserError(f"{where}: space key '{p.key}' is a true/false setting, which has no range: "
                        "list the values instead, e.g. [true, false]")
    if p.kind in ("uniform", "log_uniform") and int in accepts and float not in accepts:
        raise UserError(f"{where}: space key '{p.key}' takes whole numbers, and {p.kind} draws floats: "
                        f"use {_int_range(p)}")
    for value in p.choices:
        if isinstance(value, bool) and bool not in accepts and numeric:
            raise UserError(f"{where}: space key '{p.key}' takes numbers, and {str(value).lower()} is not one: "
                            "check its list of values")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and bool in accepts and not numeric:
            raise UserError(f"{where}: space key '{p.key}' is a true/false setting, and {value} is not true or false: "
                            "list true and/or false")


def _int_range(p: Param) -> str:
    """The int range to suggest in place of a float range over a whole-number key."""
    low, high = math.ceil(p.low), math.floor(p.high)
    step = f", step: {p.step:g}" if p.step and float(p.step).is_integer() else ""
    text = f"{{{'log_int' if p.is_log else 'int'}: [{low}, {high}]{step}}}"
    return text if low == p.low and high == p.high else f"whole ends, e.g. {text}"


def _sample(p: Param) -> Any:
    """A value inside the range of the kind Optuna's trials get (a float with a fraction for float ranges, an
    int for int ranges), to validate besides the two ends: a range may be valid at its ends only."""
    low, high = p.low, p.high
    if p.kind in ("int", "log_int"):
        step = int(p.step or 1)
        return int(low) + step * ((int(high) - int(low)) // step // 2)
    if p.step:
        return float(low + p.step * ((high - low) // p.step // 2))
    for fraction in (0.37, 0.5, 0.618034, 0.71):  # a value with a fraction, whatever the ends
        value = math.exp(math.log(low) + fraction * (math.log(high) - math.log(low))) if p.is_log else \
            low + fraction * (high - low)
        if not float(value).is_integer():
            return float(value)
    return float(value)


def check_param(base: dict, p: Param, where: str) -> None:
    """Validate a searched key against the base config: its schema type, then every value of a list, or the
    ends of a range and one value drawn from inside it, as trials will get them."""
    _check_kind(base, p, where)
    if p.kind == "choice":
        for value in p.choices:
            check_values(base, {p.key: value}, where)
        return
    ends = [int(p.low), int(p.high)] if p.kind.endswith("int") else [float(p.low), float(p.high)]  # as Optuna gives them
    for value in ends + [_sample(p)]:
        try:
            check_values(base, {p.key: value}, where, f" (a value {p.kind} [{p.low:g}, {p.high:g}] can draw)")
        except UserError:
            whole_ends = all(float(v).is_integer() for v in (p.low, p.high))
            if isinstance(value, float) and whole_ends and _valid(base, {p.key: round(value)}):  # takes ints only
                shown = f"{value:.1f}" if value.is_integer() else f"{value:g}"
                raise UserError(f"{where}: space key '{p.key}' takes whole numbers, and {p.kind} draws floats "
                                f"(such as {shown}): use {_int_range(p)}") from None
            raise


def _valid(base: dict, values: dict[str, Any]) -> bool:
    try:
        check_values(base, values, "")
    except UserError:
        return False
    return True


def check_values(base: dict, values: dict[str, Any], where: str, note: str = "") -> None:
    """Set the values on the base and validate the result as a config (and the model's options)."""
    raw = copy.deepcopy(base)
    what = ", ".join(f"{k}={v!r}" for k, v in values.items()) + note
    try:
        for key, value in values.items():
            set_key(raw, key, decode(value))
        cfg = validate_config(raw)
        if any(k.startswith("model.") for k in values):
            from cifarlab.models import build_model
            build_model(cfg.model.name, **cfg.model.options)
    except UserError as err:
        raise UserError(f"{where}: with {what}: {err}") from None
