"""Soak test: kill -9 a training run (and a sweep) many times at random moments, resume each time,
and check the end result equals an uninterrupted run (the CI test does this 3 times; this does it N).

    python benchmarks/soak_kill.py --kills 20 --sweep-kills 5

Appends one JSON line per part to benchmarks/results/soak_kill.jsonl; summary in docs/reliability.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
import yaml

from cifarlab.config import load_config
from cifarlab.train.checkpoint import load_checkpoint
from cifarlab.train.rundir import read_metrics

RESULTS = Path(__file__).parent / "results" / "soak_kill.jsonl"
TRAIN = {"train.epochs": 30, "train.threads": 1, "data.train_limit": 2000, "data.val_size": 500}


def cifarlab(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cifarlab", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def epochs_done(run: Path) -> int:
    try:
        return len(read_metrics(run / "metrics.csv"))
    except (OSError, ValueError, KeyError):
        return 0


def comparable(run: Path):
    rows = [{k: v for k, v in r.items() if "second" not in k} for r in read_metrics(run / "metrics.csv")]
    return rows, load_checkpoint(run / "last.pt")["state_dict"], load_checkpoint(run / "best.pt")["epoch"]


def soak_training(work: Path, kills: int, rng: random.Random) -> dict:
    cfg = work / "train.yaml"
    cfg.write_text(load_config(recipe="quickstart", overrides=TRAIN).to_yaml())
    t0 = time.time()
    proc = cifarlab("train", "--config", cfg, "--out", work / "whole")
    assert proc.wait() == 0, proc.stderr.read()
    whole_seconds = time.time() - t0

    run, landed, during_write, damaged = work / "cut", 0, 0, 0
    args = ["train", "--config", cfg, "--out", run]
    while landed < kills:
        proc = cifarlab(*args)
        args = ["train", "--resume", run]
        aim_at_write = rng.random() < 0.5  # half the kills wait for a checkpoint being written
        deadline = time.time() + rng.uniform(3.0, 3.0 + whole_seconds / 8)  # ~3 s is the start-up
        while proc.poll() is None and time.time() < deadline:
            if aim_at_write and list(run.glob(".*.tmp")):
                break
            time.sleep(0.0005 if aim_at_write else 0.05)
        if proc.poll() is not None:  # the run finished before this kill: start over on a fresh copy
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        landed += 1
        during_write += bool(list(run.glob(".*.tmp")))
        for f in run.glob("*.pt"):
            try:
                load_checkpoint(f)
            except Exception:
                damaged += 1
    if not (run / "summary.json").exists():  # the last kill may land after the last epoch, before the summary
        proc = cifarlab("train", "--resume", run)
        assert proc.wait() == 0, proc.stderr.read()
    a, b = comparable(work / "whole"), comparable(run)
    same = a[0] == b[0] and a[2] == b[2] and all(torch.equal(a[1][k], b[1][k]) for k in a[1])
    return {"part": "training", "kills": landed, "kills_during_a_checkpoint_write": during_write,
            "unreadable_checkpoints_after_a_kill": damaged, "final_metrics_and_weights_identical": same,
            "uninterrupted_seconds": round(whole_seconds, 1), "epochs": TRAIN["train.epochs"]}


def soak_sweep(work: Path, kills: int, rng: random.Random) -> dict:
    points = [0.005 * (i + 1) for i in range(12)]
    study = work / "s.yaml"
    study.write_text(yaml.safe_dump({"name": "soak", "base": "quickstart", "method": "grid",
                                     "set": {**TRAIN, "train.epochs": 3, "data.train_limit": 600},
                                     "space": {"optimizer.lr": points}}))
    out, landed = work / "study", 0
    while True:
        proc = cifarlab("sweep", "--config", study, "--out", out, "--jobs", 2, "--heartbeat", 1)
        if landed < kills:
            time.sleep(rng.uniform(4.0, 10.0))
            if proc.poll() is None:
                for pid in [*_children(proc.pid), proc.pid]:  # the whole sweep: its worker processes too
                    os.kill(pid, signal.SIGKILL)
                proc.wait()
                landed += 1
                continue
        assert proc.wait() == 0, proc.stderr.read()
        break
    trials = optuna.load_study(study_name="soak", storage=f"sqlite:///{out / 'study.db'}").get_trials()
    done = sorted(t.params["optimizer.lr"] for t in trials if t.state.name == "COMPLETE")
    states = [t.state.name for t in trials]
    return {"part": "sweep", "kills": landed, "points": len(points), "complete_once_each": done == points,
            "failed_then_retried": states.count("FAIL"), "left_running": states.count("RUNNING")}


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--sweep-kills", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    os.environ.setdefault("CIFARLAB_CACHE", tempfile.mkdtemp(prefix="soak-cache-"))
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores", "torch": torch.__version__, "seed": args.seed}
    RESULTS.parent.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for part in ([soak_training(Path(tmp), args.kills, rng)] if args.kills else []) + \
                    ([soak_sweep(Path(tmp), args.sweep_kills, rng)] if args.sweep_kills else []):
            line = {**meta, **part}
            print(json.dumps(line))
            with open(RESULTS, "a") as f:
                f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
