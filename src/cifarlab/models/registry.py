"""One registry of models, built by name with keyword options (as timm's create_model).

Every factory has the signature `factory(num_classes=10, in_channels=3, image_size=32, **options)`
and returns an `nn.Module` mapping (B, in_channels, image_size, image_size) floats to (B, num_classes)
logits (never softmax: the loss applies it).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from cifarlab.errors import UserError, short
from cifarlab.registry import MODELS


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]
    family: str
    summary: str  # first line of the factory's docstring


MAX_PARAMETERS = 2**28
MAX_CLASSES = 100_000


def register_model(name: str | None = None, family: str = ""):
    """Decorator: `@register_model("cifarnet", family="cifarnet")` over a factory function."""
    def add(factory):
        key = name or factory.__name__
        doc = inspect.getdoc(factory) or ""
        MODELS.add(key, ModelEntry(key, factory, family or factory.__module__.rsplit(".", 1)[-1],
                                   doc.splitlines()[0] if doc else ""))
        return factory
    return add


def model_names() -> list[str]:
    return sorted(MODELS.names())


def get_entry(name: str) -> ModelEntry:
    """A registered model, or `package.module:callable` (your own factory or nn.Module class, imported)."""
    if ":" in name and name not in MODELS:
        return _imported(name)
    return MODELS.get(name)


def _imported(name: str) -> ModelEntry:
    import importlib

    module, _, attr = name.partition(":")
    try:
        factory = importlib.import_module(module)
        for part in attr.split("."):
            factory = getattr(factory, part)
    except Exception as err:  # ImportError, AttributeError, or whatever the module raises at import
        raise UserError(f"model '{name}': cannot import {attr or '?'} from module '{module}' "
                        f"({type(err).__name__}: {' '.join(str(err).split())[:150]}); give package.module:callable "
                        "importable from here (check PYTHONPATH)") from None
    if not callable(factory):
        raise UserError(f"model '{name}': '{attr}' in '{module}' is not callable: give a factory or nn.Module class")
    doc = inspect.getdoc(factory) or ""
    return ModelEntry(name, factory, "user", doc.splitlines()[0] if doc else "")


def build_model(name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **options) -> nn.Module:
    """Build a registered model; a wrong option name or value is a one-line UserError."""
    entry = get_entry(name)
    params = inspect.signature(entry.factory).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = [k for k in options if k not in params] if not takes_any else []
    if unknown:
        allowed = [k for k in params if k not in ("num_classes", "in_channels", "image_size")]
        raise UserError(f"model '{name}' has no option '{unknown[0]}': its options are {', '.join(allowed) or 'none'}")
    for what, value, high in (("num_classes", num_classes, MAX_CLASSES), ("in_channels", in_channels, 64),
                              ("image_size", image_size, 4096)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise UserError(f"model '{name}': {what} must be a whole number from 1 to {high}, got {short(value)}")
    shape = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    if not takes_any:  # a user's factory or class may take only some of them (e.g. just num_classes)
        shape = {k: v for k, v in shape.items() if k in params}
    try:
        _check_parameter_count(entry, name, shape, options)
        return entry.factory(**shape, **options)
    except (TypeError, ValueError, RuntimeError, OverflowError) as err:  # RuntimeError: impossible layer shapes
        raise UserError(f"model '{name}' cannot be built with {short(options) if options else 'default options'}: "
                        f"{short(err, 300, plain=True)}") from None


def _check_parameter_count(entry: ModelEntry, name: str, shape: dict, options: dict) -> None:
    """Build the model on torch's meta device first (shapes only, no memory): options that would allocate
    gigabytes are refused in one line instead of exhausting memory. A factory that cannot build on the meta
    device is simply built for real."""
    try:
        with torch.device("meta"):
            model = entry.factory(**shape, **options)
        n = count_parameters(model)
    except UserError:
        raise
    except Exception:  # noqa: BLE001  (the real build below reports what is wrong)
        return
    if n > MAX_PARAMETERS:
        raise UserError(f"model '{name}' with {short(options) if options else 'default options'} has {n:,} parameters, "
                        f"more than {MAX_PARAMETERS:,} (1 GiB of weights): choose smaller widths or fewer layers")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
