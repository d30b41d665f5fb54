#!/usr/bin/env python3
"""Peak memory and wall time of loading a large image folder: 100,000 PNGs of 64x64 (1.2 GB decoded).

  python benchmarks/soak_memory.py                 # 100,000 images, about 3 GB of disk in a temp dir
  python benchmarks/soak_memory.py --images 20000

Builds the folder, then runs each phase in a fresh process with its own cache: `first` (decode and
write the cache), `again` (the cached arrays, memory-mapped, before any is read) and `prepared`
(PreparedData on the CPU with the default data config: stratified 10% validation split, dataset
normalisation). Each process resets its peak RSS (VmHWM) after its imports, so `growth_mb` is the
phase's own. Appends one JSON line to benchmarks/results/soak_memory.jsonl. tests/test_memory.py
runs the same at CI size. Linux only (/proc).
"""
import argparse
import datetime
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHILD = r"""
import gc, json, sys, time
step, spec = sys.argv[1:3]
import numpy as np, torch
from cifarlab.schema import DataConfig
from cifarlab.data.loader import PreparedData
from cifarlab.data.sources import load_dataset

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
base, start = status("VmRSS:"), time.perf_counter()
if step == "prepared":
    data = PreparedData(DataConfig(dataset=spec), torch.device("cpu"))
    n = len(data.train) + len(data.val)
else:
    ds = load_dataset(spec)
    n = len(ds.train_y)
print(json.dumps({"images": n, "seconds": round(time.perf_counter() - start, 2), "baseline_mb": round(base / 2**20, 1),
                  "growth_mb": round((status("VmHWM:") - base) / 2**20, 1)}))
"""

p = argparse.ArgumentParser()
p.add_argument("--images", type=int, default=100_000)
p.add_argument("--size", type=int, default=64)
p.add_argument("--classes", type=int, default=200)
a = p.parse_args()

work = Path(tempfile.mkdtemp(prefix="cifarlab-soak-"))
try:
    folder, cache = work / "folder", work / "cache"
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    pool = []  # 256 distinct encodings: encoding, not writing, would dominate the build
    for _ in range(256):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (a.size, a.size, 3), dtype=np.uint8)).save(buf, "PNG", compress_level=1)
        pool.append(buf.getvalue())
    for c in range(a.classes):
        (folder / f"class{c:03d}").mkdir(parents=True)
    for i in range(a.images):
        (folder / f"class{i % a.classes:03d}" / f"{i:06d}.png").write_bytes(pool[i % len(pool)])
    print(f"built {a.images} images in {time.perf_counter() - t:.1f} s", flush=True)

    env = dict(os.environ, CIFARLAB_CACHE=str(cache), PYTHONPATH=str(ROOT / "src"))
    phases = {}
    for step in ("first", "again", "prepared"):
        out = subprocess.run([sys.executable, "-c", CHILD, step, f"folder:{folder}"], env=env,
                             capture_output=True, text=True, check=True).stdout
        phases[step] = json.loads(out.strip().splitlines()[-1])
        print(step, phases[step], flush=True)
    cached_mb = sum(f.stat().st_size for f in cache.rglob("*.npy")) / 2**20
finally:
    shutil.rmtree(work, ignore_errors=True)

import torch  # noqa: E402  (only for its version, after the measured processes)

cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
mem = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")) / 2**20
code = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True).stdout
result = {"date": datetime.date.today().isoformat(), "code": code.strip() or "unknown",
          "machine": f"{cpu} x{os.cpu_count()} ({platform.machine()}), {mem:.0f} GiB",
          "torch": torch.__version__, "numpy": np.__version__, "images": a.images, "size": a.size,
          "dataset_mb": round(a.images * 3 * a.size * a.size / 2**20, 1), "cache_mb": round(cached_mb, 1), "phases": phases}
print(json.dumps(result))
dest = ROOT / "benchmarks/results/soak_memory.jsonl"
dest.parent.mkdir(parents=True, exist_ok=True)
with open(dest, "a") as f:
    f.write(json.dumps(result) + "\n")
