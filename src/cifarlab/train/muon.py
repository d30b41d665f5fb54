"""Muon for the weight matrices, another optimizer for the rest (as airbench94_muon and the Muon paper).

Muon (Jordan et al. 2024; torch.optim.Muon) orthogonalises each matrix's momentum, which lets conv
filters learn at a high, stable rate: airbench94_muon reaches 94% on CIFAR-10 in 9.9 epochs with
it. It is defined for 2-D weights only, so conv kernels (out, in, kh, kw) are handed to it as
(out, in*kh*kw) views of the same storage: Muon updates the views in place, which updates the
kernels. Biases, normalisation weights and the classifier head are not matrices to orthogonalise
(the Muon paper keeps the head on AdamW) and go to the auxiliary optimizer.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn


def muon_split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(matrix weights for Muon, every other trainable parameter); the last Linear is the head."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    head = {id(p) for p in linears[-1].parameters()} if linears else set()
    matrices, rest = [], []
    for p in model.parameters():
        if p.requires_grad:
            (matrices if p.ndim >= 2 and id(p) not in head else rest).append(p)
    return matrices, rest


def _matrix(t: torch.Tensor) -> torch.Tensor:
    """A (out, rest) view of a kernel in its memory order: a channels_last kernel is viewed as (out, kh*kw*in),
    a permutation of the columns, which Newton-Schulz orthogonalisation carries through unchanged."""
    if t.ndim == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        t = t.permute(0, 2, 3, 1)
    return t.view(t.shape[0], -1)


class MuonWithAuxiliary(torch.optim.Optimizer):
    """One optimizer object (for LR schedulers, GradScaler and checkpoints) over two torch optimizers.

    Its param_groups are the inner optimizers' own group dicts, so a scheduler that sets a group's
    `lr` sets it where the inner optimizer reads it."""

    def __init__(self, muon_groups: list[dict], aux_groups: list[dict],
                 make_aux: Callable[[list[dict]], torch.optim.Optimizer], fixed_norm: bool = False,
                 **muon_options):
        self._views: list[tuple[nn.Parameter, torch.Tensor]] = []
        self.fixed_norm = fixed_norm
        groups = []
        for g in muon_groups:
            views = []
            for p in g["params"]:
                view = _matrix(p.detach())  # same storage: Muon's in-place update moves p
                # the gradient reaches the view as soon as it is accumulated, so GradScaler's unscale_
                # and clipping (which act on the groups' tensors) see it before the step
                p.register_post_accumulate_grad_hook(lambda q, v=view: setattr(v, "grad", _matrix(q.grad)))
                self._views.append((p, view))
                views.append(view)
            groups.append({**g, "params": views})
        self.muon = torch.optim.Muon(groups, **muon_options)
        self.aux = make_aux(aux_groups) if aux_groups else None
        super().__init__(self._inner_groups(), {})

    def _inner_groups(self) -> list[dict]:
        return self.muon.param_groups + (self.aux.param_groups if self.aux else [])

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        if self.fixed_norm:  # airbench94_muon: with a normalisation after it, a matrix's scale changes nothing
            # but its effective LR (an update of fixed size turns a small matrix further); held at sqrt(rows),
            # each step turns every matrix by about the same angle, and the LR schedule alone sets it
            for _, view in self._views:
                view.mul_(view.size(0) ** 0.5 / view.norm().clamp_min(1e-12))
        self.muon.step()
        if self.aux:
            self.aux.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        if self.aux:
            self.aux.zero_grad(set_to_none)
        for p, _ in self._views:  # the kernels themselves hold the gradient autograd writes to
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "aux": self.aux.state_dict() if self.aux else None}

    def load_state_dict(self, state: dict) -> None:
        self.muon.load_state_dict(state["muon"])
        if self.aux:
            self.aux.load_state_dict(state["aux"])
        self.param_groups = self._inner_groups()  # loading replaced the inner group dicts
