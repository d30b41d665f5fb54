"""The study file: a base config, a search space over dotted config keys, and how to search it.

    name: lr-sweep                 # default: the file's name
    base: quickstart               # a recipe name, a YAML file (relative to this one) or an inline config
    set: {train.epochs: 2}         # fixed overrides of the base
    method: grid                   # ofat | grid | random | tpe (studies/methods.py)
    trials: 20                     # random and tpe: how many configurations
    repeats: 1                     # seeds per configuration (train.seed, train.seed+1, ...)
    pruner: none                   # none | median | halving (studies/pruners.py: stop weak trials from per-epoch val accuracy)
    trial_reports: true            # false: no report.html per trial (~0.6 s each; the study tables stand)
    space:
      optimizer.lr: {log_uniform: [1.0e-4, 1.0e-1]}
      train.batch_size: [32, 64, 128]

Everything is validated before any training starts: every value of a list, and both ends of a range and a
value drawn from inside it (as Optuna gives them: floats for uniform, ints for int), are set on the base and
checked against the config schema (and the model's options); the schema's types also refuse a range over a
true/false key, a float range over a whole-number key, true among numbers. A step must be finite, positive,
whole for int ranges and no larger than the range.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
import re
import types
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cifarlab.config import ExperimentConfig, load_raw, set_key, validate_config
from cifarlab.errors import UserError, short
from cifarlab.studies.methods import SweepMethod, get_method, method_names
from cifarlab.studies.pruners import NO_PRUNING, pruner_factory
from cifarlab.yamlfile import read_yaml_mapping, read_yaml_text

RANGE_KINDS = ("uniform", "log_uniform", "int", "log_int")


class StudyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = ""
    description: str = ""
    base: str | dict = Field(default_factory=dict)
    set: dict[str, Any] = Field(default_factory=dict)
    method: str = "grid"
    trials: int | None = Field(None, ge=1)
    repeats: int = Field(1, ge=1, le=100)
    seed: int = 0
    pruner: str = NO_PRUNING
    # each trial's report.html costs ~0.6 s of plotting: a long sweep of tiny trials may skip them
    trial_reports: bool = True
    space: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:  # it names the study directory studies/NAME: no '..', no '/'
        if v and not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", v):
            raise ValueError("use letters, digits, '-', '_' and '.' (not first), as it names the study directory")
        return v

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        try:
            get_method(v)
        except UserError as err:  # pydantic reports a ValueError under the key's name
            raise ValueError(str(err)) from None
        return v

    @field_validator("pruner")
    @classmethod
    def _known_pruner(cls, v: str) -> str:
        try:
            pruner_factory(v)
        except UserError as err:
            raise ValueError(str(err)) from None
        return v


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


@dataclass
class Study:
    """A validated study: `base` is the fully resolved raw config every trial starts from."""
    name: str
    method: str
    base: dict
    params: list[Param]
    trials: int | None
    repeats: int
    seed: int
    pruner: str
    description: str = ""
    trial_reports: bool = True

    @property
    def sweep_method(self) -> SweepMethod:
        return get_method(self.method)

    def to_dict(self) -> dict:
        """What the storage keeps: a worker on another machine needs nothing else."""
        return {"name": self.name, "method": self.method, "base": self.base, "trials": self.trials,
                "repeats": self.repeats, "seed": self.seed, "pruner": self.pruner, "description": self.description,
                "space": {p.key: list(map(encode, p.choices)) if p.kind == "choice" else
                          {p.kind: [p.low, p.high], **({"step": p.step} if p.step else {})} for p in self.params},
                # only when off: a study stored before the key existed still compares equal when continued
                **({} if self.trial_reports else {"trial_reports": False})}

    def config(self, params: dict[str, Any], seed: int | None = None) -> dict:
        raw = copy.deepcopy(self.base)
        for key, value in params.items():
            set_key(raw, key, decode(value))
        if seed is not None:
            set_key(raw, "train.seed", seed)
        return raw

    def effective(self, params: dict) -> dict:
        """The value every searched key has in a trial (OFAT trials set only the keys visited so far)."""
        cfg = validate_config(self.config(params)).to_dict()
        out = {}
        for p in self.params:
            node = cfg
            for part in p.key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            out[p.key] = node
        return out

    def seeds(self) -> list[int | None]:
        if self.repeats == 1:
            return [None]  # the base's own seed
        first = (self.base.get("train") or {}).get("seed", 0)
        return [first + r for r in range(self.repeats)]

    def grid(self) -> list[dict]:
        keys = [p.key for p in self.params]
        return [dict(zip(keys, combo)) for combo in itertools.product(*[map(encode, p.choices) for p in self.params])]


# ---------------------------------------------------------------------- parsing and validation

def _parse_param(key: str, spec: Any, where: str) -> Param:
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


def _check_param(base: dict, p: Param, where: str) -> None:
    """Validate a searched key against the base config: its schema type, then every value of a list, or the
    ends of a range and one value drawn from inside it, as trials will get them."""
    _check_kind(base, p, where)
    if p.kind == "choice":
        for value in p.choices:
            _check(base, {p.key: value}, where)
        return
    ends = [int(p.low), int(p.high)] if p.kind.endswith("int") else [float(p.low), float(p.high)]  # as Optuna gives them
    for value in ends + [_sample(p)]:
        try:
            _check(base, {p.key: value}, where, f" (a value {p.kind} [{p.low:g}, {p.high:g}] can draw)")
        except UserError:
            whole_ends = all(float(v).is_integer() for v in (p.low, p.high))
            if isinstance(value, float) and whole_ends and _valid(base, {p.key: round(value)}):  # takes ints only
                shown = f"{value:.1f}" if value.is_integer() else f"{value:g}"
                raise UserError(f"{where}: space key '{p.key}' takes whole numbers, and {p.kind} draws floats "
                                f"(such as {shown}): use {_int_range(p)}") from None
            raise


def _valid(base: dict, values: dict[str, Any]) -> bool:
    try:
        _check(base, values, "")
    except UserError:
        return False
    return True


def _check(base: dict, values: dict[str, Any], where: str, note: str = "") -> None:
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


def _resolve_base(base: str | dict, folder: Path) -> dict:
    if isinstance(base, dict):
        return copy.deepcopy(base)
    if base.endswith((".yaml", ".yml")):
        return load_raw(config_file=folder / base)
    return load_raw(recipe=base)


def build_study(raw: dict, where: str, folder: Path = Path("."), default_name: str = "study",
                overrides: dict[str, Any] | None = None, **changes) -> Study:
    """Validate a study mapping completely; `overrides` are base config keys (--data, --set), `changes`
    replace study keys (method, trials, repeats) as the command line asked."""
    raw = {**raw, **{k: v for k, v in changes.items() if v is not None}}
    try:
        f = StudyFile.model_validate(raw)
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(map(str, e["loc"]))
        if e["type"] == "extra_forbidden":
            raise UserError(f"{where}: unknown study key '{loc}': use name, description, base, set, method, "
                            "trials, repeats, seed, pruner, space") from None
        raise UserError(f"{where}: study key '{loc}': {e['msg'].removeprefix('Value error, ')}") from None
    base = _resolve_base(f.base, folder)
    for key, value in f.set.items():  # the file's own `set:` replaces, as its recorded trials were made
        set_key(base, key, value)
    for key, value in (overrides or {}).items():  # the command line's --set merges, as for train
        set_key(base, key, value, merge=True)
    base.setdefault("name", f.name or default_name)
    _check(base, {}, where)
    if not f.space:
        raise UserError(f"{where}: the space is empty: add at least one key, e.g. space: {{optimizer.lr: [0.01, 0.1]}}")
    params = [_parse_param(k, v, where) for k, v in f.space.items()]
    method = get_method(f.method)
    if not method.takes_ranges and (ranged := [p.key for p in params if p.kind != "choice"]):
        samplers = " and ".join(n for n in method_names() if get_method(n).takes_ranges)
        raise UserError(f"{where}: method {f.method} needs a list of values for '{ranged[0]}' "
                        f"(ranges are for {samplers})")
    if method.asks and not f.trials:
        raise UserError(f"{where}: method {f.method} needs 'trials: N' (how many configurations to try)")
    if f.repeats > 1 and any(p.key == "train.seed" for p in params):
        raise UserError(f"{where}: 'train.seed' is searched and repeats > 1 also sets it: use one of them")
    if f.repeats > 1 and f.pruner != NO_PRUNING:
        raise UserError(f"{where}: pruning judges one training curve: use pruner: none with repeats > 1")
    for p in params:
        if p.kind == "choice" and len({json.dumps(v, sort_keys=True) for v in p.choices}) < len(p.choices):
            raise UserError(f"{where}: space key '{p.key}' lists a value twice")
        _check_param(base, p, where)
    study = Study(f.name or default_name, f.method, base, params, f.trials, f.repeats, f.seed, f.pruner, f.description,
                  f.trial_reports)
    method.check(study, where, lambda values: _check(base, values, where))
    return study


def preset_dir():
    return resources.files("cifarlab") / "studies" / "presets"


def read_study_file(path: str, overrides: dict | None = None, **changes) -> Study:
    """A study YAML file, or the name of a preset shipped with cifarlab (see docs/studies.md)."""
    p = Path(path)
    if not p.is_file():
        preset = preset_dir() / f"{path}.yaml"
        if preset.is_file():
            p = Path(str(preset))
        elif not p.exists():
            names = sorted(f.name[:-5] for f in preset_dir().iterdir() if f.name.endswith(".yaml"))
            raise UserError(f"study file '{path}' does not exist: give a path or a preset ({', '.join(names)})")
    text = read_yaml_text(p, "study file")
    return build_study(read_yaml_mapping(text, f"study file '{p}'"), f"study file '{p}'", p.parent, p.stem,
                       overrides, **changes)


def study_from_dict(d: dict) -> Study:
    """The study a storage holds (written by `Study.to_dict`), for workers that join it."""
    return build_study(d, f"study '{d.get('name')}'", default_name=d.get("name", "study"))

