"""The optimizers a config can name (`optimizer.name`), one registry entry each.

An entry is a builder `build(cfg, params) -> torch.optim.Optimizer` reading the shared OptimizerConfig,
plus how many tensors it keeps per parameter (what last.pt holds besides the weights). To add one:

    @register_optimizer("lion", states=lambda cfg: 1)
    def lion(cfg, params):
        '''Lion (sign momentum).'''
        return Lion(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

torch is imported inside the builders, so that the config can check a name without importing it.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from cifarlab.registry import OPTIMIZERS

if TYPE_CHECKING:
    import torch

    from cifarlab.config import OptimizerConfig


@dataclass(frozen=True)
class OptimizerEntry:
    name: str
    build: Callable[..., torch.optim.Optimizer]  # (cfg: OptimizerConfig, params) -> optimizer
    states: Callable[[OptimizerConfig], int]  # tensors kept per parameter, for the checkpoint size
    summary: str  # first line of the builder's docstring




def register_optimizer(name: str, states: Callable[[OptimizerConfig], int]):
    """Decorator: `@register_optimizer("sgd", states=...)` over a builder `build(cfg, params)`."""
    def add(build):
        doc = inspect.getdoc(build) or ""
        OPTIMIZERS.add(name, OptimizerEntry(name, build, states, doc.splitlines()[0] if doc else ""))
        return build
    return add


def build_optimizer(cfg: OptimizerConfig, params) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(cfg.name).build(cfg, params)


def optimizer_states(cfg: OptimizerConfig) -> int:
    """How many tensors the optimizer keeps per parameter (what last.pt holds besides the weights)."""
    return OPTIMIZERS.get(cfg.name).states(cfg)


@register_optimizer("sgd", states=lambda cfg: int(cfg.momentum > 0))
def sgd(cfg, params):
    """SGD with momentum (Nesterov's if `nesterov`; plain SGD at momentum 0)."""
    import torch
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           weight_decay=cfg.weight_decay)


@register_optimizer("adam", states=lambda cfg: 2)
def adam(cfg, params):
    """Adam (weight decay added to the gradient, as L2)."""
    import torch
    return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


@register_optimizer("adamw", states=lambda cfg: 2)
def adamw(cfg, params):
    """AdamW (decoupled weight decay)."""
    import torch
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


@register_optimizer("rmsprop", states=lambda cfg: 1 + (cfg.momentum > 0))
def rmsprop(cfg, params):
    """RMSprop with smoothing constant `alpha` and optional momentum."""
    import torch
    return torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.alpha, eps=cfg.eps, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
