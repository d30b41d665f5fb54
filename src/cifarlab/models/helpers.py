"""What every model family shares: activations by name, and the checks of its options.

A model's options come from YAML, so they are checked before any layer is built: a wrong value is a
ValueError naming the option, which the registry turns into one line (see models/registry.py).
Booleans are not numbers here (YAML's `yes` would otherwise be a width of 1).
"""
from __future__ import annotations

import torch.nn as nn

from cifarlab.errors import short

# name -> module class; every family that takes an `activation` option (or layer) chooses from these
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU,
                                           "elu": nn.ELU, "leaky_relu": nn.LeakyReLU}


def get_act_layer(name: str) -> type[nn.Module]:
    """The activation module class called `name` (as timm's get_act_layer): `get_act_layer("relu")()`."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


MAX_WHOLE = 2**16  # no width, channel count, kernel or repeat count of a model is larger


def is_whole(value, low: int = 1, high: int = MAX_WHOLE) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def check_whole(name: str, value, low: int = 1, high: int = MAX_WHOLE) -> int:
    """`value` if it is a whole number in [low, high], else a ValueError naming `name`."""
    if not is_whole(value, low, high):
        raise ValueError(f"{name} must be a whole number >= {low} (at most {high}), got {short(value)}")
    return value


def check_widths(name: str, value, at_least: int = 1, what: str = "positive whole numbers",
                 one_number: bool = False) -> tuple[int, ...]:
    """A list of whole numbers >= 1 (channels, hidden widths, kernel sizes) as a tuple. `at_least` is the
    shortest list allowed (0: empty is fine, e.g. no hidden layers); `one_number` accepts 5 for [5]."""
    if one_number and is_whole(value):
        value = [value]
    if not isinstance(value, (list, tuple)) or len(value) < at_least or not all(is_whole(v) for v in value):
        least = f"at least {at_least} " if at_least > 1 else ""
        raise ValueError(f"{name} must be a list of {least}{what} (at most {MAX_WHOLE}), got {short(value)}")
    return tuple(value)


def check_probability(name: str, value) -> float:
    """A dropout-like probability in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")
    return value


def check_flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value
