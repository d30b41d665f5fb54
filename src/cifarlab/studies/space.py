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

Everything is validated before any training starts: each searched key as studies/params.py says,
and the base config itself.
"""
from __future__ import annotations

import copy
import itertools
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cifarlab.config import load_raw, set_key
from cifarlab.errors import UserError
from cifarlab.schema import validate_config
from cifarlab.studies.methods import SweepMethod, get_method, method_names
from cifarlab.studies.params import Param, check_param, check_values, decode, encode, parse_param
from cifarlab.studies.pruners import NO_PRUNING, pruner_factory
from cifarlab.yamlfile import read_yaml_mapping, read_yaml_text


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
    check_values(base, {}, where)
    if not f.space:
        raise UserError(f"{where}: the space is empty: add at least one key, e.g. space: {{optimizer.lr: [0.01, 0.1]}}")
    params = [parse_param(k, v, where) for k, v in f.space.items()]
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
        check_param(base, p, where)
    study = Study(f.name or default_name, f.method, base, params, f.trials, f.repeats, f.seed, f.pruner, f.description,
                  f.trial_reports)
    method.check(study, where, lambda values: check_values(base, values, where))
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

