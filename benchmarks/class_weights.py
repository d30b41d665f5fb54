#!/usr/bin/env python3
"""train.class_weights on an imbalanced slice of CIFAR-10: does weighting the loss help the rare classes?

Builds an image folder from the shared JPEG archive with `--common` images of each of the first five
classes and `--rare` of each of the last five, trains a recipe on it with and without
`train.class_weights: balanced` over `--seeds` seeds (the validation split is carved stratified, so it is
imbalanced too), and writes one JSON line per run: validation accuracy, balanced accuracy (the mean of
the per-class accuracies), macro F1, and the mean accuracy of the common and of the rare classes.

  python benchmarks/class_weights.py --archive ../shared/data/cifar10-jpeg/train.tar.gz \\
      --work /tmp/imbalanced --seeds 3 --epochs 30 --lrs 0.05,0.02 >> benchmarks/results/class_weights.jsonl
"""
import argparse
import datetime
import json
import platform
import re
import statistics
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's cifarlab, not an installed one

from cifarlab.config import load_config  # noqa: E402
from cifarlab.train.entry import train  # noqa: E402


def imbalanced_folder(archive: Path, dest: Path, common: int, rare: int) -> Path:
    """dest/<class>/<image>.jpg: the first `common` images of classes 0-4, the first `rare` of 5-9."""
    if dest.exists():
        return dest
    with tarfile.open(archive) as tar:
        classes = sorted({Path(m.name).parts[1] for m in tar.getmembers() if len(Path(m.name).parts) == 3})
        want = {c: (common if i < 5 else rare) for i, c in enumerate(classes)}
        taken = dict.fromkeys(classes, 0)
        for m in sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name):
            c = Path(m.name).parts[1]
            if taken[c] < want[c]:
                (dest / c).mkdir(parents=True, exist_ok=True)
                (dest / c / Path(m.name).name).write_bytes(tar.extractfile(m).read())
                taken[c] += 1
    return dest


def cpu_flags() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    found = set(re.findall(r"\b(avx2|avx512f|avx512_bf16|amx_bf16)\b", text))
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True, help="where the folder and the runs go")
    ap.add_argument("--common", type=int, default=2000)
    ap.add_argument("--rare", type=int, default=200)
    ap.add_argument("--recipe", default="quickstart")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--lrs", default="", help="comma-separated optimizer.lr values to try (default: the recipe's)")
    a = ap.parse_args()
    folder = imbalanced_folder(a.archive, a.work / "folder", a.common, a.rare)
    rows, lrs = [], [float(x) for x in a.lrs.split(",") if x] or [load_config(recipe=a.recipe).optimizer.lr]
    arms = [(lr, weights) for lr in lrs for weights in ("none", "balanced")]
    for seed in range(a.seeds):
        for lr, weights in arms:
            cfg = load_config(recipe=a.recipe, overrides={"data.dataset": f"folder:{folder}", "data.val_size": 0.2,
                                                          "train.epochs": a.epochs, "train.seed": seed, "optimizer.lr": lr,
                                                          "train.class_weights": weights})
            s = train(cfg, a.work / f"{weights}-lr{lr:g}-e{a.epochs}-s{seed}", log=lambda _l: None)
            per = s["val"]["per_class_accuracy"]
            row = {"date": datetime.date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}",
                   "cpu_flags": cpu_flags(), "recipe": a.recipe, "epochs": a.epochs, "common": a.common, "rare": a.rare,
                   "lr": lr, "class_weights": weights, "seed": seed, "val_accuracy": s["val"]["accuracy"],
                   "macro_f1": s["val"]["macro_f1"], "balanced_accuracy": statistics.fmean(per.values()),
                   "common_accuracy": statistics.fmean(list(per.values())[:5]),
                   "rare_accuracy": statistics.fmean(list(per.values())[5:]), "train_seconds": s["train_seconds"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    for lr, weights in arms:
        got = [r for r in rows if (r["lr"], r["class_weights"]) == (lr, weights)]
        print(f"# lr {lr:g}, {weights}: " + ", ".join(f"{k} {statistics.fmean(r[k] for r in got):.2%}"
                                         for k in ("val_accuracy", "balanced_accuracy", "macro_f1", "common_accuracy",
                                                   "rare_accuracy")),
              file=sys.stderr)


if __name__ == "__main__":
    main()
