#!/usr/bin/env python3
"""Training throughput of cifarlab against the reference loop (../shared/bench/reference_loop.py):
same machine, same run, same model, same batch size, same images, same optimizer.

  python benchmarks/throughput.py --model tutorial --batch 64 --limit 10000 --rounds 2
  python benchmarks/throughput.py --model cifarnet --batch 256 --limit 2560 --rounds 2

The reference and cifarlab alternate (ref, ours, ref, ours, ...) so that drift in the machine's
speed hits both; the ratio reported is the median of the per-round ratios. Results are appended
as one JSON line to benchmarks/results/throughput.jsonl (with machine and date).
"""
import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODELS = {"tutorial": ("tutorial_cnn", 0.001, False), "cifarnet": ("cifarnet", 0.01, True)}  # name, lr, crop+flip

p = argparse.ArgumentParser()
p.add_argument("--model", choices=MODELS, default="tutorial")
p.add_argument("--batch", type=int, default=64)
p.add_argument("--limit", type=int, default=10000, help="training images per epoch (both loops)")
p.add_argument("--rounds", type=int, default=2)
p.add_argument("--data", default=str(SHARED / "data/cifar10-jpeg/train.tar.gz"))
p.add_argument("--precision", default="auto", help="cifarlab's train.precision")
a = p.parse_args()

name, lr, augment = MODELS[a.model]
work = Path(tempfile.mkdtemp(prefix="cifarlab-bench-"))
with tarfile.open(a.data) as tf:  # the reference reads an image folder
    tf.extractall(work, filter="data")
folder = next(work.iterdir())


def reference() -> float:
    out = subprocess.run([sys.executable, str(SHARED / "bench/reference_loop.py"), str(folder), "--model", a.model,
                          "--batch", str(a.batch), "--limit", str(a.limit), "--lr", str(lr)],
                         capture_output=True, text=True, check=True).stdout
    return float(re.search(r"img_per_s=([\d.]+)", out).group(1))


def ours(run: int) -> tuple[float, dict]:
    aug = "{crop_padding: 4, flip: true}" if augment else "{}"
    cmd = [sys.executable, "-m", "cifarlab", "train", "--model", name, "--data", f"folder:{a.data}",
           "--set", f"data.train_limit={a.limit}", "--val-size", "5000", "--set", "data.normalize=half",
           "--set", f"data.augment={aug}", "--optimizer", "sgd", "--lr", str(lr), "--set", "optimizer.momentum=0.9",
           "--schedule", "constant", "--epochs", "1", "--batch-size", str(a.batch), "--precision", a.precision,
           "--out", str(work / f"run{run}"), "--json", "--no-progress"]
    s = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    env = json.loads((work / f"run{run}" / "environment.json").read_text())
    return s["train_images_per_second"], env


ref, mine, env = [], [], {}
for r in range(a.rounds):
    ref.append(reference())
    ips, env = ours(r)
    mine.append(ips)
    print(f"round {r + 1}: reference {ref[-1]:.0f} img/s, cifarlab {mine[-1]:.0f} img/s, ratio {mine[-1] / ref[-1]:.2f}x",
          flush=True)
ratio = statistics.median(m / r for m, r in zip(mine, ref))
result = {"date": datetime.date.today().isoformat(), "machine": f"{env.get('cpu')} x{os.cpu_count()} ({platform.machine()})",
          "model": a.model, "batch": a.batch, "images": a.limit, "precision": env.get("precision"),
          "torch": env.get("packages", {}).get("torch"), "reference_img_s": [round(x, 1) for x in ref],
          "cifarlab_img_s": [round(x, 1) for x in mine], "median_ratio": round(ratio, 2)}
print(json.dumps(result))
out = ROOT / "benchmarks/results/throughput.jsonl"
out.parent.mkdir(parents=True, exist_ok=True)
with open(out, "a") as f:
    f.write(json.dumps(result) + "\n")
