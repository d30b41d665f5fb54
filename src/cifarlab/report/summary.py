"""Model summary without training: the layer table (output shapes, parameters, multiply-adds) and
readable weight statistics.

The table comes from forward hooks on the leaf modules during one dummy batch, so it shows what the
model really computes (shapes included), whatever its forward looks like.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    """Multiply-adds per sample: conv = output elements * in/groups * kernel area; linear = in * out."""
    per_sample = out[0].numel()
    if isinstance(module, nn.modules.conv._ConvNd):
        k = 1
        for s in module.kernel_size:
            k *= s
        return per_sample * module.in_channels // module.groups * k
    if isinstance(module, nn.Linear):
        return per_sample * module.in_features
    return 0


def layer_table(model: nn.Module, input_shape: tuple[int, int, int]) -> list[dict]:
    """One row per leaf module that ran on a (1, *input_shape) batch, in call order.

    Rows: layer (qualified name), type, output shape (without the batch), parameters (its own),
    macs (per image). A leaf that runs twice gets two rows.
    """
    rows: list[dict] = []

    def hook(name):
        def record(module, _inputs, out):
            if isinstance(out, torch.Tensor):
                rows.append({"layer": name, "type": type(module).__name__, "output_shape": list(out.shape[1:]),
                             "parameters": sum(p.numel() for p in module.parameters(recurse=False)),
                             "macs": _macs(module, out)})
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules()
               if name and not list(m.children()) and not isinstance(m, (nn.Sequential, nn.ModuleList))]
    was_training = model.training
    param = next(model.parameters(), None)
    x = torch.zeros(1, *input_shape, device=param.device if param is not None else "cpu")
    try:
        model.eval()  # BatchNorm on one image needs running statistics
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return rows


def table_totals(rows: list[dict], model: nn.Module) -> dict:
    """Totals; parameters counted on the model itself so shared or hook-less parameters are not missed."""
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "macs": sum(r["macs"] for r in rows)}


def weight_stats(model: nn.Module, values: int = 5) -> list[dict]:
    """Per parameter tensor: shape, count, mean, std, min, max, share of exact zeros and its first values."""
    out = []
    for name, p in model.named_parameters():
        t = p.detach().float().cpu()
        flat = t.flatten()
        out.append({"name": name, "shape": list(t.shape), "count": t.numel(), "mean": flat.mean().item(),
                    "std": flat.std().item() if t.numel() > 1 else 0.0, "min": flat.min().item(),
                    "max": flat.max().item(), "zeros": (flat == 0).float().mean().item(),
                    "first": [round(v, 4) for v in flat[:values].tolist()]})
    return out
