"""The skill benchmark: TrajGRU, ConvGRU and ConvLSTM against persistence and optical flow.

Everything goes through the real pipeline, one ``nowcast`` command per stage:

1. ``nowcast synth``  the fixed benchmark archive (kept when it already matches);
2. ``nowcast ingest`` the Zarr store (Dask; idempotent);
3. ``nowcast train``  each cell with the same recipe and the same number of steps (Ray Train, MLflow
   in ``WORKDIR/mlflow.db``); the run names are fixed, so an interrupted benchmark resumes;
4. ``nowcast evaluate`` each registered model (the checkpoint chosen on the validation split) and
   both baselines on the **test** split, HKO-7 fixed protocol.

Then it writes ``OUT/skill.json`` (every score, the settings, the machine and the minutes each stage
took), ``OUT/skill.md`` (the table) and ``OUT/skill_csi_vs_lead.png`` (CSI >= 5 mm/h against lead time,
every model on one plot). ``python benchmarks/update_readme.py`` copies the table into the README.

    python benchmarks/bench_skill.py                       # the README's benchmark (hours on 2 CPU cores)
    python benchmarks/bench_skill.py --steps 200 --days 12  # a quick look
    python benchmarks/bench_skill.py --gpu --workdir DIR --steps 2000  # one GPU: train --gpu --workers 1

With ``--gpu`` every model trains with ``nowcast train --gpu`` (one Ray Train worker per GPU, default 1:
bf16, the fast path and its CUDA-graph step) and is evaluated on the GPU; the results go to
``OUT/skill_gpu.*`` (the CPU results ``OUT/skill.*`` stay), with the GPU minutes of the training and
model-evaluation stages (``gpu_minutes``). ``--tag`` keeps the runs of one setting apart from another's
(a recipe sweep: ``benchmarks/skill_sweep.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The benchmark archive: ``nowcast synth --days 120 --size 96 --seed 7`` (70/15/15 days chronological).
ARCHIVE = dict(days=120, size=96, seed=7, start="2015-06-01")
CELLS = ("trajgru", "convgru", "convlstm")
BASELINES = ("persistence", "optical-flow")


def nowcast(args: list[str], log: Path, env: dict) -> float:
    """Run one ``nowcast`` command, its output appended to ``log``; returns wall seconds.

    Raises SystemExit with the log's tail when the command fails."""
    t0 = time.perf_counter()
    print(f"$ nowcast {' '.join(args)}", flush=True)
    with open(log, "a") as out:
        out.write(f"\n$ nowcast {' '.join(args)}\n")
        out.flush()
        proc = subprocess.run(
            [sys.executable, "-m", "cli", *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    if proc.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"`nowcast {args[0]}` failed (exit {proc.returncode}); last lines of {log}:\n{tail}")
    return time.perf_counter() - t0


def registered_version(tracking_uri: str, name: str, run_name: str) -> int:
    """The registry version of ``name`` that the run named ``run_name`` registered (the latest one)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    versions = [
        v
        for v in client.search_model_versions(f"name = '{name}'")
        if client.get_run(v.run_id).data.tags.get("nowcast.run_name") == run_name
    ]
    if not versions:
        raise SystemExit(f"no registered version of {name} comes from run {run_name}")
    return max(int(v.version) for v in versions)


def machine() -> dict:
    """Where the benchmark ran."""
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
    }
    try:
        model = [
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ]
        info["cpu"] = model[0] if model else info["cpu"]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def summary_row(record: dict) -> dict:
    """One evaluation JSON -> the numbers of the table (means over the lead times) and CSI >= 5 by lead."""
    import numpy as np

    scores = record["scores"]
    thresholds = [float(t) for t in scores["thresholds"]]
    csi = np.asarray(scores["csi"], dtype=float)  # (T, n_thr)
    hss = np.asarray(scores["hss"], dtype=float)
    return {
        "csi": {f"{t:g}": float(np.nanmean(csi[:, i])) for i, t in enumerate(thresholds)},
        "hss": {f"{t:g}": float(np.nanmean(hss[:, i])) for i, t in enumerate(thresholds)},
        "b_mse": float(np.nanmean(scores["b_mse"])),
        "b_mae": float(np.nanmean(scores["b_mae"])),
        "csi5_by_lead": [float(v) for v in csi[:, thresholds.index(5.0)]],
        "n_clips": int(record["n_clips"]),
        "interval_s": int(record["interval_s"]),
    }


def markdown_table(results: dict) -> str:
    """The README table: CSI at every threshold, HSS at 5 mm/h, B-MSE, B-MAE (means over 20 lead times)."""
    thresholds = list(next(iter(results["rows"].values()))["csi"])
    head = ["model", *[f"CSI ≥{t}" for t in thresholds], *[f"HSS ≥{t}" for t in thresholds], "B-MSE", "B-MAE"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def number(value, digits: int) -> str:
        return "–" if value is None else f"{value:.{digits}f}"  # None: undefined (no event at that threshold)

    for name, row in results["rows"].items():
        cells = [
            name,
            *[number(row["csi"][t], 3) for t in thresholds],
            *[number(row["hss"][t], 3) for t in thresholds],
            number(row["b_mse"], 1),
            number(row["b_mae"], 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """CSI >= 5 mm/h against lead time (minutes), one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, row in results["rows"].items():
        leads_min = [(k + 1) * row["interval_s"] / 60 for k in range(len(row["csi5_by_lead"]))]
        style = "--" if name in BASELINES else "-"
        ax.plot(leads_min, row["csi5_by_lead"], style, marker="o", markersize=3, label=name)
    ax.set_xlabel("lead time (minutes)")
    ax.set_ylabel("CSI at ≥ 5 mm/h")
    ax.set_title(
        f"Test split, {results['rows'][next(iter(results['rows']))]['n_clips']} clips "
        f"({results['archive']['days']} days of {results['archive']['size']} px, seed "
        f"{results['archive']['seed']})"
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("bench-skill"), help="archive, store, runs, MLflow")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="where the results go")
    p.add_argument("--days", type=int, default=ARCHIVE["days"])
    p.add_argument("--size", type=int, default=ARCHIVE["size"])
    p.add_argument("--seed", type=int, default=ARCHIVE["seed"])
    p.add_argument("--cells", default=",".join(CELLS))
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=None, help="training steps per model (default: the recipe's)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Ray Train workers per model (default: 1 with --gpu, else 2)",
    )
    p.add_argument(
        "--gpu", action="store_true", help="train and evaluate the models on GPUs (one per worker)"
    )
    p.add_argument("--tag", default=None, help="a name for this setting, part of the run and model names")
    p.add_argument(
        "--config", type=Path, default=None, help="YAML/JSON of training overrides for every model"
    )
    p.add_argument(
        "--reuse-baselines",
        action="store_true",
        help="keep the baselines' scores from WORKDIR/evaluations when they were made on this store",
    )
    args = p.parse_args(argv)
    if args.workers is None:
        args.workers = 1 if args.gpu else 2
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.gpu and not _cuda_available():
        raise SystemExit("--gpu: PyTorch sees no CUDA device here; run without --gpu to use the CPU")
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    log = work / "bench_skill.log"
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "MLFLOW_TRACKING_URI": tracking_uri,
    }
    archive, store = work / "archive", work / "store.zarr"
    minutes: dict[str, float] = {}

    synth_args = [
        "synth",
        str(archive),
        "--days",
        str(args.days),
        "--size",
        str(args.size),
        "--seed",
        str(args.seed),
        "--start",
        ARCHIVE["start"],
    ]
    if _archive_matches(archive, args):
        print(f"archive {archive} already matches; kept", flush=True)
    else:
        minutes["synth"] = nowcast(synth_args, log, env) / 60
    minutes["ingest"] = nowcast(["ingest", str(archive), str(store)], log, env) / 60

    results = {
        "archive": {"days": args.days, "size": args.size, "seed": args.seed, "start": ARCHIVE["start"]},
        "preset": args.preset,
        "steps": args.steps,
        "workers": args.workers,
        "gpu": args.gpu,
        "tag": args.tag,
        "machine": machine(),
        "minutes": minutes,
        "command": "python benchmarks/bench_skill.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rows": {},
    }

    def evaluate(label: str, uri: str) -> None:
        out_json = work / "evaluations" / f"{label.replace(' ', '-')}.json"
        if label in BASELINES and args.reuse_baselines and _scored_on(out_json, store):
            print(f"{label}: scores reused from {out_json}", flush=True)
        else:
            minutes[f"evaluate {label}"] = (
                nowcast(
                    [
                        "evaluate",
                        str(store),
                        "--model",
                        uri,
                        "--split",
                        "test",
                        "--batch-size",
                        "16",
                        "--out-json",
                        str(out_json),
                        *(["--device", "cpu" if label in BASELINES else "cuda"] if args.gpu else []),
                    ],
                    log,
                    env,
                )
                / 60
            )
        results["rows"][label] = summary_row(json.loads(out_json.read_text())) | {"model_uri": uri}
        write_results(results, args.out)  # after every row: an interrupted benchmark keeps what it measured

    for baseline in BASELINES:
        evaluate(baseline, baseline)
    steps_tag = f"{args.steps}" if args.steps else "recipe"
    setting = f"-{args.tag}" if args.tag else ""
    for cell in args.cells.split(","):
        run_name = (
            f"bench-{args.preset}-{cell}{setting}-{steps_tag}-seed{args.seed}-{args.days}d{args.size}px"
            f"{'-gpu' if args.gpu else ''}"
        )
        name = f"bench-{args.preset}-{cell}{setting}"
        train_args = [
            "train",
            str(store),
            "--preset",
            args.preset,
            "--cell",
            cell,
            "--workers",
            str(args.workers),
            "--run-name",
            run_name,
            "--storage-path",
            str(work / "ray_results"),
            "--register-as",
            name,
            "--experiment",
            "bench-skill",
        ]
        if args.steps:
            train_args += ["--steps", str(args.steps)]
        if args.gpu:
            train_args.append("--gpu")
        if args.config:
            train_args += ["--config", str(args.config.resolve())]
        minutes[f"train {cell}"] = nowcast(train_args, log, env) / 60
        evaluate(
            f"{args.preset} {cell}", f"models:/{name}/{registered_version(tracking_uri, name, run_name)}"
        )
    print(markdown_table(results))
    print(f"minutes: {results['minutes']}")
    if args.gpu:
        print(f"GPU minutes (training and model evaluation): {gpu_minutes(results['minutes']):.1f}")


def gpu_minutes(minutes: dict[str, float]) -> float:
    """Minutes of the stages that ran on the GPU with --gpu: training and the models' evaluation (the
    baselines are scored on the CPU)."""
    return sum(
        v
        for k, v in minutes.items()
        if k.startswith("train ") or (k.startswith("evaluate ") and k[len("evaluate ") :] not in BASELINES)
    )


def write_results(results: dict, out: Path) -> None:
    """skill.json, skill.md and the CSI-vs-lead plot from the rows so far (models first, then baselines);
    skill_gpu.* for a --gpu run, with its GPU minutes."""
    rows = results["rows"]
    ordered = {k: rows[k] for k in sorted(rows, key=lambda k: (k in BASELINES, k))}
    results = {**results, "minutes": {k: round(v, 2) for k, v in results["minutes"].items()}, "rows": ordered}
    stem = "skill"
    if results["gpu"]:
        stem = "skill_gpu"
        results["gpu_minutes"] = round(gpu_minutes(results["minutes"]), 2)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown_table(results) + "\n")
    plot(results, out / f"{stem}_csi_vs_lead.png")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _scored_on(evaluation_json: Path, store: Path) -> bool:
    """True when ``evaluation_json`` (of ``nowcast evaluate``) scored the test split of ``store`` as it is now
    (same path and the same number of frames)."""
    if not evaluation_json.is_file():
        return False
    sys.path.insert(0, str(REPO))
    from pipeline.store import Store

    scored = json.loads(evaluation_json.read_text())
    return (
        scored.get("split") == "test"
        and scored.get("store", {}).get("path") == str(store)
        and scored["store"].get("n_frames") == Store.open(store).describe().get("frames")
    )


def _archive_matches(archive: Path, args) -> bool:
    """True when ``archive`` was written by ``nowcast synth`` with these settings."""
    sys.path.insert(0, str(REPO))
    from pipeline.synth import SynthConfig, archive_matches

    return archive_matches(
        SynthConfig(
            out_dir=archive, start=ARCHIVE["start"], days=args.days, size_px=args.size, seed=args.seed
        )
    )


if __name__ == "__main__":
    main()
