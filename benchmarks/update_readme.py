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

from bench_skill import markdown_table, plot  # noqa: E402
from bench_verify import markdown_table as verify_table  # noqa: E402

#: The GPU runs of the old skill_sweep.py loop shown in the full table and plot (TrajGRU and ConvGRU as
#: long as the deadline allowed, then the three cells at equal steps).
GPU_ROWS = ("trajgru_graph", "convgru_graph", "trajgru_2k", "convgru_2k", "convlstm_2k")
GPU_PLOT = RESULTS / "skill_gpu_csi_vs_lead.png"


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def skill_pipeline() -> str | None:
    """bench_skill.py's table (CPU run), with what ran it and how long each stage took."""
    results = _load("skill.json")
    return None if results is None else _pipeline_block(results)


def _pipeline_block(results: dict) -> str:
    """A bench_skill.py result: the command, the setting, the machine, the minutes, then the table."""
    m = results["machine"]
    hardware = m.get("gpu") or f"{m['cpu_cores']} CPU cores ({m['cpu']})"
    minutes = results["minutes"]
    train_min = sum(v for k, v in minutes.items() if k.startswith("train"))
    steps = results["steps"] or "the recipe's"
    kept = [
        stage
        for stage, key in (
            ("the archive", "synth"),
            *((f"the {b} scores", f"evaluate {b}") for b in ("persistence", "optical-flow")),
        )
        if key not in minutes
    ]
    reused = f" ({', '.join(kept)} kept from an earlier run of the same command)" if kept else ""
    gpu = f", {results['gpu_minutes']:.1f} GPU minutes" if results.get("gpu_minutes") is not None else ""
    return "\n".join(
        [
            f"`{results['command'].strip()}` — {results['archive']['days']} days of "
            f"{results['archive']['size']} px, seed {results['archive']['seed']}; "
            f"`{results['preset']}` preset and recipe, {steps} steps per model, "
            f"{results['workers']} Ray Train workers; {hardware}, torch {m['torch']}; "
            f"{train_min:.0f} min of training in all, {sum(minutes.values()):.0f} min for the "
            f"stages that ran{reused}{gpu}. Test split, means over the 20 lead times:",
            "",
            markdown_table(results),
        ]
    )


#: Above the GPU speed table while its bench.json predates trajgru.step.TrainStep.
STEP_RERUN_NOTE = (
    "**Needs a rerun through the pipeline's training step:** these timings are of the earlier "
    "`CapturedTrainStep` (the same captured graph, without the per-step loss check of "
    "`trajgru.step.TrainStep`, which `nowcast train` and `bench_trajgru.py` now run)."
)
#: Above every table of the old skill_sweep.py loop: kept until bench_skill.py --gpu regenerates them.
RERUN_NOTE = (
    "**Needs a rerun through `nowcast train`:** these GPU numbers come from the side training loop that "
    "`benchmarks/skill_sweep.py` had before every benchmark trained through the pipeline's step; "
    "`python benchmarks/bench_skill.py --gpu` regenerates them (`benchmarks/results/skill_gpu.json`)."
)


def _sweep_table(runs: dict, baselines: dict) -> str:
    """skill_sweep.py runs (one row each, the recipe spelled out) under the two baselines' rows."""
    rows = [
        "| run | cell | width (filters) | steps × batch | lr schedule | augmentation | CUDA graph | "
        "best step | val CSI ≥5 | test CSI ≥5 | test CSI ≥10 | test B-MSE | test B-MAE |",
        "|" + "---|" * 13,
    ]
    for which, label in (("persistence", "persistence"), ("optical_flow", "optical flow (DIS)")):
        v, t = baselines[f"{which}_valid"], baselines[f"{which}_test"]
        rows.append(
            f"| {label} |" + " – |" * 7 + f" {v['csi']['5']:.3f} | {t['csi']['5']:.3f} | "
            f"{t['csi']['10']:.3f} | {t['b_mse']:.1f} | {t['b_mae']:.1f} |"
        )
    for name, r in runs.items():
        if name.startswith("_") or name == "baselines":
            continue
        rec, t = r["recipe"], r["test_best"]
        width = "/".join(str(f) for f in rec["model"].get("filters", (16, 32)))
        schedule = f"{rec['schedule']} {rec['lr']:g}"
        rows.append(
            f"| {name} | {rec['cell']} | {width} | {r['steps']} × {r['batch']} | {schedule} | "
            f"{'yes' if rec['aug'] else 'no'} | {'yes' if r.get('graphed') else 'no'} | {r['best_step']} | "
            f"{r['val_best']['csi']['5']:.3f} | {t['csi']['5']:.3f} | {t['csi']['10']:.3f} | "
            f"{t['b_mse']:.1f} | {t['b_mae']:.1f} |"
        )
    return "\n".join(rows)


def skill_gpu() -> str | None:
    """The second GPU run of the old skill_sweep.py loop: the tiny recipe, cells at equal steps, and the long
    fast-path runs (marked as needing a rerun)."""
    runs, first = _load("skill_sweep_h200_run2.json"), _load("skill_sweep_h200_run1.json")
    return (
        None
        if runs is None or first is None
        else RERUN_NOTE + "\n\n" + _sweep_table(runs, first["baselines"])
    )


def gpu_results() -> dict | None:
    """The old skill_sweep.py loop's second GPU run as bench_skill results (rows: GPU_ROWS, then the two
    baselines); None once bench_skill.py --gpu has written skill_gpu.json."""
    if _load("skill_gpu.json") is not None:
        return None
    runs, first = _load("skill_sweep_h200_run2.json"), _load("skill_sweep_h200_run1.json")
    if runs is None or first is None:
        return None
    interval_s = 360  # the synthetic archive's cadence
    rows = {
        f"{name} ({runs[name]['steps']} steps)": runs[name]["test_best"] | {"interval_s": interval_s}
        for name in GPU_ROWS
    }
    baselines = first["baselines"]
    rows["persistence"] = baselines["persistence_test"] | {"interval_s": interval_s}
    rows["optical-flow"] = baselines["optical_flow_test"] | {"interval_s": interval_s}
    return {"archive": {"days": 120, "size": 96, "seed": 7}, "rows": rows}


def skill_gpu_full() -> str | None:
    """Every threshold, HSS, B-MSE and B-MAE of the GPU runs (the table format of bench_skill.py): from
    bench_skill.py --gpu (through `nowcast train`) when it ran, else the old loop's, marked."""
    through_pipeline = _load("skill_gpu.json")
    if through_pipeline is not None:
        return _pipeline_block(through_pipeline)
    results = gpu_results()
    return None if results is None else RERUN_NOTE + "\n\n" + markdown_table(results)


def skill_sweep1() -> str | None:
    """The first GPU run of the old skill_sweep.py loop: schedules, augmentation and widths (short runs;
    marked as needing a rerun)."""
    first = _load("skill_sweep_h200_run1.json")
    return None if first is None else RERUN_NOTE + "\n\n" + _sweep_table(first, first["baselines"])


def demo() -> str | None:
    """``nowcast demo``'s ``demo_results.json`` (copied to benchmarks/results/): minutes per stage and the
    table."""
    results = _load("demo_results.json")
    if results is None:
        return None
    minutes = results["minutes"]
    stages = ", ".join(f"{stage} {value:.1f}" for stage, value in minutes.items())
    return "\n".join(
        [
            f"`{results['command']}` ({results['settings']['days']} days of "
            f"{results['settings']['size_px']} px, {results['steps']} training steps): "
            f"**{sum(minutes.values()):.1f} min** in all (minutes per stage: {stages}); "
            f"test split, {results['n_clips']} clips, means over the 20 lead times:",
            "",
            markdown_table(results),
        ]
    )


def gpu_bench() -> str | None:
    """bench_trajgru.py on the lent GPU (benchmarks/gpu_check.py's bench stage), with the port's reference."""
    bench = _load("gpu_check_h200/bench.json")
    if bench is None:
        return None
    port = bench["port_reference"]
    rows = [] if bench.get("train_step") == "trajgru.step.TrainStep" else [STEP_RERUN_NOTE, ""]
    rows += [
        f"`{bench['preset']}` {bench['size']}, {bench['in_len']} → {bench['out_len']}, Adam, on one "
        f"{bench['device']} (torch {bench['torch']}); % of the datasheet dense bf16 peak "
        f"({bench['peak_bf16_tflops_datasheet']:.0f} TFLOP/s); model FLOPs from torch.utils.flop_counter.",
        "",
        "| variant | batch | train ms/step | samples/s | peak GiB | TFLOP/s | % peak | × the port "
        "| forecast batch | forecast ms | forecasts/s |",
        "|" + "---|" * 11,
    ]
    for r in bench["results"]:
        vs_port = f"{port['train_step_s_b4_fp32'] / r['train_step_s']:.1f}×" if r["batch"] == 4 else "–"
        rows.append(
            f"| {r['variant']} | {r['batch']} | {1e3 * r['train_step_s']:.1f} | "
            f"{r['train_samples_per_s']:.1f} | {r['train_peak_mib'] / 1024:.2f} | {r['train_tflops']:.1f} | "
            f"{100 * r['train_frac_bf16_peak']:.1f}% | "
            f"{vs_port} | {r['forecast_batch']} | {1e3 * r['forecast_s']:.1f} | "
            f"{r['forecast_samples_per_s']:.1f} |"
        )
    rows += [
        "",
        f"The port: {1e3 * port['train_step_s_b4_fp32']:.0f} ms per batch-4 step and "
        f"{1e3 * port['forecast_s_b1_fp32']:.0f} ms per forecast on the same kind of GPU ({port['source']}).",
    ]
    return "\n".join(rows)


def serving() -> str | None:
    """serve_load.py's table: requests/s and latency of the two servers at each client count."""
    results = _load("serving.json")
    if results is None:
        return None
    m, model = results["machine"], results["model"]
    hardware = m.get("gpu") or f"{m['cpu_cores']} CPU cores ({m['cpu']})"
    rows = [
        f"`{results['command'].strip()}` — `{model['preset']}` {model['cell']} at {model['size_px']}², "
        f"{model['in_len']} frames in, {model['out_len']} out, one domain per request; `nowcast serve` with "
        f"{results['replicas']} replica(s), batches of up to {results['max_batch_size']}; {hardware}, "
        f"torch {m['torch']}; client and server on the same machine (loopback), whose 1-minute load "
        f"average was {results['load_average_1min'][0]:g} before and {results['load_average_1min'][1]:g} after "
        "(other jobs shared it).",
        "",
        "| server | clients | requests/s | median latency | p95 latency | requests (errors) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        rows.append(
            f"| `{r['server']}` | {r['clients']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.0f} ms | "
            f"{r['p95_ms']:.0f} ms | {r['requests']} ({r['errors']}) |"
        )
    return "\n".join(rows)


def verify() -> str | None:
    """bench_verify.py's table: models against the pysteps yardsticks, what ran it and on which clips."""
    results = _load("verify.json")
    if results is None:
        return None
    m = results["machine"]
    rows = results["rows"]
    n_clips = next(iter(rows.values()))["n_clips"]
    subset = (
        "the whole test split"
        if results["clip_stride"] == 1
        else f"every {results['clip_stride']}th sequential clip of the test split (evenly spaced; "
        "`--clip-stride 1` scores all 844)"
    )
    models = ", ".join(
        f"{label}: `{row['model_uri']}`" for label, row in rows.items() if "/" in row["model_uri"]
    )
    return "\n".join(
        [
            f"`{results['command'].strip()}` — {n_clips} clips, {subset}; {m['cpu_cores']} CPU cores "
            f"({m['cpu']}), torch {m['torch']}. Means over the 20 lead times; "
            "BSS: Brier skill score against the sample climatology; reliability: the Brier score's "
            "reliability term (0 is perfect); P from: how a row's probabilities P(rain ≥ t) are made "
            "(calibrated: `nowcast calibrate` on the validation split; px nbhd: the neighbourhood fraction "
            "of the deterministic forecast; members: the ensemble's member fraction); s / clip: "
            f"`nowcast evaluate` in one process, forecast and scoring. Models: {models or 'none'}.",
            "",
            verify_table(results),
        ]
    )


def service_latency() -> str | None:
    """bench_service.py --part latency: median and p95 per case, split into its parts."""
    results = _load("service_latency.json")
    if results is None:
        return None
    m = results["machine"]
    # a load above the core count means other jobs shared the cores while it ran
    shared = (
        ": the machine was shared" if m["load_average_1min_at_end"] > m["cpu_cores"] else ", idle otherwise"
    )
    rows = [
        f"`{results['command']}` on {m['cpu_cores']} CPU cores (torch {m['torch']}; 1-min load average "
        f"{m['load_average_1min_at_end']:.0f} at the end{shared}). Seconds, median (p95):",
        "",
        "| case | archive → output | cycles | total | notice (poll) | ingest | forecast | write "
        "| target (median) |",
        "|" + "---|" * 9,
    ]
    for c in results["cases"].values():
        parts = " | ".join(
            f"{c[k]['median']:.2f} ({c[k]['p95']:.2f})"
            for k in ("total_s", "notice_s", "ingest_s", "forecast_s", "write_s")
        )
        met = "met" if c["total_s"]["median"] <= c["target_median_s"] else "**not met**"
        rows.append(
            f"| `{c['preset']}` {c['size']}² | {c['archive_format']} → {c['output_format']} | "
            f"{c['cycles']} | {parts} | ≤ {c['target_median_s']:.0f} s: {met} |"
        )
    return "\n".join(rows)


BLOCKS = {
    "verify": verify,
    "demo": demo,
    "skill-pipeline": skill_pipeline,
    "skill-gpu-full": skill_gpu_full,
    "skill-gpu": skill_gpu,
    "skill-sweep1": skill_sweep1,
    "gpu-bench": gpu_bench,
    "serving": serving,
    "service-latency": service_latency,
}


def render(text: str) -> str:
    """``text`` with every known block re-rendered from the results."""
    for name, fn in BLOCKS.items():
        body = fn()
        if body is None:
            continue
        pattern = re.compile(
            rf"(<!-- BEGIN {re.escape(name)} -->\n)(?:.*?\n)?(<!-- END {re.escape(name)} -->)", re.S
        )
        text = pattern.sub(lambda m, b=body: m.group(1) + b + "\n" + m.group(2), text)
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
    results = gpu_results()
    if results is not None:
        plot(results, GPU_PLOT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
