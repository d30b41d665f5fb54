#!/usr/bin/env python3
"""Time of one Muon step on a recipe's conv kernels: torch.optim.Muon (orthogonalises in bf16) against the
lab's fp32 orthogonalisation (`optimizer.muon_ns_dtype: fp32`), as `auto` chooses between them.

  python benchmarks/muon_orthogonalize.py [--recipe speedrun-cpu] [--rounds 5]
  ATEN_CPU_CAPABILITY=avx2 python benchmarks/muon_orthogonalize.py   # as on a CPU without native bf16

Appends one JSON line to benchmarks/results/muon_orthogonalize.jsonl (machine, CPU flags, kernel limit, date).
"""
import argparse
import datetime
import json
import time
from pathlib import Path

import torch

from cifarlab.config import load_config
from cifarlab.models.registry import build_model
from cifarlab.train.muon import Fp32Muon, muon_split
from cifarlab.train.runtime import cpu_flags, environment

ROOT = Path(__file__).resolve().parents[1]

p = argparse.ArgumentParser()
p.add_argument("--recipe", default="speedrun-cpu")
p.add_argument("--rounds", type=int, default=5)
args = p.parse_args()

torch.manual_seed(0)
cfg = load_config(recipe=args.recipe)
matrices, _ = muon_split(build_model(cfg.model.name, num_classes=10, **cfg.model.options))
shapes = [tuple(m.flatten(1).shape) for m in matrices]  # (out, in x kh x kw), as Muon sees a kernel


def ms_per_step(cls) -> float:
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    for q in params:
        q.grad = torch.randn_like(q)
    opt = cls(params, lr=0.01, momentum=0.8)
    opt.step()  # warm-up: state, kernels
    times = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t)
    return 1000 * min(times)


env = environment(torch.device("cpu"), "fp32")
result = {"date": datetime.date.today().isoformat(), "recipe": args.recipe, "kernels": shapes,
          "machine": f"{env['cpu']} x{env['cpu_count']}", "torch_threads": env["torch_threads"],
          "cpu_flags": cpu_flags(),
          "aten_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
          "torch_muon_bf16_ms": round(ms_per_step(torch.optim.Muon), 1), "fp32_ms": round(ms_per_step(Fp32Muon), 1)}
print(json.dumps(result))
with open(ROOT / "benchmarks/results/muon_orthogonalize.jsonl", "a") as f:
    f.write(json.dumps(result) + "\n")
