"""Muon's orthogonalisation precision: torch's is fixed at bf16, which a CPU without native bf16 emulates
(25x slower than fp32 there); `optimizer.muon_ns_dtype` (auto | bf16 | fp32) picks it."""
import pytest
import torch

from cifarlab.schema import OptimizerConfig
from cifarlab.train import runtime
from cifarlab.train.muon import Fp32Muon, orthogonalize
from cifarlab.train.optim import build_optimizer


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 2))


@pytest.mark.parametrize("shape", [(8, 27), (27, 8), (16, 16)])  # wide, tall (iterated transposed), square
def test_fp32_orthogonalisation_is_newton_schulz_to_near_orthogonal(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    q = orthogonalize(g, (3.4445, -4.7750, 2.0315), 5, 1e-7)
    assert q.dtype == torch.float32 and q.shape == g.shape
    s = torch.linalg.svdvals(q)
    assert s.min() > 0.5 and s.max() < 1.5  # the quintic's band around 1 (torch's docstring: ~U(0.5, 1.5))
    # same left/right singular vectors as g: q is about U V^T of g's SVD
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    assert torch.nn.functional.cosine_similarity((u @ vh).flatten(), q.flatten(), dim=0) > 0.95


def test_fp32_muon_steps_as_torchs_within_bf16_rounding_and_shares_its_state():
    torch.manual_seed(0)
    w0 = torch.randn(16, 36)
    grads = [torch.randn(16, 36) for _ in range(3)]
    params = {}
    for cls in (torch.optim.Muon, Fp32Muon):
        w = torch.nn.Parameter(w0.clone())
        opt = cls([w], lr=0.05, momentum=0.9, weight_decay=0.01)
        for g in grads:
            w.grad = g.clone()
            opt.step()
        params[cls] = (w.detach(), opt.state_dict())
    (a, state_a), (b, state_b) = params[torch.optim.Muon], params[Fp32Muon]
    assert not torch.equal(a, b)  # a different computation ...
    assert torch.allclose(a, b, atol=0.05 * 3 * 0.02)  # ... the same update up to bf16 rounding (< 2% of each step)
    assert (a - w0).norm() > 10 * (a - b).norm()
    assert torch.equal(state_a["state"][0]["momentum_buffer"], state_b["state"][0]["momentum_buffer"])
    Fp32Muon([torch.nn.Parameter(w0.clone())]).load_state_dict(state_a)  # a checkpoint moves between them


@pytest.mark.parametrize("setting, fast_bf16, want", [
    ("auto", False, Fp32Muon), ("auto", True, torch.optim.Muon),
    ("bf16", False, torch.optim.Muon), ("fp32", True, Fp32Muon)])
def test_auto_orthogonalises_in_fp32_only_where_the_cpu_emulates_bf16(monkeypatch, setting, fast_bf16, want):
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: fast_bf16)
    opt = build_optimizer(OptimizerConfig(name="muon", lr=0.05, muon_ns_dtype=setting), _net())
    assert type(opt.muon) is want


@pytest.mark.parametrize("capability, flags, want", [("AVX512", True, True), ("AVX2", True, False),
                                                     ("AVX512", False, False), ("DEFAULT", True, False)])
def test_kernels_limited_to_avx2_count_as_a_cpu_without_native_bf16(monkeypatch, capability, flags, want):
    # ATEN_CPU_CAPABILITY=avx2 on an avx512_bf16 CPU (how benchmarks time an older CPU) emulates bf16 too
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: flags)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert runtime.cpu_has_fast_bf16() is want
