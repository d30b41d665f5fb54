#!/usr/bin/env python3
"""Would more test-time views help? Each checkpoint's validation split (the rows its run selected on) is
evaluated once per view: 13 pixel offsets (the 3x3 neighbourhood and four 2-pixel diagonals), each with and
without the mirror, borders reflected (train/tta.py's `shifted`). Sets of views are then averaged from the stored
logits, so every set is compared on the same forward passes:

  python benchmarks/tta_views.py --data folder:PATH/train.tar.gz RUN/best.pt [RUN2/best.pt ...]

Prints one JSON line per checkpoint: accuracy (%) per view set and the seconds one view of the split takes.
The sets' names say what they average; "level 2" is the lab's (and airbench's) `train.tta_level: 2`.
"""
import argparse
import json
import time

import torch

from cifarlab.data.loader import split_rows
from cifarlab.data.normalize import Normalize, to_unit
from cifarlab.data.sources import load_dataset
from cifarlab.schema import validate_config
from cifarlab.train.checkpoint import load_checkpoint, model_from_checkpoint
from cifarlab.train.runtime import autocast
from cifarlab.train.tta import shifted

p = argparse.ArgumentParser()
p.add_argument("--data", required=True, help="the dataset the checkpoints were trained on (a --data spec)")
p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
p.add_argument("checkpoints", nargs="+")
a = p.parse_args()

OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)] + [(-2, -2), (2, 2), (-2, 2), (2, -2)]
NEIGHBOURS = [o for o in OFFSETS[:9] if o != (0, 0)]


def view_logits(model, normalize, x: torch.Tensor, channels_last: bool) -> dict:
    """{(offset, mirrored): float logits} over the whole split, one forward pass per view, in the memory
    layout the run validated in (NHWC runs ~1.7x faster here)."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model, views = model.to(memory_format=layout), {}
    with torch.inference_mode(), autocast(torch.device("cpu"), a.precision):
        for offset in OFFSETS:
            for mirror in (False, True):
                out = []
                for i in range(0, len(x), 1000):
                    xb = shifted(normalize(to_unit(x[i:i + 1000])), *offset).contiguous(memory_format=layout)
                    out.append(model(xb.flip(3) if mirror else xb).float())
                views[offset, mirror] = torch.cat(out)
    return views


def view_sets(views: dict) -> dict:
    """{name: averaged logits} for each set of views compared."""
    def both(o):  # a view and its mirror image
        return views[o, False] + views[o, True]

    def centred_plus(offsets):  # half the weight on the centred pair, half over the shifted pairs, as level 2
        return (both((0, 0)) + sum(both(o) for o in offsets) / len(offsets)) / 4

    return {
        "level 0 (1 view)": views[(0, 0), False],
        "level 1 (mirror, 2 views)": both((0, 0)),
        "level 2 (+ 2 diagonal 1-px shifts, 6 views)": centred_plus([(-1, -1), (1, 1)]),
        "+ 4 diagonal 1-px shifts (10 views)": centred_plus([(-1, -1), (1, 1), (-1, 1), (1, -1)]),
        "+ 4 axis 1-px shifts (10 views)": centred_plus([(-1, 0), (1, 0), (0, -1), (0, 1)]),
        "+ all 8 1-px neighbours (18 views)": centred_plus(NEIGHBOURS),
        "3x3 neighbourhood, equal weights (18 views)": sum(both(o) for o in OFFSETS[:9]),
        "+ 2 diagonal 2-px shifts (6 views)": centred_plus([(-2, -2), (2, 2)]),
        "level 2 + 2 diagonal 2-px shifts (10 views)": centred_plus([(-1, -1), (1, 1), (-2, -2), (2, 2)]),
    }


raw = load_dataset(a.data)
for path in a.checkpoints:
    ckpt = load_checkpoint(path)
    cfg = validate_config(ckpt["config"])
    x, y = split_rows(raw, cfg.data, "val")
    model, normalize = model_from_checkpoint(ckpt, path).eval(), Normalize.of_checkpoint(ckpt)
    start = time.perf_counter()
    views = view_logits(model, normalize, torch.from_numpy(x), cfg.train.channels_last)
    per_view = (time.perf_counter() - start) / len(views)
    y = torch.from_numpy(y)
    row = {name: round((logits.argmax(1) == y).float().mean().item() * 100, 2) for name, logits in view_sets(views).items()}
    print(json.dumps({"checkpoint": path, "seconds_per_view": round(per_view, 2), **row}), flush=True)
