#!/usr/bin/env python3
"""Ablation of the fast training options: a recipe as it is and with each option toggled (turned off
where the recipe has it on, added where it has it off), every run under the same training-time budget,
K seeds each (`cifarlab repeat`), then Welch's t-test of each row against the recipe (`cifarlab compare`).
Writes a Markdown table (mean ± std, n, difference, verdict).

  python benchmarks/ablation.py --recipe speedrun-cpu --data folder:PATH/train.tar.gz \\
      --minutes 10 --seeds 5 [--only ema,tta_shifts] [--set train.epochs=20 ...] [--out docs/ablation.md]

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

from cifarlab.config import get_key, load_config  # noqa: E402
from cifarlab.studies.repeats import compare, repeat  # noqa: E402

# option -> (keys that turn it on, keys that turn it off). A recipe that has an option on is ablated by
# turning it off ("without"); one that has it off gets it added ("with"). The baseline is the recipe as is.
OPTIONS = {
    "no_decay_norm_bias": ({"optimizer.no_decay_norm_and_bias": True}, {"optimizer.no_decay_norm_and_bias": False}),
    "norm_bias_lr_x64": ({"optimizer.norm_bias_lr_mult": 64.0}, {"optimizer.norm_bias_lr_mult": 1.0}),
    "muon": ({"optimizer.name": "muon"}, {"optimizer.name": "sgd"}),
    "muon_fixed_norm": ({"optimizer.muon_fixed_norm": True}, {"optimizer.muon_fixed_norm": False}),
    "fast_whiten_bias": ({"model.options.whiten_bias_as_norm_bias": True},
                         {"model.options.whiten_bias_as_norm_bias": False}),
    "fixed_norm_scales": ({"model.options.train_norm_weight": False}, {"model.options.train_norm_weight": True}),
    "ema": ({"train.ema": {"decay": 0.99}}, {"train.ema": None}),
    "alternate_flip": ({"data.augment.flip": "alternate"}, {"data.augment.flip": True}),
    "reflect_crop": ({"data.augment.crop_mode": "reflect"}, {"data.augment.crop_mode": "zeros"}),
    "tta_flip": ({"train.tta_level": 1}, {"train.tta_level": 0}),
    "tta_shifts": ({"train.tta_level": 2}, {"train.tta_level": 1}),
    "freeze_whiten_bias": ({"model.options.freeze_whiten_bias_after": 3}, {"model.options.freeze_whiten_bias_after": None}),
    "triangle_schedule": ({"schedule.name": "triangle"}, {"schedule.name": "onecycle"}),
    "label_smoothing": ({"train.label_smoothing": 0.2}, {"train.label_smoothing": 0.0}),
    "mixup": ({"data.mix.mixup_alpha": 0.2}, {"data.mix.mixup_alpha": 0.0}),
    "cutmix": ({"data.mix.cutmix_alpha": 1.0}, {"data.mix.cutmix_alpha": 0.0}),
}


def is_on(cfg: dict, keys: dict) -> bool:
    """Whether the resolved recipe already has every key of an option's 'on' setting (EMA: any EMA)."""
    return all(get_key(cfg, k) is not None if isinstance(v, dict) else get_key(cfg, k) == v for k, v in keys.items())


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


resolved = load_config(a.recipe, overrides=common).to_dict()
base = run("recipe", {})
split = "test" if base["test_accuracy"] else "val"
rows = [f"| the recipe as it is | {pm(base[f'{split}_accuracy'])} | {len(base[f'{split}_accuracy'])} | | |"]
for option in chosen:
    on_keys, off_keys = OPTIONS[option]
    label = f"without {option}" if is_on(resolved, on_keys) else f"with {option}"
    arm = run(label.replace(" ", "-"), off_keys if label.startswith("without") else on_keys)
    test = compare(base, arm, log=quiet)["tests"].get(split)
    if test is None:
        verdict, diff = "too few finished runs", ""
    else:
        pval = "n/a" if test["p_value"] is None else f"{test['p_value']:.3g}"
        verdict = f"{'different' if test['significant'] else 'no significant difference'} (p = {pval})"
        diff = f"{test['difference']:+.2%}"
    rows.append(f"| {label} | {pm(arm[f'{split}_accuracy'])} | {len(arm[f'{split}_accuracy'])} | {diff} | {verdict} |")

keys = ", ".join(f"`{k}={v}`" for k, v in common.items())
text = (f"# Ablation of the fast training options\n\n"
        f"Recipe `{a.recipe}`, {a.seeds} seeds per row, every run limited to {a.minutes:g} minutes of training "
        f"({keys}); {split} accuracy; Welch's t-test of each row against the recipe as it is, at alpha 0.05. "
        f"Measured {datetime.date.today().isoformat()} by `benchmarks/ablation.py`; runs in {work}.\n\n"
        f"| option | {split} accuracy (mean ± std) | n | difference | Welch's t-test |\n|---|---|---|---|---|\n"
        + "\n".join(rows) + "\n")
a.out.parent.mkdir(parents=True, exist_ok=True)
a.out.write_text(text)
print(text)
print(f"wrote {a.out}")
