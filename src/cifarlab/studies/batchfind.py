"""The batch-size finder (as Lightning's BatchSizeFinder, mode "binsearch"): the largest batch whose
training step fits the device's memory. Double from a small batch until a step does not fit, then
binary-search between the last that fitted and the first that did not.

"Fits": on CUDA, a step that raises no torch.cuda.OutOfMemoryError (and stays under --max-memory if
given). On CPU nothing raises before the machine swaps or the kernel kills us, so a memory budget
decides: --max-memory, else the RAM this process could still take (its resident size plus
MemAvailable from /proc/meminfo), less 10% headroom. Each step's peak resident size is measured
with the kernel's high-water mark (VmHWM, reset before each step through /proc/self/clear_refs).
The batch never exceeds the training split (a larger one is the whole split anyway).
"""
from __future__ import annotations

import gc
import json
import re
import resource
import tempfile
from pathlib import Path

import torch

from cifarlab.errors import UserError
from cifarlab.fileio import atomic_write_text
from cifarlab.schema import ExperimentConfig

UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
         "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_bytes(text: str | int | float | None) -> int | None:
    """'1.5GiB', '800MB', '4g', 123456 -> bytes."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in UNITS:
        raise UserError(f"--max-memory takes a size such as 2GiB, 800MB or 1500000000, got '{text}'")
    return int(float(m.group(1)) * UNITS[m.group(2).lower()])


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _trim() -> None:
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class _CpuMeter:
    """Peak resident size of this process during a block: VmHWM after resetting it (Linux >= 4.0);
    elsewhere ru_maxrss, which never goes down (so it can only under-report what fits)."""

    def __init__(self):
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.resets = _status_kib("VmHWM") is not None
        except OSError:
            self.resets = False

    def start(self) -> None:
        gc.collect()
        _trim()  # hand the pages a larger probe freed back to the kernel, or they would count here
        if self.resets:
            Path("/proc/self/clear_refs").write_text("5")

    def peak(self) -> int:
        if self.resets:
            return _status_kib("VmHWM") or 0
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def find_batch_size(cfg: ExperimentConfig, max_memory: str | int | None = None, start: int = 2,
                    max_trials: int = 25, out: Path | None = None, log=print) -> dict:
    """The largest `train.batch_size` whose training step fits in memory. Returns {"batch_size", "budget_bytes",
    "peak_bytes", "limited_by", "trials": [{"batch_size", "fits", "peak_bytes"}], ...}; with `out`, also
    batch_size.json there."""
    from cifarlab.train.rundir import RunDir
    from cifarlab.train.trainer import Trainer

    if start < 1:
        raise UserError(f"the first batch size to try must be at least 1 (got {start})")
    budget = parse_bytes(max_memory)
    with tempfile.TemporaryDirectory(prefix="cifarlab-bsfind-") as tmp:
        tr = Trainer(cfg, RunDir(tmp), log=lambda _line: None)  # the model, data and step a run would use
        cuda = tr.device.type == "cuda"
        meter = None if cuda else _CpuMeter()
        if budget is None:
            if cuda:
                budget = torch.cuda.get_device_properties(tr.device).total_memory
            else:
                avail = _available()
                if avail is None:
                    raise UserError("cannot read the available memory (/proc/meminfo): give --max-memory")
                budget = int(0.9 * (avail + (_status_kib("VmRSS") or 0)))
        cap = len(tr.data.train)
        state = {k: v.clone() for k, v in tr.model.state_dict().items()}
        order = torch.Generator().manual_seed(cfg.train.seed)

        def probe(bs: int) -> dict:
            xb, yb = next(iter(tr.data.train_batches(bs, order)))
            peak, fits = 0, True
            try:
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(tr.device)
                else:
                    meter.start()
                loss, logits = tr.train_step(xb, yb)
                del loss, logits
                if cuda:
                    torch.cuda.synchronize(tr.device)
                    peak = torch.cuda.max_memory_allocated(tr.device)
                else:
                    peak = meter.peak()
                fits = peak <= budget
            except (torch.cuda.OutOfMemoryError, MemoryError):
                fits = False
            except RuntimeError as err:  # some backends report OOM as a plain RuntimeError
                if "out of memory" not in str(err).lower():
                    raise
                fits = False
            finally:
                del xb, yb
                tr.optimizer.zero_grad(set_to_none=True)
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
            tr.model.load_state_dict(state)  # every probe steps the same weights
            row = {"batch_size": bs, "fits": fits, "peak_bytes": peak}
            log(f"batch {bs}: {'fits' if fits else 'does not fit'}"
                + (f" (peak {peak / 2**20:.0f} MiB of {budget / 2**20:.0f} MiB)" if peak else " (out of memory)"))
            return row

        trials: list[dict] = []
        good, bad, bs = 0, None, min(start, cap)
        while len(trials) < max_trials:  # doubling
            trials.append(probe(bs))
            if not trials[-1]["fits"]:
                bad = bs
                break
            good = bs
            if bs >= cap:
                break
            bs = min(2 * bs, cap)
        while bad is not None and good and bad - good > 1 and len(trials) < max_trials:  # binary search
            mid = (good + bad) // 2
            trials.append(probe(mid))
            good, bad = (mid, bad) if trials[-1]["fits"] else (good, mid)
    if good == 0:
        raise UserError(f"even a batch of {min(start, cap)} does not fit in {budget / 2**20:.0f} MiB: "
                        "raise --max-memory or choose a smaller model")
    peak = max(t["peak_bytes"] for t in trials if t["batch_size"] == good)
    result = {"name": cfg.name, "model": cfg.model.name, "device": str(tr.device), "batch_size": good,
              "budget_bytes": budget, "peak_bytes": peak, "limited_by": "memory" if bad is not None else "dataset",
              "train_images": cap, "trials": trials}
    log(f"find-batch-size: largest batch that fits: {good} ({'memory' if bad is not None else 'the training split'} "
        f"limits it; peak {peak / 2**20:.0f} MiB of {budget / 2**20:.0f} MiB on {tr.device}); "
        f"use --batch-size {good} (or a power of two below it)")
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out) / "batch_size.json", json.dumps(result, indent=2) + "\n")
    return result
