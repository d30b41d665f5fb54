"""The experiment config: one YAML file (a recipe) that says everything a run does.

A recipe is data, not code. Every key is validated against the schema (schema.py: unknown keys, wrong
types and ranges are refused with a one-line message) before any data is read or any training starts.
A recipe may start from another with `extends: NAME`; its own keys are deep-merged over that one's.
Overrides (flags, --set KEY=VALUE, a study's points) are dotted keys set onto the raw mapping.
"""
from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cifarlab.errors import UserError, short
from cifarlab.schema import ExperimentConfig, not_a_mapping, section_class, validate_config
from cifarlab.yamlfile import load_yaml, read_yaml_mapping, read_yaml_text  # noqa: F401  (load_yaml: imported from here too)

# ---------------------------------------------------------------- loading and overrides

def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def recipe_dir():
    return resources.files("cifarlab") / "recipes"


def list_recipes() -> dict[str, dict]:
    """Recipe name -> its raw YAML mapping, for every recipe shipped in the package."""
    out = {}
    for f in sorted(recipe_dir().iterdir(), key=lambda p: p.name):
        if f.name.endswith(".yaml"):
            out[f.name[:-5]] = read_yaml_mapping(f.read_text(), f"recipe '{f.name[:-5]}'")
    return out


def _raw_recipe(name: str, seen: tuple = ()) -> dict:
    f = recipe_dir() / f"{name}.yaml"
    if not f.is_file():
        known = [p.name[:-5] for p in recipe_dir().iterdir() if p.name.endswith(".yaml")]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(f"unknown recipe '{name}': {hint}`cifarlab recipes` lists them")
    return _resolve_extends(read_yaml_mapping(f.read_text(), f"recipe '{name}'"), seen + (name,))


def _resolve_extends(raw: dict, seen: tuple = ()) -> dict:
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise UserError("config key 'extends' must be a recipe name")
    if parent in seen:
        raise UserError(f"recipe '{parent}' extends itself through {' -> '.join(seen)}")
    return _deep_merge(_raw_recipe(parent, seen), raw)


def load_raw(recipe: str | None = None, config_file: str | Path | None = None) -> dict:
    """The raw (unvalidated) mapping of a recipe name or a YAML file, `extends` resolved."""
    if recipe and config_file:
        raise UserError("give either --recipe or --config, not both")
    if config_file:
        p = Path(config_file)
        return _resolve_extends(read_yaml_mapping(read_yaml_text(p, "config file"), f"config file '{p}'"))
    if recipe:
        return _raw_recipe(recipe)
    return {}


def get_key(raw: dict, dotted: str) -> Any:
    """`a.b.c` of a nested mapping, or None where any part is missing."""
    node = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_key(raw: dict, dotted: str, value: Any, merge: bool = False) -> None:
    """Set `a.b.c` in a nested mapping, creating sections on the way (also where one is null).
    `merge`: a mapping set on a mapping (`--set train={epochs: 2}`) sets each of its keys there, never
    dropping the keys it does not name (the recipe's, or those another override or flag set); without it
    (a study's `set:`, whose recorded trials were made so) the mapping replaces the old one."""
    parts = dotted.split(".")
    if not all(parts):
        raise UserError(f"'{dotted}' is not a config key: use dotted names such as train.epochs")
    node = raw
    for i, p in enumerate(parts[:-1]):
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        elif not isinstance(child, dict):
            above = ".".join(parts[: i + 1])
            if section_class(above) is not None or above == "model.options":
                raise UserError(not_a_mapping(above, child))
            raise UserError(f"config key '{short(dotted, 120, plain=True)}': '{above}' is a value "
                            f"({short(child)}), not a section: check the key name")
        node = child
    last = parts[-1]
    if merge and isinstance(value, dict) and isinstance(node.get(last), dict):
        node[last] = _deep_merge(node[last], value)
    else:
        node[last] = value


def _leaves(key: str, value: Any):
    """(dotted key, value) of each value a (possibly nested-mapping) override sets."""
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from _leaves(f"{key}.{k}", v)
    else:
        yield key, value


def _same(a: Any, b: Any) -> bool:
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _refuse_conflicts(overrides: dict[str, Any]) -> None:
    """Two overrides that set one key to different values (`train.epochs=1` from --epochs, and
    `--set train={epochs: 2}`): refused, naming both, rather than one silently winning."""
    seen: dict[str, tuple[str, Any]] = {}
    for key, value in overrides.items():
        for leaf, v in _leaves(key, value):
            if leaf in seen and seen[leaf][0] != key and not _same(seen[leaf][1], v):
                k0, v0 = seen[leaf]
                raise UserError(f"config key '{short(leaf, 120, plain=True)}' is given two values: "
                                f"{short(k0, 80, plain=True)}={short(overrides[k0])} and {short(key, 80, plain=True)}"
                                f"={short(value)} (a flag such as --epochs sets its config key as --set does): keep one of them")
            seen.setdefault(leaf, (key, v))


def combine_overrides(flags: dict[str, Any], assignments: list[str],
                      flag_names: dict[str, str] | None = None) -> dict[str, Any]:
    """The overrides of a command line: `flags` ({dotted key: value}, None = not given) and the --set
    `assignments` (KEY=VALUE texts), later --set winning over earlier ones. A --set that gives a flag's key
    another value is refused, naming both (`flag_names`: dotted key -> the flag, e.g. train.epochs -> --epochs)."""
    out = {k: v for k, v in flags.items() if v is not None}
    for text in assignments:
        key, value = parse_assignment(text)
        for leaf, v in _leaves(key, value):
            if leaf in flags and flags[leaf] is not None and not _same(flags[leaf], v):
                name, given = (flag_names or {}).get(leaf), short(flags[leaf], plain=True)
                flag = f"{name} {given}" if name else f"the flag setting {leaf} to {given}"
                raise UserError(f"{flag} and --set {short(text, 80, plain=True)} give {leaf} two values: "
                                "keep one of them")
        out.pop(key, None)  # a repeated --set: the last one counts, in its command-line place
        out[key] = value
    return out


def parse_assignment(text: str) -> tuple[str, Any]:
    """`train.epochs=5` -> ("train.epochs", 5); values are read as YAML (numbers, lists, true/false)."""
    if "=" not in text:
        raise UserError(f"--set takes KEY=VALUE (e.g. --set train.epochs=5), got '{text}'")
    key, value = text.split("=", 1)
    try:
        return key.strip(), load_yaml(value, f"--set {key.strip()[:60]}") if value.strip() else ""
    except yaml.YAMLError:
        return key.strip(), value


def load_config(recipe: str | None = None, config_file: str | Path | None = None,
                overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Recipe or file, then overrides (dotted keys), validated into one ExperimentConfig."""
    raw = load_raw(recipe, config_file)
    raw.setdefault("name", recipe or (Path(config_file).stem if config_file else "run"))
    overrides = dict(overrides or {})
    _refuse_conflicts(overrides)
    new_model = dict(leaf for key, value in overrides.items() for leaf in _leaves(key, value)).get("model.name")
    model = raw.get("model")
    if new_model is not None and isinstance(model, dict) and new_model != model.get("name"):
        # The recipe's options belong to the recipe's model; another model would reject them.
        model["options"] = {}
    for key, value in overrides.items():
        set_key(raw, key, value, merge=True)  # `--set train={...}` sets those keys: flags such as --epochs stay
    return validate_config(raw)
