"""Muon for the weight matrices, another optimizer for the rest (as airbench94_muon and the Muon paper).

Muon (Jordan et al. 2024; torch.optim.Muon) orthogonalises each matrix's momentum, which lets conv
filters learn at a high, stable rate: airbench94_muon reaches 94% on CIFAR-10 in 9.9 epochs with
it. It is defined for 2-D weights only, so conv kernels (out, in, kh, kw) are handed to it as
(out, in*kh*kw) views of the same storage: Muon updates the views in place, which updates the
kernels. Biases, normalisation weights and the classifier head are not matrices to orthogonalise
(the Muon paper keeps the head on AdamW) and go to the auxiliary optimizer.
"""
from __future__ import annotations

import math
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


class Fp32Muon(torch.optim.Muon):
    """torch.optim.Muon with the Newton-Schulz orthogonalisation in fp32 instead of its fixed bf16.

    On a CPU without native bf16 (plain AVX2) torch's bf16 matmuls are emulated: the orthogonalisation of
    speedrun-cpu's kernels took 384 ms a step there against 15 ms in fp32 (AMD EPYC limited to AVX2,
    benchmarks/muon_orthogonalize.py), a fifth of the step at batch 1000. Same state layout and update
    as torch's (its default 'original' LR adjustment), so a checkpoint moves between the two."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            for p, grad, buf in zip(params, grads, bufs):
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = orthogonalize(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
                rows, cols = p.shape[:2]
                p.mul_(1 - lr * decay)
                p.add_(update.to(p.dtype), alpha=-lr * math.sqrt(max(1, rows / cols)))
        return loss


def orthogonalize(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration (as torch.optim.Muon's), in fp32: g -> about U V^T of its SVD."""
    a, b, c = coefficients
    x = g.float()
    wide = x.size(0) <= x.size(1)
    x = x if wide else x.T  # iterate on the smaller Gram matrix
    x = x / x.norm().clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x if wide else x.T


class MuonWithAuxiliary(torch.optim.Optimizer):
    """One optimizer object (for LR schedulers, GradScaler and checkpoints) over two torch optimizers.

    Its param_groups are the inner optimizers' own group dicts, so a scheduler that sets a group's
    `lr` sets it where the inner optimizer reads it."""

    def __init__(self, muon_groups: list[dict], aux_groups: list[dict],
                 make_aux: Callable[[list[dict]], torch.optim.Optimizer], fixed_norm: bool = False,
                 ns_dtype: str = "bf16", **muon_options):
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
        # torch's Muon orthogonalises in bf16: fast where bf16 matmuls are native, 25x slower where emulated
        self.muon = (Fp32Muon if ns_dtype == "fp32" else torch.optim.Muon)(groups, **muon_options)
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
