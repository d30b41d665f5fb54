"""The optimizers a config can name (`optimizer.name`), one registry entry each.

An entry is a builder `build(cfg, params) -> torch.optim.Optimizer` reading the shared OptimizerConfig,
plus how many tensors it keeps per parameter (what last.pt holds besides the weights). `params` are
torch parameter groups (train/param_groups.py: weight decay and LR per group, from the config's
`no_decay_norm_and_bias` and `norm_bias_lr_mult`), and `cfg.lr` is already scaled for the batch
(`reference_batch_size`). A builder that splits the model itself (Muon) registers with `model=True`
and gets the nn.Module instead. To add one:

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

    from cifarlab.schema import OptimizerConfig


@dataclass(frozen=True)
class OptimizerEntry:
    name: str
    build: Callable[..., torch.optim.Optimizer]  # (cfg: OptimizerConfig, params) -> optimizer
    states: Callable[[OptimizerConfig], int]  # tensors kept per parameter, for the checkpoint size
    summary: str  # first line of the builder's docstring
    model: bool = False  # True: build(cfg, model) gets the nn.Module, not parameter groups




def register_optimizer(name: str, states: Callable[[OptimizerConfig], int], model: bool = False):
    """Decorator: `@register_optimizer("sgd", states=...)` over a builder `build(cfg, params)`
    (`model=True`: `build(cfg, model)`)."""
    def add(build):
        doc = inspect.getdoc(build) or ""
        OPTIMIZERS.add(name, OptimizerEntry(name, build, states, doc.splitlines()[0] if doc else "", model))
        return build
    return add


def build_optimizer(cfg: OptimizerConfig, model, batch_size: int | None = None) -> torch.optim.Optimizer:
    """The optimizer of `model` (an nn.Module; a plain iterable of parameters is one group) for a step of
    `batch_size` images, the LRs scaled from `cfg.reference_batch_size` when that is given."""
    import torch.nn as nn

    from cifarlab.train.param_groups import param_groups, scaled_for_batch

    entry = OPTIMIZERS.get(cfg.name)
    if cfg.reference_batch_size and batch_size:
        scale = lambda lr: scaled_for_batch(lr, batch_size, cfg.reference_batch_size)  # noqa: E731
        cfg = cfg.model_copy(update={"lr": scale(cfg.lr), "muon_lr": cfg.muon_lr and scale(cfg.muon_lr)})
    if not isinstance(model, nn.Module):
        return entry.build(cfg, list(model))
    if entry.model:
        return entry.build(cfg, model)
    return entry.build(cfg, param_groups(model, cfg.lr, cfg.weight_decay, cfg.no_decay_norm_and_bias,
                                         cfg.norm_bias_lr_mult))


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


@register_optimizer("muon", states=lambda cfg: 2 if cfg.muon_aux == "adamw" else 1, model=True)
def muon(cfg, model):
    """Muon (orthogonalised momentum) on conv kernels and hidden matrices; muon_aux (sgd | adamw) on the rest."""
    import torch

    from cifarlab.train.muon import MuonWithAuxiliary, muon_split
    from cifarlab.train.param_groups import param_groups

    matrices, rest = muon_split(model)
    keep = {id(p) for p in rest}  # the auxiliary groups: the config's decay/LR split, over the non-matrices only
    aux_groups = [{**g, "params": [p for p in g["params"] if id(p) in keep]}
                  for g in param_groups(model, cfg.lr, cfg.weight_decay, cfg.no_decay_norm_and_bias,
                                        cfg.norm_bias_lr_mult)]
    aux_groups = [g for g in aux_groups if g["params"]]
    if cfg.muon_aux == "adamw":
        make_aux = lambda groups: torch.optim.AdamW(groups, betas=cfg.betas, eps=cfg.eps)  # noqa: E731
    else:
        make_aux = lambda groups: torch.optim.SGD(  # noqa: E731
            groups, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    # a fixed norm leaves nothing for weight decay to do on the matrices: their scale no longer moves
    muon_groups = [{"params": matrices, "lr": cfg.muon_lr or cfg.lr,
                    "weight_decay": 0.0 if cfg.muon_fixed_norm else cfg.weight_decay}]
    return MuonWithAuxiliary(muon_groups, aux_groups, make_aux, fixed_norm=cfg.muon_fixed_norm,
                             ns_dtype=muon_ns_dtype(cfg.muon_ns_dtype, matrices),
                             momentum=cfg.muon_momentum, nesterov=True)


def muon_ns_dtype(setting: str, matrices: list) -> str:
    """auto: bf16 (torch's choice) on a GPU or a CPU with native bf16, fp32 on a CPU that emulates bf16."""
    if setting != "auto":
        return setting
    from cifarlab.train.runtime import cpu_has_fast_bf16
    on_cpu = not matrices or matrices[0].device.type == "cpu"
    return "fp32" if on_cpu and not cpu_has_fast_bf16() else "bf16"
