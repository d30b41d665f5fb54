"""A declarative model: a list of layers (YAML or Python) whose sizes are all inferred.

For architectures the zoo does not have. Nobody computes a flatten size by hand here (seed 000 wrote
8192 for its first network and then a forward pass that could not produce it): every layer is built
from the shape a dummy batch actually has at that point.

    model:
      name: layers
      options:
        layers:
          - {conv: 32, kernel: 3, padding: 1}
          - relu
          - {pool: max}
          - flatten
          - {linear: 128}
          - relu
          - {linear: classes}

Items (a bare name such as `relu` is the same as `{relu: null}`):
  conv: C           Conv2d to C channels; kernel (3), stride (1), padding (0, or "same"), bias (true)
  linear: N         Linear to N features, N = `classes` for the dataset's class count; bias (true)
  pool: KIND        max (the default), avg, lp or global; kernel (2), stride (= kernel), lp: norm (2);
                    global averages each channel to 1x1
  bn                BatchNorm1d or BatchNorm2d, whichever the input needs
  relu, tanh, sigmoid, gelu, elu, leaky_relu
  dropout: P        Dropout with probability P
  flatten
  repeat: N         with `layers: [...]`: the block N times. `shared: true` applies the SAME layers N
                    times, which is what a seed got by calling one layer repeatedly in its forward;
                    false (the default) makes N independent copies. `between: [...]` goes between
                    two repetitions (e.g. a relu that is not wanted after the last one).
  residual: [...]   x + f(x); f must keep the shape

The model ends in logits for `classes`; a softmax layer is refused (the loss applies it).
"""
from __future__ import annotations

import difflib

import torch
import torch.nn as nn

from cifarlab.errors import UserError
from cifarlab.models.helpers import ACTIVATIONS, check_flag, check_probability, check_whole, get_act_layer
from cifarlab.models.registry import register_model

# layer kind -> the options it takes besides its own value
KINDS = {"conv": {"kernel", "stride", "padding", "bias"}, "linear": {"bias"}, "pool": {"kernel", "stride", "norm"},
         "bn": set(), "dropout": set(), "flatten": set(), "repeat": {"layers", "shared", "between"},
         "residual": set(), **{a: set() for a in ACTIVATIONS}}


class Repeat(nn.Module):
    """One block applied `times` times with the same weights (optionally with `between` in between)."""

    def __init__(self, body: nn.Module, times: int, between: nn.Module | None = None):
        super().__init__()
        self.body, self.times, self.between = body, times, between

    def forward(self, x):
        for i in range(self.times):
            if i and self.between is not None:
                x = self.between(x)
            x = self.body(x)
        return x

    def extra_repr(self):
        return f"times={self.times}, shared weights"


class Residual(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


def build(spec, num_classes=10, in_channels=3, image_size=32) -> nn.Sequential:
    """The modules `spec` describes, for (in_channels, image_size, image_size) inputs; ValueError if malformed."""
    if not isinstance(spec, (list, tuple)) or not spec:
        raise ValueError("the layer spec must be a non-empty list of layers, e.g. [{conv: 32}, relu, flatten, {linear: classes}]")
    n = _expanded_size(spec)
    if n > MAX_LAYERS:
        raise ValueError(f"the layer spec expands to {n:,} layers (repeats multiplied out), more than {MAX_LAYERS:,}: "
                         "use fewer or smaller repeats")
    x = torch.zeros(1, in_channels, image_size, image_size)
    model, x = _build_list(spec, x, num_classes, "layer ")
    if x.dim() != 2 or x.shape[1] != num_classes:
        raise ValueError(f"the last layer gives outputs of shape {_shape(x)} but the data has {num_classes} classes: "
                         "end with flatten (if needed) and {linear: classes}")
    return model


MAX_LAYERS = 10_000
MAX_REPEAT = 1_000


def _expanded_size(items, depth: int = 0) -> int:
    """How many layers `items` makes once every repeat is multiplied out (checked before building anything:
    nested repeats multiply, and `repeat: 1000000` would otherwise build a million copies)."""
    if depth > 50:
        raise ValueError("the layer spec is nested more than 50 levels deep")
    if not isinstance(items, (list, tuple)):
        return 1
    total = 0
    for item in items:
        if isinstance(item, dict) and "repeat" in item:
            times = item["repeat"]
            times = times if isinstance(times, int) and not isinstance(times, bool) and times > 0 else 1
            if times > MAX_REPEAT:
                raise ValueError(f"repeat count must be a whole number from 1 to {MAX_REPEAT}, got {times}")
            total += times * (_expanded_size(item.get("layers"), depth + 1) + _expanded_size(item.get("between") or [], depth + 1))
        elif isinstance(item, dict) and "residual" in item:
            total += 1 + _expanded_size(item["residual"], depth + 1)
        else:
            total += 1
        if total > MAX_LAYERS:
            return total
    return total


def _shape(x):
    return "x".join(str(d) for d in x.shape[1:])


def _build_list(items, x, num_classes, where):
    if not isinstance(items, (list, tuple)) or not items:
        raise ValueError(f"{where.strip()}: expected a non-empty list of layers")
    modules = []
    for i, item in enumerate(items, 1):
        module, x = _build_item(item, x, num_classes, f"{where}{i}")
        modules.append(module)
    return nn.Sequential(*modules), x


def _parse(item, where):
    """An item -> (kind, value, options)."""
    if isinstance(item, str):
        item = {item: None}
    if not isinstance(item, dict):
        raise ValueError(f"{where}: {item!r} is not a layer: write e.g. {{conv: 32}} or relu")
    if any(k in ("softmax", "log_softmax") for k in item):
        raise ValueError(f"{where}: no softmax layer: models output logits and the loss applies softmax")
    kinds = [k for k in item if k in KINDS]
    if not kinds:
        bad = next(iter(item), "")
        close = difflib.get_close_matches(str(bad), list(KINDS), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"the layers are {', '.join(KINDS)}"
        raise ValueError(f"{where}: unknown layer '{bad}' ({hint})")
    if len(kinds) > 1:
        raise ValueError(f"{where}: {item!r} names {len(kinds)} layers ({', '.join(kinds)}): give one per list item")
    kind = kinds[0]
    opts = {k: v for k, v in item.items() if k != kind}
    for k in opts:
        if k not in KINDS[kind]:
            close = difflib.get_close_matches(str(k), sorted(KINDS[kind]), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; it takes {', '.join(sorted(KINDS[kind])) or 'none'}"
            raise ValueError(f"{where} ({kind}): unknown option '{k}'{hint}")
    return kind, item[kind], opts


def _int(v, where, what, low=1):
    return check_whole(f"{where}: {what}", v, low)


def _bool(v, where, what):
    return check_flag(f"{where}: {what}", v)


def _size(v, where, what, low):
    """An int or a [h, w] pair, as PyTorch takes kernel/stride/padding."""
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return tuple(_int(u, where, what, low) for u in v)
    return _int(v, where, what, low)


def _make(kind, value, opts, x, num_classes, where):
    """The module for one item, given the input x it will see."""
    if kind in ("conv", "pool") and x.dim() != 4:
        raise ValueError(f"{where} ({kind}) needs an image-shaped input but gets {_shape(x)}: put it before the flatten")
    if kind == "conv":
        pad = opts.get("padding", 0)
        pad = pad if pad == "same" else _size(pad, where, "padding", 0)
        return nn.Conv2d(x.shape[1], _int(value, where, "conv channels"), _size(opts.get("kernel", 3), where, "kernel", 1),
                         _size(opts.get("stride", 1), where, "stride", 1), pad, bias=_bool(opts.get("bias", True), where, "bias"))
    if kind == "linear":
        if x.dim() != 2:
            raise ValueError(f"{where} (linear) needs a flat input but gets {_shape(x)}: put flatten before it")
        out = num_classes if value == "classes" else _int(value, where, "linear features")
        return nn.Linear(x.shape[1], out, bias=_bool(opts.get("bias", True), where, "bias"))
    if kind == "pool":
        value = value or "max"
        k = _size(opts.get("kernel", 2), where, "kernel", 1)
        s = _size(opts.get("stride", k), where, "stride", 1)
        pools = {"max": lambda: nn.MaxPool2d(k, s), "avg": lambda: nn.AvgPool2d(k, s),
                 "lp": lambda: nn.LPPool2d(float(opts.get("norm", 2)), k, s), "global": lambda: nn.AdaptiveAvgPool2d(1)}
        if value not in pools:
            raise ValueError(f"{where}: pool must be one of {', '.join(pools)}, got {value!r}")
        return pools[value]()
    if kind == "bn":
        return (nn.BatchNorm2d if x.dim() == 4 else nn.BatchNorm1d)(x.shape[1])
    if kind == "dropout":
        return nn.Dropout(check_probability(f"{where}: dropout", value))
    if kind == "flatten":
        return nn.Flatten()
    return get_act_layer(kind)()


def _build_item(item, x, num_classes, where):
    kind, value, opts = _parse(item, where)
    if kind == "repeat":
        return _build_repeat(_int(value, where, "repeat count"), opts, x, num_classes, where)
    if kind == "residual":
        body, y = _build_list(value, x, num_classes, where + ".")
        if y.shape != x.shape:
            raise ValueError(f"{where} (residual) must keep the shape {_shape(x)} but its layers give {_shape(y)}")
        return Residual(body), y  # shapes are all the probe is for: no need to run the body again
    module = _make(kind, value, opts, x, num_classes, where)
    return module, _probe(module, x, kind, where)


def _build_repeat(times, opts, x, num_classes, where):
    layers, between = opts.get("layers"), opts.get("between") or []
    if not isinstance(layers, (list, tuple)) or not isinstance(between, (list, tuple)):
        raise ValueError(f"{where} (repeat) needs layers: [...] (and optionally between: [...])")
    if not _bool(opts.get("shared", False), where, "shared"):  # independent copies: just the list written out `times` times
        return _build_list(list(layers) + (list(between) + list(layers)) * (times - 1), x, num_classes, where + ".")
    body, y = _build_list(layers, x, num_classes, where + ".")
    between_module, z = None, y
    if between:
        between_module, z = _build_list(between, y, num_classes, where + ".between.")
    if times > 1 and not (y.shape == z.shape == x.shape):
        raise ValueError(f"{where} (repeat) must keep the shape {_shape(x)} to reuse its layers, but one pass gives {_shape(z)}")
    return Repeat(body, times, between_module), y


@torch.no_grad()
def _probe(module, x, kind, where):
    """Run the dummy batch through `module` (eval mode, so BatchNorm accepts it) and return the output."""
    was = module.training
    module.eval()
    try:
        y = module(x)
    except RuntimeError as err:
        msg = str(err).splitlines()[0]
        raise ValueError(f"{where} ({kind}) cannot take an input of shape {_shape(x)}: {msg}") from None
    finally:
        module.train(was)
    if y.numel() == 0:
        raise ValueError(f"{where} ({kind}) leaves nothing of a {_shape(x)} input: too many pools or "
                         "unpadded convs for this image size")
    return y


# A small CNN, so that `cifarlab models` can list `layers` with a parameter count.
EXAMPLE = [{"conv": 32, "kernel": 3, "padding": 1}, "relu", {"pool": "max"},
           {"conv": 64, "kernel": 3, "padding": 1}, "relu", {"pool": "max"},
           "flatten", {"linear": 128}, "relu", {"linear": "classes"}]


@register_model("layers", family="layerspec")
def layers(num_classes=10, in_channels=3, image_size=32, layers=None):
    """A model declared as a list of layers (options.layers), every size inferred; see docs/zoo.md."""
    try:
        return build(EXAMPLE if layers is None else layers, num_classes, in_channels, image_size)
    except ValueError as err:
        # Raised here rather than left to the registry, whose message would repeat the whole spec.
        raise UserError(f"model 'layers': {err}") from None
