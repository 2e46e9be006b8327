"""`nowcast demo`: every stage of the pipeline on a small synthetic archive, in one working directory.

synth -> ingest (Dask) -> train the `tiny` TrajGRU (Ray Train, 2 CPU workers) with MLflow tracking and
registration -> evaluate model vs persistence vs optical flow on the test split -> champion alias ->
forecast GIF. ``--watch`` (:func:`replay_watch`) then replays test frames into a live archive for
``nowcast watch``.
Safe to re-run: the archive is kept when its settings match, ingest is idempotent, each run trains a fresh
MLflow run and the new version takes the `champion` alias only if it beats the current one; the baselines'
test scores are computed once per store (``evaluation/``) and reused.

Besides the printed table, the scores go to ``<workdir>/demo_results.json`` (:data:`RESULTS_FILE`): the
settings, the minutes each stage took, and one row per model in the format of
``benchmarks/bench_skill.py`` (``rows: {model: {csi: {threshold: mean}, hss: ..., b_mse, b_mae, ...}}``),
from which the README's demo table is generated.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import files
from pipeline.errors import NowcastError, check, check_name, check_types
from pipeline.evaluate import compare_models, table_row
from pipeline.forecasters import load_forecaster
from pipeline.ingest import IngestConfig, ingest
from pipeline.predict import PredictConfig, predict
from pipeline.sources import hko7
from pipeline.store import Store
from pipeline.synth import SynthConfig, archive_matches, synth_archive
from pipeline.tracking import champion_version, resolve_tracking_uri
from pipeline.train import TrainConfig, train
from pipeline.watch import WatchConfig, read_records, watch


@dataclass
class DemoConfig:
    """Settings of the demo; the defaults finish in a few minutes on a 2-core machine."""

    workdir: Path = Path("nowcast-demo")
    days: int = 12
    frames_per_day: int = 240
    size_px: int = 96
    seed: int = 0
    steps: int | None = None  # None: the tiny-demo recipe's (pipeline.train.RECIPES)
    batch_size: int | None = None
    workers: int = 2
    model_name: str = "nowcast-tiny"
    tracking_uri: str | None = None
    ray_address: str | None = None
    max_eval_clips: int | None = None

    def __post_init__(self):
        """Every setting is checked here, before anything runs (usage errors, exit code 2)."""
        check_types(self)
        for name in ("days", "frames_per_day", "size_px", "steps", "batch_size", "workers", "max_eval_clips"):
            value = getattr(self, name)
            check(value is None or value >= 1, f"--{name.replace('_', '-')} must be >= 1, got {value}")
        check(
            self.batch_size is None or self.batch_size % self.workers == 0,
            f"the batch size {self.batch_size} must be a multiple of --workers {self.workers}",
        )
        check_name(self.model_name, "the model name")


#: The demo's scores, beside its outputs (see the module doc).
RESULTS_FILE = "demo_results.json"


@dataclass
class DemoResult:
    """What the demo made and where it is."""

    workdir: Path
    store: Path
    model_uri: str
    registered_version: int | None
    is_champion: bool
    gif_path: Path | None
    table: str
    summary: str


def _synth_if_needed(cfg: DemoConfig, archive: Path) -> None:
    """Synthesise the archive unless one with the same settings is already there."""
    synth_cfg = SynthConfig(
        out_dir=archive, days=cfg.days, frames_per_day=cfg.frames_per_day, size_px=cfg.size_px, seed=cfg.seed
    )
    if archive_matches(synth_cfg):
        print(f"[demo] archive {archive} already synthesised; keeping it")
        return
    synth_archive(synth_cfg)


def _demo_forecast_time(store: Store) -> int:
    """Epoch seconds of the middle test clip's start + 4 frames (the last input frame of that clip)."""
    starts = store.clip_starts("test", "sequent")
    if len(starts) == 0:
        raise NowcastError(f"the store {store.path} has no test clips; delete the demo folder and re-run")
    return int(starts[len(starts) // 2]) + 4 * store.interval_s


def _train_config(cfg: DemoConfig, workdir: Path, store: Path, tracking_uri: str) -> TrainConfig:
    return TrainConfig(
        store=store,
        preset="tiny",
        recipe="tiny-demo",
        workers=cfg.workers,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        height=cfg.size_px,
        width=cfg.size_px,
        run_name=f"demo-{time.strftime('%Y%m%d-%H%M%S')}",
        storage_path=workdir / "ray_results",
        tracking_uri=tracking_uri,
        ray_address=cfg.ray_address,
        register_as=cfg.model_name,
    )


def run_demo(cfg: DemoConfig) -> DemoResult:
    """Run every stage; return where things are and a printable summary."""
    t0 = time.perf_counter()
    workdir = Path(cfg.workdir).resolve()
    archive, store = workdir / "archive", workdir / "store.zarr"
    tracking_uri = cfg.tracking_uri or resolve_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    train_cfg = _train_config(cfg, workdir, store, tracking_uri)  # checked before any stage runs
    steps = train_cfg.resolved().steps
    workdir.mkdir(parents=True, exist_ok=True)
    minutes = {}

    def stage(name: str, started: float) -> float:
        minutes[name] = round((time.perf_counter() - started) / 60, 2)
        return time.perf_counter()

    print(f"[demo] 1/5 synthesising a radar archive in {archive}")
    _synth_if_needed(cfg, archive)
    t = stage("synth", t0)
    print(f"[demo] 2/5 ingesting it into {store} (Dask)")
    ingest(IngestConfig(archive=archive, store=store))
    t = stage("ingest", t)
    print(f"[demo] 3/5 training the tiny TrajGRU on {cfg.workers} Ray workers for {steps} steps")
    trained = train(train_cfg)
    t = stage("train", t)
    model_uri = f"models:/{cfg.model_name}/{trained.registered_version}"
    print("[demo] 4/5 evaluating the model against persistence and optical flow on the test split")
    compared = compare_models(
        store,
        [model_uri, "persistence", "optical-flow"],
        split="test",
        tracking_uri=tracking_uri,
        max_clips=cfg.max_eval_clips,
        out_dir=workdir / "evaluation",
        reuse_baselines=True,
    )
    t = stage("evaluate", t)
    print("[demo] 5/5 forecasting with the champion")
    forecast = predict(
        PredictConfig(
            model_uri=f"models:/{cfg.model_name}@champion",
            out_dir=workdir / "forecast",
            store=store,
            time=str(_demo_forecast_time(Store.open(store))),
            tracking_uri=tracking_uri,
            overwrite=True,
        )
    )
    stage("predict", t)
    results_path = files.write_json(
        workdir / RESULTS_FILE,
        {
            "command": "nowcast demo",
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()},
            "steps": steps,
            "minutes": minutes,
            "split": "test",
            "n_clips": compared.n_clips,
            "rows": {
                f"{cfg.model_name} ({steps} steps)" if r.model_uri == model_uri else r.model_name: table_row(
                    r
                )
                for r in compared.results
            },
        },
    )
    summary = _summary(
        workdir,
        store,
        model_uri,
        trained,
        forecast.gif_path,
        compared,
        tracking_uri,
        time.perf_counter() - t0,
        results_path,
    )
    return DemoResult(
        workdir,
        store,
        model_uri,
        trained.registered_version,
        bool(trained.promoted),
        forecast.gif_path,
        compared.table,
        summary,
    )


def _summary(
    workdir, store, model_uri, trained, gif_path, compared, tracking_uri, seconds, results_path
) -> str:
    champion = "took the champion alias" if trained.promoted else "did not beat the current champion"
    reused = [r.model_name for r in compared.results if r.reused]
    return "\n".join(
        [
            compared.table,
            *(
                [
                    f"(scores of {', '.join(reused)} reused from an earlier demo run on the same store "
                    "and clips)"
                ]
                if reused
                else []
            ),
            "",
            f"demo finished in {seconds / 60:.1f} min",
            f"  store:      {store}",
            f"  model:      {model_uri} ({champion})",
            f"  checkpoint: {trained.checkpoint_path}",
            f"  forecast:   {gif_path}",
            f"  scores:     {results_path}",
            f"  MLflow UI:  mlflow ui --backend-store-uri {tracking_uri}",
        ]
    )


# ------------------------------------------------------------------------------------------ --watch
def _land_copy(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` under a hidden name, then rename it into place (as a radar feed does)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.part")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _land_frame(archive: Path, live: Path, time_s: int) -> None:
    """Copy one HKO-7 frame of the demo archive into the live archive: its mask first, then the frame."""
    for path_of in (hko7.mask_path, hko7.frame_path):
        src = path_of(archive, time_s)
        if src.is_file():
            _land_copy(src, path_of(live, time_s))


def replay_watch(
    cfg: DemoConfig, cycles: int = 5, every_s: float = 3.0, echo: Callable[[str], None] = print
) -> Path:
    """Replay the demo's first test frames into a fresh live archive, one every ``every_s`` seconds
    (an accelerated cadence), while ``nowcast watch`` turns each into a forecast with the champion
    (trained by :func:`run_demo` first when the work folder has none). -> the forecasts folder
    (``cycles.jsonl`` holds each cycle's latency)."""
    check(cycles >= 1, f"--watch-cycles must be >= 1, got {cycles}")
    check(every_s > 0, f"--watch-every-s must be > 0 seconds, got {every_s}")
    workdir = Path(cfg.workdir).resolve()
    tracking_uri = cfg.tracking_uri or resolve_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    model_uri = f"models:/{cfg.model_name}@champion"
    if (
        not (workdir / "mlflow.db").exists()
        or champion_version(cfg.model_name, tracking_uri=tracking_uri) is None
    ):
        echo(f"[demo] no champion in {workdir} yet: running the demo first")
        run_demo(cfg)
    store = Store.open(workdir / "store.zarr")
    in_len = load_forecaster(model_uri, tracking_uri=tracking_uri, device="cpu").in_len
    start = int(store.clip_starts("test", "sequent")[0])
    times = store.time_s[store.time_s >= start][: in_len + cycles].tolist()
    live = workdir / f"watch-{time.strftime('%Y%m%d-%H%M%S')}"
    for t in times[:in_len]:
        _land_frame(workdir / "archive", live / "archive", t)
    echo(
        f"[demo] replaying {len(times) - in_len} test frames into {live / 'archive'}, one every "
        f"{every_s:g} s (instead of every {store.interval_s // 60} min)"
    )
    stop = threading.Event()

    def feed() -> None:
        for t in times[in_len:]:
            if stop.wait(every_s):
                return
            _land_frame(workdir / "archive", live / "archive", t)

    feeder = threading.Thread(target=feed, daemon=True)
    watch_cfg = WatchConfig(
        archive=live / "archive",
        store=live / "store.zarr",
        model_uri=model_uri,
        out_dir=live / "forecasts",
        format="png",
        poll_s=0.2,
        wait_missing_s=every_s,
        max_cycles=len(times) - in_len + 1,  # the last history frame is the first cycle
        tracking_uri=tracking_uri,
        device="cpu",
    )
    feeder.start()
    try:
        watch(watch_cfg, echo)
    finally:
        stop.set()
        feeder.join()
    latencies = [r["latency_s"] for r in read_records(live / "forecasts") if r.get("latency_s") is not None]
    if latencies:
        echo(
            f"[demo] {len(latencies)} forecasts, latency median {np.median(latencies):.2f} s, "
            f"max {max(latencies):.2f} s; forecasts in {live / 'forecasts'} "
            f"(latest: {live / 'forecasts' / 'latest'})"
        )
    return live / "forecasts"
