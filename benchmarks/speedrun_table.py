#!/usr/bin/env python3
"""The full-budget ablation table of a recipe, from the runs benchmarks/speedrun.py logged, not typed by hand:

  python benchmarks/speedrun_table.py --recipe speedrun-cpu --since 2026-12-06 --precision bf16 --cpu-flag avx512_bf16
  python benchmarks/speedrun_table.py --recipe speedrun-cpu --from-line 71   # one session's machine only

Takes the rows of benchmarks/results/speedrun.jsonl for that recipe, precision and CPU (native kernels only:
runs with their kernels limited, `isa_limits`, and runs marked `excluded` are left out), groups them by their
overrides other than the seed, and tests each group against the recipe's own runs (overrides: the seed only)
with Welch's t-test as `cifarlab compare` runs it. Prints a markdown table; --json prints the rows.
"""
import argparse
import json
from pathlib import Path

from cifarlab.studies.stats import summarize, welch

p = argparse.ArgumentParser()
p.add_argument("--recipe", default="speedrun-cpu")
p.add_argument("--since", default="", help="first date (YYYY-MM-DD) to take rows from: the recipe as it is now")
p.add_argument("--precision", default="bf16", choices=["bf16", "fp32", "fp16"])
p.add_argument("--from-line", type=int, default=1,
               help="first line of the results file to read (1-based): runs on one machine, when the flags cannot tell two apart")
p.add_argument("--cpu-flag", default="", help="only rows whose cpu_flags name this flag (e.g. avx512_bf16)")
p.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "speedrun.jsonl")
p.add_argument("--json", action="store_true")
a = p.parse_args()


def seed_of(run: dict) -> str:
    return next((o.split("=", 1)[1] for o in run["overrides"] if o.startswith("train.seed=")), "?")


groups: dict[str, list[dict]] = {}
for line in a.results.read_text().splitlines()[a.from_line - 1:]:
    run = json.loads(line)
    wrong_cpu = a.cpu_flag and a.cpu_flag not in run.get("cpu_flags", "").split()
    if (run["recipe"] != a.recipe or run["date"] < a.since or run.get("precision") != a.precision or wrong_cpu
            or run.get("isa_limits") or run.get("excluded")):
        continue
    change = ", ".join(o for o in run["overrides"] if not o.startswith("train.seed="))
    groups.setdefault(change, []).append(run)
if "" not in groups:
    raise SystemExit(f"speedrun_table.py: no run of the recipe '{a.recipe}' itself matches: nothing to compare against")

base = [r["best_val_accuracy"] for r in groups[""]]
rows = []
for change, runs in sorted(groups.items(), key=lambda kv: (kv[0] != "", kv[0])):
    acc = [r["best_val_accuracy"] for r in runs]
    row = {"change": change or "(the recipe as it is)", **summarize(acc),
           "per_seed": {seed_of(r): r["best_val_accuracy"] for r in runs},
           "epochs": sorted({len(r["curve"]) for r in runs}),
           "images_per_second": [round(min(r["train_images_per_second"] for r in runs)),
                                 round(max(r["train_images_per_second"] for r in runs))]}
    if change:
        row["difference"] = row["mean"] - summarize(base)["mean"]
        row["welch"] = welch(base, acc) if len(acc) > 1 else None
    rows.append(row)

if a.json:
    print(json.dumps(rows, indent=1))
    raise SystemExit
print("| change | val accuracy (mean ± std) | n | per seed | epochs | images/s | difference | verdict |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    spread = f"{r['mean']:.2%}" + (f" ± {r['std']:.2%}" if r["std"] is not None else "")
    seeds = ", ".join(f"{s}: {v:.2%}" for s, v in sorted(r["per_seed"].items()))
    epochs = "–".join(str(e) for e in (r["epochs"][0], r["epochs"][-1])) if len(r["epochs"]) > 1 else str(r["epochs"][0])
    ips = "–".join(f"{v:,}" for v in r["images_per_second"]) if len(set(r["images_per_second"])) > 1 else f"{r['images_per_second'][0]:,}"
    diff = f"{100 * r['difference']:+.2f}" if "difference" in r else ""
    w = r.get("welch")
    verdict = "" if "difference" not in r else "one seed: no test" if w is None else (
        f"**significant (p = {w['p_value']:.2g})**" if w["significant"] else f"no significant difference (p = {w['p_value']:.2g})")
    print(f"| {r['change']} | {spread} | {r['n']} | {seeds} | {epochs} | {ips} | {diff} | {verdict} |")
