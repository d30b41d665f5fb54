#!/usr/bin/env python3
"""Write the lab's split of a dataset in the layout airbench's scripts read, so that airbench94_muon.py
(KellerJordan/cifar10-airbench) runs unmodified on exactly the images a cifarlab recipe trains and selects on:

  python benchmarks/airbench_data.py --data folder:PATH/train.tar.gz --out DIR/cifar10
  (cd DIR && python airbench94_muon.py)      # its CifarLoader("cifar10") finds train.pt and test.pt

train.pt holds the recipe's training images (45,000 of the shared 50,000), test.pt the fixed validation 5,000
(data.val_size 5000, split_seed 0): airbench's "test" accuracy is then the lab's validation accuracy, the
figure docs/speedrun.md compares. Its files are {"images": uint8 N x 32 x 32 x 3, "labels": int64 N,
"classes": [...]}, as airbench saves torchvision's CIFAR10. airbench's code stays out of this project.
"""
import argparse
from pathlib import Path

import torch

from cifarlab.data.loader import split_rows
from cifarlab.data.sources import load_dataset
from cifarlab.schema import DataConfig

p = argparse.ArgumentParser()
p.add_argument("--data", required=True, help="a dataset spec, as for cifarlab train (folder:PATH, cifar10, sample)")
p.add_argument("--out", required=True, type=Path, help="the folder to write train.pt and test.pt into")
p.add_argument("--val-size", type=float, default=5000, help="as data.val_size: a count or a fraction")
p.add_argument("--split-seed", type=int, default=0)
a = p.parse_args()

raw = load_dataset(a.data)
split = DataConfig(dataset=a.data, val_size=a.val_size, split_seed=a.split_seed)  # the split a recipe's run uses
a.out.mkdir(parents=True, exist_ok=True)
for name, which in (("train.pt", "train"), ("test.pt", "val")):
    x, y = split_rows(raw, split, which)
    images = torch.from_numpy(x).permute(0, 2, 3, 1).contiguous()  # NCHW -> NHWC
    torch.save({"images": images, "labels": torch.from_numpy(y).long(), "classes": list(raw.classes)}, a.out / name)
    print(f"{a.out / name}: {len(y)} images")
