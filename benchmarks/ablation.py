#!/usr/bin/env python3
"""Ablation of the fast training options: a recipe with each option off (the recipe as it is) and on,
every run under the same training-time budget, K seeds each (`cifarlab repeat`), then Welch's t-test
of each "on" against "off" (`cifarlab compare`). Writes a Markdown table (mean ± std, n, verdict).

  python benchmarks/ablation.py --recipe speedrun-cpu --data folder:PATH/train.tar.gz \\
      --minutes 10 --seeds 5 [--only ema,tta2] [--set train.epochs=20 ...] [--out docs/ablation.md]

Long: (options + 1) x seeds runs of `--minutes` each. At toy size (the bundled sample):
  python benchmarks/ablation.py --recipe quickstart --data sample --minutes 1 --seeds 2 \\
      --set train.epochs=1 --set data.train_limit=300 --set data.val_size=100 --out /tmp/ablation.md
"""
import argparse
import datetime
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's cifarlab, not an installed one

from cifarlab.studies.repeats import compare, repeat  # noqa: E402

# option -> the keys that turn it on (off = the recipe's own values)
OPTIONS = {
    "no_decay_norm_bias": {"optimizer.no_decay_norm_and_bias": True},
    "norm_bias_lr_x64": {"optimizer.norm_bias_lr_mult": 64.0},
    "muon": {"optimizer.name": "muon"},
    "ema": {"train.ema": {"decay": 0.99}},
    "alternate_flip": {"data.augment.flip": "alternate"},
    "reflect_crop": {"data.augment.crop_mode": "reflect"},
    "tta1": {"train.tta_level": 1},
    "tta2": {"train.tta_level": 2},
    "freeze_whiten_bias": {"model.options.freeze_whiten_bias_after": 3},  # speedrun_net only
    "fit_time_limit": {"schedule.fit_time_limit": True},
    "mixup": {"data.mix.mixup_alpha": 0.2},
    "cutmix": {"data.mix.cutmix_alpha": 1.0},
}

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--recipe", default="speedrun-cpu")
p.add_argument("--data", default=None, help="dataset spec (default: the recipe's)")
p.add_argument("--minutes", type=float, required=True, help="training-time budget of every run")
p.add_argument("--seeds", type=int, default=5)
p.add_argument("--only", default="", help="comma-separated options (default: all): " + ", ".join(OPTIONS))
p.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run")
p.add_argument("--jobs", type=int, default=1)
p.add_argument("--out", type=Path, default=ROOT / "docs" / "ablation.md")
a = p.parse_args()

chosen = [o for o in a.only.split(",") if o] or list(OPTIONS)
unknown = [o for o in chosen if o not in OPTIONS]
if unknown:
    sys.exit(f"ablation.py: unknown option(s) {', '.join(unknown)}: choose from {', '.join(OPTIONS)}")
common = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in a.set)}
common["train.time_limit_minutes"] = a.minutes  # the same budget for every run
if a.data:
    common["data.dataset"] = a.data
work = Path(tempfile.mkdtemp(prefix="ablation-"))
quiet = lambda line: None  # noqa: E731


def run(name: str, extra: dict) -> dict:
    print(f"{name}: {a.seeds} seeds ...", flush=True)
    return repeat(a.recipe, a.seeds, {**common, **extra}, out=work / name, jobs=a.jobs, log=quiet)


def pm(values: list[float]) -> str:
    if not values:
        return "n/a"
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return f"{mean:.2%} ± {std:.2%}"


off = run("off", {})
split = "test" if off["test_accuracy"] else "val"
rows = [f"| off (recipe as is) | {pm(off[f'{split}_accuracy'])} | {len(off[f'{split}_accuracy'])} | | |"]
for option in chosen:
    on = run(option, OPTIONS[option])
    test = compare(off, on, log=quiet)["tests"].get(split)
    if test is None:
        verdict, diff = "too few finished runs", ""
    else:
        pval = "n/a" if test["p_value"] is None else f"{test['p_value']:.3g}"
        verdict = f"{'different' if test['significant'] else 'no significant difference'} (p = {pval})"
        diff = f"{test['difference']:+.2%}"
    rows.append(f"| {option} | {pm(on[f'{split}_accuracy'])} | {len(on[f'{split}_accuracy'])} | {diff} | {verdict} |")

keys = ", ".join(f"`{k}={v}`" for k, v in common.items())
text = (f"# Ablation of the fast training options\n\n"
        f"Recipe `{a.recipe}`, {a.seeds} seeds per row, every run limited to {a.minutes:g} minutes of training "
        f"({keys}); {split} accuracy; Welch's t-test of each option against `off` at alpha 0.05. "
        f"Measured {datetime.date.today().isoformat()} by `benchmarks/ablation.py`; runs in {work}.\n\n"
        f"| option | {split} accuracy (mean ± std) | n | difference | Welch's t-test |\n|---|---|---|---|---|\n"
        + "\n".join(rows) + "\n")
a.out.parent.mkdir(parents=True, exist_ok=True)
a.out.write_text(text)
print(text)
print(f"wrote {a.out}")
