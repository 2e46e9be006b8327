"""The verification benchmark: trained models against the operational yardsticks, deterministic and
probabilistic.

Rows: the trained models given with ``--model LABEL=URI`` (e.g. TrajGRU and ConvGRU registered by
``nowcast train``), persistence, our DIS optical flow, pysteps' extrapolation, S-PROG and STEPS
(``--members`` members). The trained models' exceedance probabilities are calibrated first: ``nowcast
calibrate`` on the **validation** split (the same clip stride), then ``nowcast evaluate --calibration``
(``--no-calibrate``: their neighbourhood probabilities).

Every row is one ``nowcast evaluate`` on the **test** split of the benchmark store, the same clips for all:
every ``--clip-stride``-th sequential clip (``--clip-stride 1``: the whole split). Scores, means over the
20 lead times: CSI and HSS at 5 mm/h, B-MSE, FSS at 5 mm/h over 5 px (HKO-7 and FSS of an ensemble: its
mean), CRPS (mm/h), Brier skill against the sample climatology and the reliability term at 5 mm/h (the
column "P from" says how each row's probabilities are made), seconds per clip of ``nowcast evaluate`` in
one process (forecast and scoring).

Writes ``OUT/verify.json`` (every row's summary, the command, the machine) and ``OUT/verify.md``;
``python benchmarks/update_readme.py`` copies the table into the README. An existing evaluation JSON of the
same model on the same clips is reused (``--rescore`` scores again).

    python benchmarks/bench_verify.py --store bench/store.zarr \\
        --model TrajGRU=models:/h6-tiny-trajgru/1 --model ConvGRU=models:/h6-tiny-convgru/1
    python benchmarks/bench_verify.py --store bench/store.zarr --clip-stride 1   # the whole test split
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_skill import machine  # noqa: E402

#: The yardsticks, by row label.
BASELINE_ROWS = {
    "persistence": "persistence",
    "DIS optical flow": "optical-flow",
    "pysteps extrapolation": "extrapolation",
    "S-PROG": "sprog",
}
DEFAULT_CLIP_STRIDE = 8


def nowcast(cmd: list[str], env: dict, log: Path) -> float:
    """Run ``nowcast CMD...`` with its output appended to ``log`` -> seconds; SystemExit with the log tail
    if it fails."""
    print(f"$ nowcast {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"\n$ nowcast {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run([sys.executable, "-m", "cli", *cmd], cwd=REPO, env=env, stdout=out, stderr=out)
    if proc.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        raise SystemExit(f"`nowcast {cmd[0]}` failed; last lines of {log}:\n{tail}")
    return time.perf_counter() - t0


def calibrate(store: Path, uri: str, out: Path, args, env: dict, log: Path) -> float:
    """``nowcast calibrate`` of a trained model on the validation split (the test run's clip stride)."""
    cmd = [
        "calibrate",
        str(store),
        "--model",
        uri,
        "--split",
        "valid",
        "--clip-stride",
        str(args.clip_stride),
    ]
    if args.max_clips:
        cmd += ["--max-clips", str(args.max_clips)]
    return nowcast([*cmd, "--out", str(out)], env, log)


def evaluate(
    store: Path, uri: str, out_json: Path, args, env: dict, log: Path, calibration: Path | None
) -> float:
    """One ``nowcast evaluate`` on the test split -> seconds."""
    cmd = [
        "evaluate",
        str(store),
        "--model",
        uri,
        "--split",
        "test",
        "--clip-stride",
        str(args.clip_stride),
        "--batch-size",
        "4",
        "--out-json",
        str(out_json),
    ]
    if args.max_clips:
        cmd += ["--max-clips", str(args.max_clips)]
    if calibration is not None:
        cmd += ["--calibration", str(calibration)]
    return nowcast(cmd, env, log)


def summary_row(record: dict) -> dict:
    """An evaluation JSON -> the table's numbers (means over lead times; None when undefined)."""
    import numpy as np

    from pipeline.verification import summary

    scores = record["scores"]
    thresholds = [float(t) for t in scores["thresholds"]]
    five = thresholds.index(5.0)

    def mean(values) -> float | None:
        arr = np.asarray([np.nan if v is None else v for v in values], dtype=float)
        return float(np.nanmean(arr)) if np.isfinite(arr).any() else None

    verified = summary(record["verification"])
    return {
        "csi_5": mean([row[five] for row in scores["csi"]]),
        "hss_5": mean([row[five] for row in scores["hss"]]),
        "b_mse": mean(scores["b_mse"]),
        "fss_5mm_h_5px": verified["fss_5mm_h_5px"],
        "crps_mm_h": verified["crps"],
        "brier_skill_5mm_h": verified["brier_skill_5mm_h"],
        "brier_skill_10mm_h": verified["brier_skill_10mm_h"],
        "reliability_5mm_h": verified["reliability_5mm_h"],
        "roc_auc_5mm_h": verified["roc_auc_5mm_h"],
        "seconds_per_clip": record["seconds"] / max(1, record["n_clips"]),
        "n_clips": record["n_clips"],
        "members": record["verification"]["members"],
        "neighbourhood_px": record["verification"]["neighbourhood_px"],
        "model_name": record["model_name"],
        "probabilities": probability_source(record["verification"]),
    }


def probability_source(verified: dict) -> str:
    """The table's short word for how a row's probabilities were made."""
    method = verified.get("probability_method") or ""
    if method.startswith("calibrated"):
        return "calibrated"
    if verified["members"] > 1:
        return f"{verified['members']} members"
    return f"{verified['neighbourhood_px']} px nbhd"


def markdown_table(results: dict) -> str:
    """The README table, one row per method."""
    head = [
        "method",
        "CSI ≥5",
        "HSS ≥5",
        "B-MSE",
        "FSS ≥5 (5 px)",
        "CRPS (mm/h)",
        "BSS ≥5",
        "BSS ≥10",
        "reliability ≥5",
        "ROC AUC ≥5",
        "s / clip",
        "P from",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(value, digits: int = 3) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    for label, row in results["rows"].items():
        lines.append(
            "| "
            + " | ".join(
                [
                    label,
                    cell(row["csi_5"]),
                    cell(row["hss_5"]),
                    cell(row["b_mse"], 1),
                    cell(row["fss_5mm_h_5px"]),
                    cell(row["crps_mm_h"]),
                    cell(row["brier_skill_5mm_h"]),
                    cell(row["brier_skill_10mm_h"]),
                    cell(row["reliability_5mm_h"], 4),
                    cell(row["roc_auc_5mm_h"]),
                    cell(row["seconds_per_clip"], 2),
                    row.get("probabilities", "–"),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--store",
        type=Path,
        required=True,
        help="the benchmark store (nowcast synth --days 120 --size 96 --seed 7, then nowcast ingest)",
    )
    p.add_argument("--model", action="append", default=[], metavar="LABEL=URI", help="a trained model row")
    p.add_argument("--members", type=int, default=20, help="STEPS ensemble members")
    p.add_argument("--seed", type=int, default=0, help="STEPS seed")
    p.add_argument(
        "--clip-stride", type=int, default=DEFAULT_CLIP_STRIDE, help="every Nth test clip (1: all)"
    )
    p.add_argument("--max-clips", type=int, default=None, help="at most N clips (quick checks)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--rescore", action="store_true", help="score again even where an evaluation JSON exists")
    p.add_argument(
        "--no-calibrate",
        action="store_true",
        help="trained models: neighbourhood probabilities, no calibration",
    )
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    store = args.store.resolve()
    work = store.parent / "bench-verify"
    work.mkdir(exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    trained = dict(item.split("=", 1) for item in args.model)
    rows = trained | BASELINE_ROWS
    rows[f"STEPS ({args.members} members)"] = f"steps:members={args.members},seed={args.seed}"
    results = {
        "command": "python benchmarks/bench_verify.py "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "store": str(store),
        "clip_stride": args.clip_stride,
        "machine": machine(),
        "rows": {},
    }
    log = work / "bench_verify.log"
    for label, uri in rows.items():
        slug = label.replace(" ", "_").replace("(", "").replace(")", "")
        out_json = work / f"{slug}.json"
        if args.rescore or not out_json.is_file() or not _same_clips(out_json, store, args):
            calibration = None
            if label in trained and not args.no_calibrate:
                calibration = work / f"{slug}.calibration.json"
                results.setdefault("calibrate_seconds", {})[label] = calibrate(
                    store, uri, calibration, args, env, log
                )
            evaluate(store, uri, out_json, args, env, log, calibration)
        results["rows"][label] = summary_row(json.loads(out_json.read_text())) | {"model_uri": uri}
        (args.out / "verify.json").write_text(json.dumps(results, indent=1) + "\n")
        (args.out / "verify.md").write_text(markdown_table(results) + "\n")
    print(markdown_table(results))


def _same_clips(path: Path, store: Path, args) -> bool:
    """True when the evaluation at ``path`` scored the test clips this run asks for, on this store."""
    import hashlib

    import numpy as np

    from pipeline.store import Store

    starts = Store.open(store).clip_starts("test", "sequent")[:: args.clip_stride][: args.max_clips]
    digest = hashlib.sha256(np.ascontiguousarray(starts, dtype="<i8").tobytes()).hexdigest()
    record = json.loads(path.read_text())
    return record.get("clip_starts", {}).get("sha256") == digest and record.get("verification") is not None


if __name__ == "__main__":
    main()
