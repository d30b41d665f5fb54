#!/usr/bin/env python3
"""What a smaller training image saves: images/s of one training step (forward, backward, SGD) of a model
at each side, the question behind data.augment.progressive_resize.

  python benchmarks/resize_throughput.py [--model speedrun_net --widths 32,96,192 --batch 1000 --sizes 32,28,24,20,16]

Same machine, same process, bf16 autocast where the CPU has native bf16 (else fp32), channels_last;
two warm-up steps, then three timed ones per size; the first size is timed again at the end, so drift shows.
"""
import argparse
import time

import torch
import torch.nn.functional as F

from cifarlab.models import build_model
from cifarlab.train.runtime import cpu_flags, resolve_precision

p = argparse.ArgumentParser()
p.add_argument("--model", default="speedrun_net")
p.add_argument("--widths", default="32,96,192", help="speedrun_net's widths (ignored by other models)")
p.add_argument("--batch", type=int, default=1000)
p.add_argument("--sizes", default="32,28,24,20,16")
a = p.parse_args()

torch.manual_seed(0)
options = {"widths": [int(w) for w in a.widths.split(",")]} if a.model == "speedrun_net" else {}
model = build_model(a.model, num_classes=10, in_channels=3, image_size=32, **options).to(memory_format=torch.channels_last)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
precision = resolve_precision("auto", torch.device("cpu"))
dtype = torch.bfloat16 if precision == "bf16" else torch.float32
sizes = [int(s) for s in a.sizes.split(",")]
print(f"{a.model} {options} batch {a.batch}, {precision}, CPU flags: {cpu_flags()}")
for side in sizes + sizes[:1]:
    x = torch.randn(a.batch, 3, side, side).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (a.batch,))
    for step in range(5):
        if step == 2:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype, enabled=dtype != torch.float32):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"{side:>3} px  {3 * a.batch / (time.perf_counter() - t0):8.0f} images/s", flush=True)
