#!/usr/bin/env python3
"""Time-to-accuracy of a recipe on the shared CIFAR-10 images: runs it once and prints the
accuracy-vs-time curve (cumulative training seconds and wall seconds per epoch).

  python benchmarks/speedrun.py --recipe speedrun-cpu [--set train.epochs=8 ...]

Appends one JSON line to benchmarks/results/speedrun.jsonl (machine, date, curve, summary). To time an
AVX2-only CPU on a newer one: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
python benchmarks/speedrun.py ... (the `auto` settings then pick fp32, as on such a CPU).
"""
import argparse
import csv
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cifarlab.train.runtime import cpu_flags

ROOT = Path(__file__).resolve().parents[1]


# set, these make a newer CPU run as an older one (ATen's and oneDNN's kernels stop at that instruction set):
# a figure taken under them must say so next to the flags the CPU has
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


p = argparse.ArgumentParser()
p.add_argument("--recipe", default="speedrun-cpu")
p.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10-jpeg/train.tar.gz"))
p.add_argument("--set", action="append", default=[])
a = p.parse_args()

out = Path(tempfile.mkdtemp(prefix="speedrun-")) / "run"
cmd = [sys.executable, "-m", "cifarlab", "train", "--recipe", a.recipe, "--data", f"folder:{a.data}",
       "--out", str(out), "--json", "--no-progress"] + [x for s in a.set for x in ("--set", s)]
t0 = time.time()  # the whole command, start-up and report included: the wall time a user waits
summary = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
command_s = time.time() - t0
env = json.loads((out / "environment.json").read_text())
curve, train_s, wall_s = [], 0.0, 0.0
with open(out / "metrics.csv") as f:
    for row in csv.DictReader(f):
        train_s += float(row["train_seconds"])
        wall_s += float(row["epoch_seconds"])
        val = float(row["val_accuracy"])  # NaN: an epoch train.val_every did not validate
        curve.append({"epoch": int(row["epoch"]), "train_s": round(train_s, 1), "wall_s": round(wall_s, 1),
                      "val_accuracy": round(val, 4) if val == val else None})
        print(f"epoch {row['epoch']:>2}  {train_s:7.1f} s training  {wall_s:7.1f} s with evaluation  "
              + (f"val {val:.2%}" if val == val else "not validated"))
result = {"date": datetime.date.today().isoformat(), "recipe": a.recipe, "overrides": a.set,
          "machine": f"{env['cpu']} x{env['cpu_count']}", "device": env["device"], "precision": env["precision"],
          "torch": env["packages"]["torch"], "best_val_accuracy": summary["best_val_accuracy"],
          "best_epoch": summary["best_epoch"], "command_seconds": round(command_s, 1),
          "cpu_flags": cpu_flags(), "train_images_per_second": round(summary["train_images_per_second"], 1),
          "curve": curve}
isa_limits = {k: os.environ[k] for k in ISA_LIMITS if os.environ.get(k)}
if isa_limits:
    result["isa_limits"] = isa_limits
print(f"best val {summary['best_val_accuracy']:.2%}, command wall {command_s:.1f} s")
print(json.dumps(result))
(ROOT / "benchmarks/results").mkdir(parents=True, exist_ok=True)
with open(ROOT / "benchmarks/results/speedrun.jsonl", "a") as f:
    f.write(json.dumps(result) + "\n")
