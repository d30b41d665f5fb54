"""Peak memory of loading a dataset: decoded once straight into the cache, memory-mapped afterwards.

Each step runs in a fresh subprocess that resets its own peak RSS (VmHWM) after its imports, so the
figure is that step's growth alone. A control step holds the decoded data twice (read whole, then
copied, as a list of images followed by np.stack would) to show that the bound catches it. The peaks are printed
(pytest -s) and written to a JSON file; benchmarks/soak_memory.py runs the same at 100,000 images.
"""
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cifarlab

N, SIZE, CLASSES = 12_000, 64, 10
CHILD = r"""
import gc, json, sys, time
step, spec = sys.argv[1:3]
if step == "prepared":
    import torch
    from cifarlab.schema import DataConfig
    from cifarlab.data.loader import PreparedData
else:
    import numpy as np
    from cifarlab.data.sources import load_dataset

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS: the peak below is this step's own
base, start = status("VmRSS:"), time.perf_counter()
if step == "prepared":
    data = PreparedData(DataConfig(dataset=spec), torch.device("cpu"))
    n, mapped = len(data.train) + len(data.val), None
elif step == "twice":  # what the bounds must catch: the decoded data held twice
    x = np.load(load_dataset(spec).train_x.filename)
    y = x.copy()
    n, mapped = len(y), False
else:
    ds = load_dataset(spec)
    n, mapped = len(ds.train_y), isinstance(ds.train_x, np.memmap)
print(json.dumps({"step": step, "growth": status("VmHWM:") - base, "baseline": base, "images": n,
                  "mapped": mapped, "seconds": round(time.perf_counter() - start, 2)}))
"""


def can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def write_folder(root: Path) -> None:
    """N distinct files, but only 64 distinct PNG encodings: encoding is the slow part, not writing."""
    rng = np.random.default_rng(0)
    pool = []
    for _ in range(64):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(buf, "PNG", compress_level=1)
        pool.append(buf.getvalue())
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True)
    for i in range(N):
        (root / f"class{i % CLASSES}" / f"{i:06d}.png").write_bytes(pool[i % len(pool)])


def run_step(step: str, spec: str, cache: Path) -> dict:
    env = {"PATH": "/usr/bin:/bin", "CIFARLAB_CACHE": str(cache), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(cifarlab.__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", CHILD, step, spec], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # 12,000 images decoded in four child processes
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc (Linux)")
def test_peak_rss_of_first_and_cached_loads(tmp_path):
    if not can_reset_peak():
        pytest.skip("cannot reset the peak RSS (/proc/self/clear_refs is not writable here)")
    root, cache = tmp_path / "folder", tmp_path / "cache"
    write_folder(root)
    spec, nbytes = f"folder:{root}", N * 3 * SIZE * SIZE
    steps = {s: run_step(s, spec, cache) for s in ("first", "again", "prepared", "twice")}
    mb = {s: round(r["growth"] / 2**20, 1) for s, r in steps.items()}
    report = {"images": N, "dataset_mb": round(nbytes / 2**20, 1), "peak_growth_mb": mb,
              "seconds": {s: r["seconds"] for s, r in steps.items()}}
    (tmp_path / "memory_peaks.json").write_text(json.dumps(report))
    print("\npeak RSS growth:", json.dumps(report))

    assert all(r["images"] == N for r in steps.values())
    # first load: the decoded array exists once (the cache file being written) plus one image at a time
    assert steps["first"]["mapped"] and steps["first"]["growth"] < 1.5 * nbytes
    # later loads map the cache: nothing is read until it is used
    assert steps["again"]["mapped"] and steps["again"]["growth"] < 0.1 * nbytes
    # training tensors on the CPU: one copy of the selected rows, the map's pages are not made resident too
    assert steps["prepared"]["growth"] < 1.5 * nbytes
    # and the bound is meaningful: holding the decoded images twice goes over it
    assert steps["twice"]["growth"] > 1.5 * nbytes
