"""Recipe sweep for the skill benchmark, through the pipeline: which training settings make TrajGRU beat
optical flow?

Each named setting below is one :mod:`bench_skill` run (``nowcast synth`` -> ``ingest`` -> ``train`` ->
``evaluate``), its TrainConfig overrides handed to ``nowcast train --config``: every number comes from
``nowcast train``'s own step (:class:`trajgru.step.TrainStep`), validation and checkpoint choice. The
archive, the store and the baselines' scores are shared by all settings (made once in ``--workdir``).

    python benchmarks/skill_sweep.py --workdir sweep --settings trajgru_2k,convgru_2k --steps 500
    python benchmarks/skill_sweep.py --workdir sweep --gpu            # every setting, on one GPU

Writes ``OUT/<setting>/skill[_gpu].json`` (bench_skill's results) and prints one table of the test
scores (CSI >= 5 mm/h, B-MSE) with the baselines' rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_skill  # noqa: E402

#: setting -> (cell, TrainConfig overrides on top of the tiny recipe)
SETTINGS: dict[str, tuple[str, dict]] = {
    "trajgru_2k": ("trajgru", dict(steps=2000)),
    "trajgru_noaug_2k": ("trajgru", dict(steps=2000, augment=False)),
    "trajgru_lr3e-3_2k": ("trajgru", dict(steps=2000, lr=3e-3)),
    "trajgru_step_lr_2k": ("trajgru", dict(steps=2000, lr_schedule="step", lr_decay_every=500)),
    "convgru_2k": ("convgru", dict(steps=2000)),
    "convlstm_2k": ("convlstm", dict(steps=2000)),
    # what `nowcast demo` can afford on 2 CPU cores (its tiny-demo recipe, a little longer)
    "demo_600": ("trajgru", dict(recipe="tiny-demo", steps=600)),
}


def run_setting(name: str, args: argparse.Namespace) -> Path:
    """One setting through bench_skill -> the folder of its results."""
    cell, overrides = SETTINGS[name]
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    config = work / f"{name}.yaml"
    config.write_text(yaml.safe_dump(overrides))
    out = args.out / name
    argv = ["--workdir", str(work), "--out", str(out), "--cells", cell, "--config", str(config)]
    argv += ["--tag", name, "--reuse-baselines", "--days", str(args.days), "--size", str(args.size)]
    argv += ["--seed", str(args.seed)]
    if args.steps:
        argv += ["--steps", str(args.steps)]
    if args.gpu:
        argv.append("--gpu")
    bench_skill.main(argv)
    return out


def table(out_dirs: dict[str, Path], gpu: bool) -> str:
    """Test CSI >= 5 mm/h and B-MSE per setting, under the baselines' rows."""
    rows = ["| setting | cell | overrides | test CSI ≥5 | test B-MSE |", "|---|---|---|---|---|"]
    stem = "skill_gpu" if gpu else "skill"
    baselines_done = False
    for name, out in out_dirs.items():
        results = json.loads((out / f"{stem}.json").read_text())
        for label, row in results["rows"].items():
            if label in bench_skill.BASELINES and not baselines_done:
                rows.insert(2, f"| {label} | – | – | {row['csi']['5']:.3f} | {row['b_mse']:.1f} |")
            elif label not in bench_skill.BASELINES:
                cell, overrides = SETTINGS[name]
                spelled = ", ".join(f"{k}={v}" for k, v in overrides.items())
                rows.append(f"| {name} | {cell} | {spelled} | {row['csi']['5']:.3f} | {row['b_mse']:.1f} |")
        baselines_done = True
    return "\n".join(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("skill-sweep"), help="archive, store, runs, MLflow")
    p.add_argument("--out", type=Path, default=None, help="results (default WORKDIR/results)")
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {', '.join(SETTINGS)}")
    p.add_argument("--steps", type=int, default=None, help="steps per model instead of each setting's")
    p.add_argument("--days", type=int, default=bench_skill.ARCHIVE["days"])
    p.add_argument("--size", type=int, default=bench_skill.ARCHIVE["size"])
    p.add_argument("--seed", type=int, default=bench_skill.ARCHIVE["seed"])
    p.add_argument("--gpu", action="store_true", help="train and evaluate on one GPU (bench_skill --gpu)")
    args = p.parse_args(argv)
    args.out = (args.out or args.workdir / "results").resolve()
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown setting(s) {unknown}; choose from {', '.join(SETTINGS)}")
    out_dirs = {name: run_setting(name, args) for name in names}
    print(table(out_dirs, args.gpu))


if __name__ == "__main__":
    main()
