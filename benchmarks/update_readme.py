"""Write the README's measured tables from the benchmarks' result files, so they cannot go stale.

Each table sits in the README between ``<!-- BEGIN name -->`` and ``<!-- END name -->``; this script
replaces what is between the markers with the table rendered from ``benchmarks/results/``. A block
whose result file is missing is left as it is.

    python benchmarks/update_readme.py            # rewrite README.md
    python benchmarks/update_readme.py --check    # exit 1 if README.md differs from the results
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_skill import markdown_table  # noqa: E402


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def skill_pipeline() -> str | None:
    """bench_skill.py's table, with what ran it and how long each stage took."""
    results = _load("skill.json")
    if results is None:
        return None
    m = results["machine"]
    hardware = m.get("gpu") or f"{m['cpu_cores']} CPU cores ({m['cpu']})"
    minutes = results["minutes"]
    train_min = sum(v for k, v in minutes.items() if k.startswith("train"))
    steps = results["steps"] or "the recipe's"
    return "\n".join([
        f"`{results['command'].strip()}` — {results['archive']['days']} days of {results['archive']['size']} px, "
        f"seed {results['archive']['seed']}; `{results['preset']}` preset and recipe, {steps} steps per model, "
        f"{results['workers']} Ray Train workers; {hardware}, torch {m['torch']}; "
        f"{train_min:.0f} min of training in all, {sum(minutes.values()):.0f} min end to end. "
        f"Test split, means over the 20 lead times:",
        "",
        markdown_table(results),
    ])


def skill_gpu() -> str | None:
    """The plain-loop GPU runs of skill_sweep.py (second run) against the baselines (first run)."""
    runs = _load("skill_sweep_h200_run2.json")
    base = _load("skill_sweep_h200_run1.json")
    if runs is None or base is None:
        return None
    rows = ["| run | cell | steps | augmentation | graph | best step | val CSI ≥5 | test CSI ≥5 | test CSI ≥10 | "
            "test B-MSE | test B-MAE |", "|" + "---|" * 11]
    b = base["baselines"]
    for which, label in (("persistence", "persistence"), ("optical_flow", "optical flow (DIS)")):
        v, t = b[f"{which}_valid"], b[f"{which}_test"]
        rows.append(f"| {label} | – | – | – | – | – | {v['csi']['5']:.3f} | {t['csi']['5']:.3f} | "
                    f"{t['csi']['10']:.3f} | {t['b_mse']:.1f} | {t['b_mae']:.1f} |")
    for name, r in runs.items():
        if name.startswith("_") or name == "baselines":
            continue
        t = r["test_best"]
        rows.append(f"| {name} | {r['recipe']['cell']} | {r['steps']} | {'yes' if r['recipe']['aug'] else 'no'} | "
                    f"{'yes' if r.get('graphed') else 'no'} | {r['best_step']} | {r['val_best']['csi']['5']:.3f} | "
                    f"{t['csi']['5']:.3f} | {t['csi']['10']:.3f} | {t['b_mse']:.1f} | {t['b_mae']:.1f} |")
    return "\n".join(rows)


BLOCKS = {"skill-pipeline": skill_pipeline, "skill-gpu": skill_gpu}


def render(text: str) -> str:
    """``text`` with every known block re-rendered from the results."""
    for name, fn in BLOCKS.items():
        body = fn()
        if body is None:
            continue
        pattern = re.compile(rf"(<!-- BEGIN {re.escape(name)} -->\n).*?(\n<!-- END {re.escape(name)} -->)", re.S)
        text = pattern.sub(lambda m, b=body: m.group(1) + b + m.group(2), text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--readme", type=Path, default=REPO / "README.md")
    p.add_argument("--check", action="store_true", help="only check that the README is up to date")
    args = p.parse_args(argv)
    old = args.readme.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print(f"{args.readme} is stale: run python benchmarks/update_readme.py")
            return 1
        return 0
    args.readme.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
