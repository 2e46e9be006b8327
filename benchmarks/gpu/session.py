"""One lent-GPU session: the pipeline, skill, speed and test checks of issue 18 in one prepared run.

Run by ``benchmarks/gpu/session.sh`` from the repository root on the GPU machine, with the offline
package bundle (``benchmarks/gpu/bundle.py``) carried; everything it measures goes to ``$OUT``:

==========  =========================================================================  ==========
stage       what (GPU run)                                                              budget s
==========  =========================================================================  ==========
env         nvidia-smi; Python, torch, Ray, MLflow, Zarr, Dask versions; every module   45
            the bundle must provide imports
skill       ``benchmarks/bench_skill.py --gpu --workers 1``: ``nowcast synth`` (120     330
            days, 96 px, seed 7) -> ``ingest`` -> ``train --gpu --workers 1`` (TrajGRU,
            then ConvGRU, same steps; MLflow on SQLite, registered) -> ``evaluate``
            (test split); the baselines' scores are reused from
            ``benchmarks/gpu/baselines/`` when they match the store
predict     ``nowcast predict`` with the registered TrajGRU champion (PNG frames + GIF)  40
gpu_check   ``benchmarks/gpu_check.py``: the CUDA tests (``pytest -m gpu``), kernel      rest
            checks, the ``hko7`` 480² speed benchmark (README's GPU table), numerics,
            profile
==========  =========================================================================  ==========

Each stage runs in its own process group with a hard timeout (its budget, capped by what is left of
``--budget-s``); a stage that fails or times out is recorded and the next one starts. After every
stage ``$OUT/summary.json`` (status, seconds, and the targets of issue 18 as far as measured) and
``$OUT/results.tgz`` (logs, result JSONs, plots, the forecast GIF, the MLflow database) are rewritten,
so a session cut short keeps what it measured. ``--cpu-smoke`` runs the same stages here on the CPU at
tiny sizes; ``--dry-run`` prints the stages and their commands.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.gpu import bundle  # noqa: E402  (after the path set-up: run as a script)

#: The GPU run's work folder: the carried baseline scores name the store under it, so it is fixed.
GPU_WORKDIR = Path("/tmp/nowcast-gpu-session")
BASELINES_DIR = ROOT / "benchmarks" / "gpu" / "baselines"
#: The skill benchmark's registered TrajGRU (``bench_skill.py`` registers ``bench-<preset>-<cell>``).
SKILL_MODEL = "models:/bench-tiny-trajgru@champion"
#: Issue 18's targets.
SKILL_RATIO_VS_OPTICAL_FLOW = 1.10
SPEED_TARGETS = {"train_b4_ms": 36.0, "frac_bf16_peak": 0.25, "forecast_b1_ms": 12.0, "train_b4_gib": 8.7}
#: A stage that would start with less than this many seconds left is skipped.
MIN_STAGE_S = 15.0
#: Files under the results folder larger than this stay out of results.tgz (stores, checkpoints).
MAX_RESULT_FILE_MIB = 8.0


@dataclass
class Stage:
    """One stage: commands run in order (argv lists, cwd = the repository root) inside one timeout."""

    name: str
    budget_s: float
    what: str
    commands: list[list[str]] = field(default_factory=list)
    before: object = None  # optional callable(work: Path) run first (file preparation)


@dataclass
class Settings:
    """What differs between the GPU run and the CPU smoke run."""

    gpu: bool
    days: int
    size_px: int
    steps: int
    cells: str
    skill_config: dict | None  # training overrides for the smoke run (small batches, few clips)
    gpu_check_args: list[str]

    @classmethod
    def for_mode(cls, cpu_smoke: bool, steps: int | None) -> Settings:
        if cpu_smoke:
            return cls(
                gpu=False,
                days=8,
                size_px=96,
                steps=steps or 4,
                cells="trajgru,convgru",
                skill_config={
                    "batch_size": 2,
                    "val_every": 2,
                    "val_clips": 4,
                    "checkpoint_every": 2,
                    "log_every": 1,
                    "gif_clips": 1,
                    "system_metrics": False,
                },
                gpu_check_args=["--quick", "--stages", "env,pytest"],
            )
        return cls(
            gpu=True,
            days=120,
            size_px=96,
            steps=steps or 4000,
            cells="trajgru,convgru",
            skill_config=None,
            gpu_check_args=["--stages", "env,pytest,checks,bench,numerics,profile"],
        )


def build_stages(settings: Settings, work: Path, results: Path) -> list[Stage]:
    """The session's stages, in the order they run (most valuable first)."""
    py = sys.executable
    skill_dir = work / "skill"
    skill = [
        py,
        "benchmarks/bench_skill.py",
        "--workdir",
        str(skill_dir),
        "--out",
        str(results / "skill"),
        "--days",
        str(settings.days),
        "--size",
        str(settings.size_px),
        "--seed",
        "7",
        "--cells",
        settings.cells,
        "--workers",
        "1",
        "--steps",
        str(settings.steps),
        "--reuse-baselines",
    ]
    if settings.gpu:
        skill.append("--gpu")
    if settings.skill_config:
        skill += ["--config", str(work / "skill_config.json")]
    predict = [
        py,
        "-m",
        "cli",
        "predict",
        "--model",
        SKILL_MODEL,
        "--store",
        str(skill_dir / "store.zarr"),
        "--out-dir",
        str(results / "predict"),
        "--overwrite",
        "--tracking-uri",
        f"sqlite:///{skill_dir / 'mlflow.db'}",
    ]
    gpu_check = [py, "benchmarks/gpu_check.py", "--out", str(results / "gpu_check"), *settings.gpu_check_args]

    def prepare_skill(work_: Path) -> None:
        if settings.skill_config:
            (work_ / "skill_config.json").write_text(json.dumps(settings.skill_config))
        if settings.gpu:
            copy_baselines(skill_dir / "evaluations")

    return [
        Stage("env", 45, "versions, GPU, the bundle's imports", [[py, str(Path(__file__)), "--env-report"]]),
        Stage(
            "skill", 330, "bench_skill through nowcast synth/ingest/train/evaluate", [skill], prepare_skill
        ),
        Stage("predict", 40, "nowcast predict with the registered TrajGRU", [predict]),
        Stage("gpu_check", 240, "CUDA tests, kernel checks, speed benchmark, numerics, profile", [gpu_check]),
    ]


def copy_baselines(evaluations: Path) -> None:
    """Put the carried baseline scores (``nowcast evaluate`` JSONs of persistence and optical flow on the
    benchmark store at ``GPU_WORKDIR/skill/store.zarr``) where ``bench_skill.py --reuse-baselines`` looks;
    it reuses them only if they name the same store path and frame count, else it scores the baselines."""
    evaluations.mkdir(parents=True, exist_ok=True)
    for src in sorted(BASELINES_DIR.glob("*.json")):
        dst = evaluations / src.name
        if not dst.exists():
            shutil.copyfile(src, dst)


# ---------------------------------------------------------------- running


def run_stage(stage: Stage, timeout_s: float, env: dict, log: Path, work: Path) -> tuple[str, float]:
    """Run ``stage``'s commands (output appended to ``log``) within ``timeout_s``; returns (status, seconds).

    Each command runs in a new process group, killed whole (TERM, then KILL) at the timeout, so Ray and
    Dask processes a command started go with it."""
    t0 = time.monotonic()
    with open(log, "a") as out:
        try:
            if stage.before is not None:
                stage.before(work)
            for cmd in stage.commands:
                left = timeout_s - (time.monotonic() - t0)
                if left <= 0:
                    return f"timeout after {timeout_s:.0f} s", time.monotonic() - t0
                out.write(f"\n$ {' '.join(cmd)}\n")
                out.flush()
                proc = subprocess.Popen(
                    cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
                try:
                    rc = proc.wait(timeout=left)
                except subprocess.TimeoutExpired:
                    _kill_group(proc)
                    return f"timeout after {timeout_s:.0f} s", time.monotonic() - t0
                if rc:
                    return f"exit {rc}", time.monotonic() - t0
        except Exception as exc:  # noqa: BLE001 (a broken stage must not stop the session)
            out.write(f"\nstage error: {exc!r}\n")
            return f"error: {exc}", time.monotonic() - t0
    return "ok", time.monotonic() - t0


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def use_bundle(work: Path) -> Path | None:
    """Unpack the carried bundle into ``work/site`` when it exists and was built for this Python;
    returns the folder to put on PYTHONPATH (None: use the installed packages)."""
    archive = bundle.BUNDLE_DIR / bundle.ARCHIVE_NAME
    if not archive.is_file():
        print(f"[session] no bundle at {archive}: using the installed packages", flush=True)
        return None
    manifest = json.loads((bundle.BUNDLE_DIR / bundle.MANIFEST_NAME).read_text())
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if manifest["python"] != here:
        print(f"[session] bundle is for Python {manifest['python']}, this is {here}: not used", flush=True)
        return None
    site = work / "site"
    stamp = site / bundle.MANIFEST_NAME
    if not (stamp.is_file() and json.loads(stamp.read_text()) == manifest):
        t0 = time.monotonic()
        if site.exists():
            shutil.rmtree(site)  # our own earlier unpacking (work is this session's folder)
        site.mkdir(parents=True)
        with tarfile.open(archive, "r:xz") as tar:
            tar.extractall(site, filter="data")
        stamp.write_text(json.dumps(manifest))
        print(f"[session] bundle unpacked into {site} in {time.monotonic() - t0:.1f} s", flush=True)
    return site


def stage_env(out=sys.stdout) -> int:
    """The ``env`` stage: versions, the GPU, and an import of every module the bundle must provide."""
    import importlib
    import platform

    print(f"python {platform.python_version()} ({sys.executable})", file=out)
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "--query-gpu=name,memory.total,driver_version"
        print(
            subprocess.run([smi, query, "--format=csv,noheader"], capture_output=True, text=True).stdout,
            file=out,
        )
    failed = []  # modules the bundle must provide (the image's own are reported, triton is absent on CPUs)
    for name in ("torch", "triton", "numpy", "pandas", "pyarrow", "cv2", *bundle.MUST_IMPORT):
        try:
            module = importlib.import_module(name)
            where = Path(getattr(module, "__file__", "") or "?").parent
            print(f"{name} {getattr(module, '__version__', '')} ({where})", file=out)
        except Exception as exc:  # noqa: BLE001 (report every failure, then fail)
            if name in bundle.MUST_IMPORT:
                failed.append(name)
            print(f"{name}: NOT importable: {exc!r}", file=out)
    import torch

    print(f"cuda available: {torch.cuda.is_available()}", file=out)
    if failed:
        print(f"missing: {', '.join(failed)}", file=out)
    return 1 if failed else 0


# ---------------------------------------------------------------- targets and results


def skill_targets(skill_json: Path) -> dict:
    """Issue 18 item 2 from ``bench_skill.py``'s skill.json: TrajGRU >= 1.10 x optical flow's CSI >= 5 mm/h
    with a lower B-MSE, and TrajGRU >= ConvGRU at equal steps (test split, means over lead times)."""
    if not skill_json.is_file():
        return {"measured": False}
    rows = json.loads(skill_json.read_text())["rows"]
    traj = next((r for k, r in rows.items() if k.endswith(" trajgru")), None)
    conv = next((r for k, r in rows.items() if k.endswith(" convgru")), None)
    flow = rows.get("optical-flow")
    out: dict = {"measured": traj is not None and flow is not None}
    if traj and flow:
        ratio = traj["csi"]["5"] / flow["csi"]["5"]
        out |= {
            "trajgru_csi5": round(traj["csi"]["5"], 4),
            "optical_flow_csi5": round(flow["csi"]["5"], 4),
            "ratio": round(ratio, 3),
            "trajgru_b_mse": round(traj["b_mse"], 1),
            "optical_flow_b_mse": round(flow["b_mse"], 1),
            "beats_optical_flow": bool(
                ratio >= SKILL_RATIO_VS_OPTICAL_FLOW and traj["b_mse"] < flow["b_mse"]
            ),
        }
    if traj and conv:
        out |= {
            "convgru_csi5": round(conv["csi"]["5"], 4),
            "trajgru_ge_convgru": traj["csi"]["5"] >= conv["csi"]["5"],
        }
    return out


def speed_targets(bench_json: Path) -> dict:
    """Issue 18 item 3 from gpu_check's bench.json (``bench_trajgru.py --variants all``): the fastest
    batch-4 training step and its memory, the best fraction of the bf16 peak, the fastest batch-1 forecast."""
    if not bench_json.is_file():
        return {"measured": False}
    rows = json.loads(bench_json.read_text())["results"]
    b4 = [r for r in rows if r.get("batch") == 4 and r.get("train_step_s")]
    f1 = [r for r in rows if r.get("forecast_batch") == 1 and r.get("forecast_s")]
    peak = [r for r in rows if r.get("train_frac_bf16_peak")]
    out: dict = {"measured": bool(b4)}
    if b4:
        best = min(b4, key=lambda r: r["train_step_s"])
        out |= {
            "train_b4_ms": round(best["train_step_s"] * 1e3, 1),
            "train_b4_variant": best.get("variant"),
            "train_b4_gib": round(best["train_peak_mib"] / 1024, 2),
        }
    if f1:
        out["forecast_b1_ms"] = round(min(r["forecast_s"] for r in f1) * 1e3, 1)
    if peak:
        out["frac_bf16_peak"] = round(max(r["train_frac_bf16_peak"] for r in peak), 3)
    for key, limit in SPEED_TARGETS.items():
        if key in out:
            out[f"{key}_met"] = out[key] >= limit if key == "frac_bf16_peak" else out[key] <= limit
    return out


def write_results(out: Path, results: Path, summary: dict) -> None:
    """``out/summary.json`` and ``out/results.tgz`` (files of ``results`` up to MAX_RESULT_FILE_MIB each;
    the device returns at most 8 files from $OUT, so everything else travels in the archive)."""
    summary["targets"] = {
        "skill": skill_targets(results / "skill" / "skill.json"),
        "speed": speed_targets(results / "gpu_check" / "bench.json"),
    }
    tmp = out / "summary.json.part"
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    tmp.replace(out / "summary.json")
    part = out / "results.tgz.part"
    with tarfile.open(part, "w:gz") as tar:
        for path in sorted(results.rglob("*")):
            if (
                path.is_file()
                and not path.is_symlink()
                and path.stat().st_size <= MAX_RESULT_FILE_MIB * 2**20
            ):
                tar.add(path, arcname=str(path.relative_to(results.parent)))
    part.replace(out / "results.tgz")


def collect_extras(work: Path, results: Path) -> None:
    """Copy what the stages left outside ``results`` and is worth keeping: the skill benchmark's log and
    MLflow database (small), so that the runs, metrics and registry can be read back."""
    skill = work / "skill"
    for name in ("bench_skill.log", "mlflow.db"):
        if (skill / name).is_file():
            (results / "skill").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(skill / name, results / "skill" / name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=os.environ.get("OUT"), help="results folder (default $OUT)")
    p.add_argument("--cpu-smoke", action="store_true", help="the same stages on the CPU at tiny sizes")
    p.add_argument("--dry-run", action="store_true", help="print the stages and their commands; run nothing")
    p.add_argument("--stages", default=None, help="comma list of stages to run (default: all, in order)")
    p.add_argument("--budget-s", type=float, default=570.0, help="wall budget of the whole session (s)")
    p.add_argument("--steps", type=int, default=None, help="training steps per model in the skill stage")
    p.add_argument("--workdir", type=Path, default=None, help=f"work folder (GPU default {GPU_WORKDIR})")
    p.add_argument("--env-report", action="store_true", help=argparse.SUPPRESS)  # the env stage itself
    args = p.parse_args(argv)
    if args.env_report:
        return stage_env()

    settings = Settings.for_mode(args.cpu_smoke, args.steps)
    work = args.workdir or GPU_WORKDIR
    if args.cpu_smoke and args.workdir is None:  # a fresh folder per smoke run (none for a dry run)
        smoke = Path(tempfile.gettempdir()) / "nowcast-gpu-smoke-XXXX"
        work = smoke if args.dry_run else Path(tempfile.mkdtemp(prefix="nowcast-gpu-smoke-"))
    results = work / "results"
    stages = build_stages(settings, work, results)
    names = [s.name for s in stages]
    chosen = names if not args.stages else [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        p.error(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(names)}")
    if args.dry_run:
        for stage in stages:
            if stage.name in chosen:
                print(f"{stage.name} (budget {stage.budget_s:.0f} s): {stage.what}")
                for cmd in stage.commands:
                    print("    " + " ".join(cmd))
        return 0
    if args.out is None:
        p.error("give --out or set OUT")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)

    start = time.monotonic()
    site = use_bundle(work)
    extra_path = [str(ROOT)] + ([str(site)] if site else [])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(extra_path + [p_ for p_ in [os.environ.get("PYTHONPATH")] if p_]),
        "PYTHONUNBUFFERED": "1",
        "MPLBACKEND": "Agg",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    summary = {
        "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
        "work": str(work),
        "bundle": str(site) if site else None,
        "settings": {"days": settings.days, "size_px": settings.size_px, "steps": settings.steps},
        "stages": [],
    }
    for stage in stages:
        if stage.name not in chosen:
            continue
        left = args.budget_s - (time.monotonic() - start)
        if left < MIN_STAGE_S:
            summary["stages"].append({"stage": stage.name, "status": f"skipped: {left:.0f} s left"})
            print(f"[session] {stage.name}: skipped ({left:.0f} s left)", flush=True)
            continue
        # gpu_check, last, gets what is left; the others their budget (the smoke run: 4x, CPUs are slow)
        timeout = (
            left if stage.name == "gpu_check" else min(stage.budget_s * (4 if args.cpu_smoke else 1), left)
        )
        if stage.name == "gpu_check" and not args.cpu_smoke:
            stage.commands[0] += ["--budget-s", f"{max(timeout - 10, MIN_STAGE_S):.0f}"]
        log = results / f"{stage.name}.log"
        print(f"[session] {stage.name}: start (timeout {timeout:.0f} s) — {stage.what}", flush=True)
        status, took = run_stage(stage, timeout, env, log, work)
        print(f"[session] {stage.name}: {status} in {took:.1f} s", flush=True)
        if status != "ok":
            tail = log.read_text(errors="replace").splitlines()[-25:]
            print("\n".join("    " + ln for ln in tail), flush=True)
        summary["stages"].append({"stage": stage.name, "status": status, "seconds": round(took, 1)})
        collect_extras(work, results)
        summary["seconds"] = round(time.monotonic() - start, 1)
        write_results(out, results, summary)
    if args.cpu_smoke and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)  # the smoke run's own scratch folder (results are in out)
    print(json.dumps(summary.get("targets", {}), indent=1), flush=True)
    print(f"[session] done in {time.monotonic() - start:.0f} s; results in {out}", flush=True)
    return 0 if all(s["status"] == "ok" for s in summary["stages"]) else 1


if __name__ == "__main__":
    sys.exit(main())
