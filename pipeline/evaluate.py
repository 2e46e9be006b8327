"""``nowcast evaluate``: the HKO-7 fixed evaluation protocol.

Protocol
--------
* Clips: the split's *sequential* clip starts recorded in the store's catalog
  (``pipeline.dataset.clip_starts(store, split, "sequent")``: 25-frame clips, stride 5,
  at most 2 consecutive missing frames), in time order, optionally only the first ``max_clips``.
* Per clip: the first ``in_len`` frames (5) are the input, the next ``out_len`` frames (20) the
  truth. Absent frames are zeros with mask 0; truth pixels whose mask is false are not scored.
  Forecasts are clamped to [0, 1] (pixel units) before scoring, as frames would be stored.
* Scores: :class:`trajgru.metrics.SkillScores` pooled over every clip (contingency counts summed
  before any ratio), CSI/HSS/POD/FAR/GSS per lead time and threshold (0.5, 2, 5, 10, 30 mm/h),
  MSE/MAE/B-MSE/B-MAE per lead time.
* Data-parallel: ``workers=N > 0`` splits the clips with ``pipeline.dataset.shard`` over N Ray
  tasks; each loads the forecaster, scores its slice, and the accumulators are merged (pooled
  counts are exactly those of the in-process run).

A model and the baselines are scored on identical clips: :func:`compare` does it in one call.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.errors import NowcastError
from pipeline.raycluster import connect_ray

DEFAULT_THRESHOLDS_MM_H = (0.5, 2.0, 5.0, 10.0, 30.0)
PROTOCOL = "sequent"
BASELINE_URIS = ("persistence", "optical-flow", "optical_flow")


@dataclass
class EvaluateConfig:
    """What to evaluate and how.

    store : Zarr store written by ``nowcast ingest``.
    model_uri : ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, a checkpoint path,
        ``persistence`` or ``optical-flow``.
    split : catalog split to score (train | valid | test).
    workers : 0 scores in this process; N > 0 on N Ray tasks (``ray_address`` / env
        ``RAY_ADDRESS`` joins a cluster, else a local Ray is started and shut down again).
    batch_size : clips per forward pass.
    max_clips : score only the first N sequential clips (quick checks); None = all.
    out_json : where to write the scores as JSON; None = ``evaluate-<model>-<split>.json`` in the
        current directory. A skill-versus-lead-time plot is written beside it (``*_skill.png``).
    log_to_mlflow : log metrics + JSON + plot to MLflow, under the model's training run when it
        has one, else a new run ``evaluate-<model>`` in ``experiment``.
    in_len, out_len : default from the forecaster (5 and 20 for HKO-7); a trained model's
        in_len cannot change, out_len may be shorter than the model's (forecasts truncated).
    """

    store: str | Path
    model_uri: str
    split: str = "test"
    workers: int = 0
    batch_size: int = 4
    max_clips: int | None = None
    out_json: str | Path | None = None
    tracking_uri: str | None = None
    log_to_mlflow: bool = True
    device: str = "cpu"
    in_len: int | None = None
    out_len: int | None = None
    ray_address: str | None = None
    experiment: str = "nowcast-evaluate"
    thresholds_mm_h: tuple[float, ...] = DEFAULT_THRESHOLDS_MM_H
    interval_s: int | None = None  # None: the store's interval (HKO-7: 360 s)


@dataclass
class EvaluateResult:
    """Scores of one model on one split.

    scores : ``SkillScores.result()``: csi/hss/pod/far/gss (out_len, n_thresholds), mse/mae/b_mse/b_mae
        (out_len,), thresholds (mm/h), counts.
    table : printable summary (average over lead times and last lead time).
    """

    scores: dict
    table: str
    n_clips: int
    json_path: Path | None
    model_uri: str
    model_name: str = ""
    split: str = "test"
    in_len: int = 5
    out_len: int = 20
    plot_path: Path | None = None
    mlflow_run_id: str | None = None
    seconds: float = 0.0
    skill: object = field(default=None, repr=False)  # the merged SkillScores


@dataclass
class CompareResult:
    """Several models scored on identical clips; ``table`` is a rendered rich table."""

    results: list[EvaluateResult]
    table: str
    n_clips: int


# --------------------------------------------------------------------------- inputs
def _absolute_model_uri(uri: str) -> str:
    """Checkpoint paths -> absolute (Ray workers change directory); other URIs unchanged."""
    uri = str(uri).strip()
    if uri in BASELINE_URIS or "://" in uri or uri.startswith("models:/"):
        return uri
    path = Path(uri).expanduser()
    return str(path.resolve()) if path.exists() else uri


def _load_forecaster(model_uri: str, tracking_uri: str | None, device: str, in_len: int | None,
                     out_len: int | None):
    from pipeline.tracking import load_forecaster

    kwargs = {}
    if in_len is not None:
        kwargs["in_len"] = int(in_len)
    if out_len is not None:
        kwargs["out_len"] = int(out_len)
    return load_forecaster(model_uri, tracking_uri=tracking_uri, device=device, **kwargs)


def _lengths(forecaster, in_len: int | None, out_len: int | None) -> tuple[int, int]:
    """(in_len, out_len) to evaluate with; NowcastError if the model cannot produce them."""
    n_in = int(in_len or forecaster.in_len)
    n_out = int(out_len or forecaster.out_len)
    if n_in != forecaster.in_len:
        raise NowcastError(f"{forecaster.name} takes {forecaster.in_len} input frames, not {n_in}; "
                           "leave in_len unset to use the model's")
    if n_out > forecaster.out_len:
        raise NowcastError(f"{forecaster.name} forecasts {forecaster.out_len} frames, fewer than the "
                           f"{n_out} asked for; leave out_len unset or lower it")
    if n_in < 1 or n_out < 1:
        raise NowcastError(f"in_len and out_len must be >= 1, got {n_in} and {n_out}", exit_code=2)
    return n_in, n_out


def model_frame_size(forecaster) -> tuple[int, int] | None:
    """(H, W) the forecaster was built for, or None when it takes any size (baselines)."""
    config = getattr(forecaster, "model_config", None)
    if not config:
        return None
    get = config.get if isinstance(config, dict) else (lambda k: getattr(config, k, None))
    h, w = get("height"), get("width")
    return (int(h), int(w)) if h is not None and w is not None else None


def check_frame_size(forecaster, store_hw: tuple[int, int], where: str) -> None:
    """NowcastError when the model's frame size differs from the data's."""
    model_hw = model_frame_size(forecaster)
    if model_hw is not None and tuple(model_hw) != tuple(store_hw):
        raise NowcastError(
            f"{forecaster.name} was trained on {model_hw[0]}x{model_hw[1]} frames but {where} holds "
            f"{store_hw[0]}x{store_hw[1]} frames; evaluate it on a store ingested at the model's size "
            "or train a model on this store"
        )


def _store_frame_size(store: Path) -> tuple[int, int]:
    from pipeline.store import open_store

    group = open_store(store)
    shape = group["frames"].shape
    return int(shape[1]), int(shape[2])


def _store_interval_s(store: Path) -> int:
    from pipeline.store import Store

    return Store.open(store).interval_s


def evaluation_clip_starts(store: str | Path, split: str, max_clips: int | None = None) -> np.ndarray:
    """The HKO-7 sequential clip starts (int64 epoch s) of ``split``, first ``max_clips`` of them.

    Raises NowcastError when the split has no clips.
    """
    from pipeline.store import Store

    starts = np.sort(np.asarray(Store.open(store).clip_starts(split, PROTOCOL), dtype=np.int64))
    if max_clips is not None:
        if int(max_clips) < 1:
            raise NowcastError(f"max_clips must be >= 1, got {max_clips}", exit_code=2)
        starts = starts[: int(max_clips)]
    if starts.size == 0:
        raise NowcastError(
            f"the {split!r} split of {store} has no evaluation clips (25 frames with at most 2 "
            "consecutive missing). Check `nowcast info` for the split's days; re-ingest with days "
            f"listed for {split!r} (a `{split}_days.txt` day list) or from a longer archive, or "
            "evaluate another split with --split"
        )
    return starts


# --------------------------------------------------------------------------- scoring
def _batches(store: Path, starts_s: np.ndarray, seq_len: int, batch_size: int):
    """Yield (frames, masks) torch float32 (seq_len, B, 1, H, W) over the clips, in order."""
    import torch

    from pipeline.dataset import ClipDataset, collate_clips
    from pipeline.store import Store

    dataset = ClipDataset(Store.open(store), np.asarray(starts_s, dtype=np.int64), seq_len=seq_len)
    loader = torch.utils.data.DataLoader(dataset, batch_size=max(1, int(batch_size)), shuffle=False,
                                         num_workers=0, collate_fn=collate_clips)
    for frames, masks in loader:
        yield frames.transpose(0, 1), masks.transpose(0, 1)


def score_clips(forecaster, store: str | Path, starts_s: np.ndarray, in_len: int, out_len: int,
                batch_size: int = 4, thresholds_mm_h: Sequence[float] = DEFAULT_THRESHOLDS_MM_H,
                progress: bool = False):
    """Score ``forecaster`` on the clips starting at ``starts_s`` (int64 epoch s) in this process.

    Inputs are frames [0, in_len), truth frames [in_len, in_len + out_len) with their masks.
    ``progress`` shows a bar over the batches. Returns a :class:`trajgru.metrics.SkillScores`
    (seq_len = out_len).
    """
    import torch
    from rich.progress import track

    from trajgru.metrics import SkillScores

    skill = SkillScores(out_len, thresholds_mm_h)
    if len(starts_s) == 0:
        return skill
    batches = _batches(Path(store), starts_s, in_len + out_len, batch_size)
    n_batches = -(-len(starts_s) // max(1, int(batch_size)))
    if progress:
        batches = track(batches, total=n_batches, description=f"evaluate {forecaster.name}", transient=True)
    with torch.no_grad():
        for frames, masks in batches:
            pred = forecaster(frames[:in_len])
            if pred.shape[0] < out_len or tuple(pred.shape[1:]) != tuple(frames.shape[1:]):
                raise NowcastError(
                    f"{forecaster.name} returned shape {tuple(pred.shape)} for inputs "
                    f"{tuple(frames[:in_len].shape)}; expected ({out_len}, *{tuple(frames.shape[1:])})")
            pred = pred[:out_len].float().clamp(0.0, 1.0).cpu()
            skill.update(pred, frames[in_len:in_len + out_len].contiguous(),
                         masks[in_len:in_len + out_len].contiguous())
    return skill


def _score_slice(store: str, starts_s: np.ndarray, model_uri: str, tracking_uri: str | None, device: str,
                 in_len: int, out_len: int, batch_size: int, thresholds_mm_h: tuple):
    """One Ray task: load the forecaster and score a slice of clips -> SkillScores."""
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1)))
    forecaster = _load_forecaster(model_uri, tracking_uri, device, in_len, out_len)
    return score_clips(forecaster, store, starts_s, in_len, out_len, batch_size, thresholds_mm_h)


def _worker_runtime_env() -> dict:
    """Make this source tree importable in Ray workers started for these tasks."""
    root = str(Path(__file__).resolve().parent.parent)
    paths = [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}


def score_clips_ray(model_uri: str, store: str | Path, starts_s: np.ndarray, in_len: int, out_len: int,
                    workers: int, batch_size: int = 4, tracking_uri: str | None = None, device: str = "cpu",
                    thresholds_mm_h: Sequence[float] = DEFAULT_THRESHOLDS_MM_H,
                    ray_address: str | None = None):
    """Score on ``workers`` Ray tasks, each a disjoint slice (``pipeline.dataset.shard``); merged SkillScores.

    Every path and the tracking URI are made absolute for the workers. A Ray started here is shut
    down at the end; an already initialised Ray is reused and left running.
    """
    import ray

    from pipeline.dataset import rank_slice as shard
    from trajgru.metrics import SkillScores

    store_abs = str(Path(store).resolve())
    uri = _absolute_model_uri(model_uri)
    if uri.startswith("models:/"):
        from pipeline.tracking import resolve_tracking_uri

        tracking_uri = resolve_tracking_uri(tracking_uri)
    started = connect_ray(ray_address, include_dashboard=False, configure_logging=False)
    try:
        task = ray.remote(num_cpus=1, max_retries=1)(_score_slice).options(runtime_env=_worker_runtime_env())
        refs = []
        for rank in range(int(workers)):
            part = np.asarray(shard(np.asarray(starts_s, np.int64), rank, int(workers)), dtype=np.int64)
            if part.size:
                refs.append(task.remote(store_abs, part, uri, tracking_uri, device, in_len, out_len,
                                        batch_size, tuple(thresholds_mm_h)))
        merged = SkillScores(out_len, thresholds_mm_h)
        for part_scores in ray.get(refs):
            merged.merge(part_scores)
        return merged
    finally:
        if started:
            ray.shutdown()


# --------------------------------------------------------------------------- outputs
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_.") or "model"


def short_name(model_name: str) -> str:
    """A file/run-name friendly model name: checkpoint paths shortened to their last two parts."""
    name = str(model_name)
    if name.startswith("/") or os.sep in name and Path(name).exists():
        name = "_".join(Path(name).parts[-2:])
    return _slug(name)


def _starts_digest(starts_s: np.ndarray) -> dict:
    arr = np.ascontiguousarray(starts_s, dtype="<i8")
    return {
        "count": int(arr.size),
        "first_s": int(arr[0]) if arr.size else None,
        "last_s": int(arr[-1]) if arr.size else None,
        "sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
    }


def evaluation_record(skill, *, model_uri: str, model_name: str, run_id: str | None, split: str,
                      starts_s: np.ndarray, in_len: int, out_len: int, interval_s: int, store: Path,
                      workers: int, seconds: float) -> dict:
    """The JSON document written by :func:`evaluate` (scores + what was scored)."""
    from pipeline.store import Store
    from trajgru.metrics import champion_score

    result = skill.result()
    try:
        champ = champion_score(result)
    except ValueError:
        champ = float("nan")
    return {
        "model_uri": model_uri,
        "model_name": model_name,
        "model_run_id": run_id,
        "split": split,
        "protocol": f"HKO-7 fixed: sequential clips, {in_len} -> {out_len} frames",
        "n_clips": int(len(starts_s)),
        "in_len": int(in_len),
        "out_len": int(out_len),
        "interval_s": int(interval_s),
        "clip_starts": _starts_digest(starts_s),
        "store": Store.open(store).fingerprint(),
        "champion_score": None if math.isnan(champ) else champ,
        "workers": int(workers),
        "seconds": round(float(seconds), 3),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "scores": skill.to_json_dict(),
    }


def write_json(record: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, allow_nan=False))
    return path


def mlflow_metrics(result: dict, split: str, interval_s: int) -> tuple[dict, list[tuple[str, float, int]]]:
    """Summary metrics ``{split}_csi_{thr}``, ``{split}_hss_{thr}`` (average over lead times),
    ``{split}_mse|mae|b_mse|b_mae`` (average over lead times), and per-lead curves
    ``{split}_csi_{thr}_by_lead`` with step = lead time in minutes. NaN values are left out."""
    from trajgru.metrics import nanmean

    summary: dict[str, float] = {}
    curves: list[tuple[str, float, int]] = []
    lead_min = [int((t + 1) * interval_s // 60) for t in range(np.asarray(result["csi"]).shape[0])]
    for k, thr in enumerate(np.asarray(result["thresholds"], dtype=float)):
        for name in ("csi", "hss"):
            col = np.asarray(result[name], dtype=float)[:, k]
            summary[f"{split}_{name}_{thr:g}"] = float(nanmean(col))
            curves += [(f"{split}_{name}_{thr:g}_by_lead", float(v), m) for v, m in zip(col, lead_min)]
    for name in ("mse", "mae", "b_mse", "b_mae"):
        summary[f"{split}_{name}"] = float(nanmean(np.asarray(result[name], dtype=float)))
    summary = {k: v for k, v in summary.items() if math.isfinite(v)}
    curves = [c for c in curves if math.isfinite(c[1])]
    return summary, curves


def log_evaluation_to_mlflow(*, tracking_uri: str | None, experiment: str, run_id: str | None,
                             model_name: str, split: str, result: dict, interval_s: int, n_clips: int,
                             files: Sequence[Path]) -> str:
    """Log metrics, tags and ``files`` (artifacts under ``evaluation/<split>``) to MLflow.

    Under ``run_id`` when given (the model's training run), else a new run ``evaluate-<model>``
    in ``experiment``. Returns the run id. Uses MlflowClient, so an active fluent run is untouched.
    """
    from mlflow.entities import Metric, RunTag

    from mlflow import MlflowClient

    from pipeline.tracking import check_tracking_reachable, resolve_tracking_uri, setup_experiment

    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_reachable(uri)
    client = MlflowClient(uri)
    created = False
    if run_id is None:
        experiment_id = setup_experiment(uri, experiment)
        run = client.create_run(experiment_id, run_name=f"evaluate-{short_name(model_name)}",
                                tags={"nowcast.stage": "evaluate"})
        run_id, created = run.info.run_id, True
    now_ms = int(time.time() * 1000)
    summary, curves = mlflow_metrics(result, split, interval_s)
    metrics = [Metric(k, v, now_ms, 0) for k, v in summary.items()]
    metrics += [Metric(k, v, now_ms, step) for k, v, step in curves]
    tags = [RunTag(f"eval.{split}.n_clips", str(n_clips)), RunTag(f"eval.{split}.model", model_name)]
    try:
        for i in range(0, len(metrics), 900):
            client.log_batch(run_id, metrics=metrics[i:i + 900], tags=tags if i == 0 else [])
        for path in files:
            client.log_artifact(run_id, str(path), artifact_path=f"evaluation/{split}")
    finally:
        if created:
            client.set_terminated(run_id)
    return run_id


# --------------------------------------------------------------------------- entry points
def _evaluate_loaded(cfg: EvaluateConfig, forecaster, starts_s: np.ndarray, in_len: int, out_len: int,
                     write_files: bool = True) -> EvaluateResult:
    """Score an already loaded forecaster on given clips, then write JSON/plot and log to MLflow."""
    from pipeline import viz

    store = Path(cfg.store)
    interval_s = int(cfg.interval_s or _store_interval_s(store))
    t0 = time.perf_counter()
    if int(cfg.workers) > 0:
        skill = score_clips_ray(cfg.model_uri, store, starts_s, in_len, out_len, cfg.workers, cfg.batch_size,
                                cfg.tracking_uri, cfg.device, cfg.thresholds_mm_h, cfg.ray_address)
    else:
        skill = score_clips(forecaster, store, starts_s, in_len, out_len, cfg.batch_size, cfg.thresholds_mm_h,
                            progress=True)
    seconds = time.perf_counter() - t0
    result = skill.result()
    header = f"{forecaster.name} on the {cfg.split} split ({len(starts_s)} clips, {in_len} -> {out_len} frames)"
    table = header + "\n" + skill.summary_table()

    json_path = plot_path = None
    if write_files:
        json_path = Path(cfg.out_json) if cfg.out_json else (
            Path.cwd() / f"evaluate-{short_name(forecaster.name)}-{cfg.split}.json")
        record = evaluation_record(skill, model_uri=str(cfg.model_uri), model_name=forecaster.name,
                                   run_id=forecaster.run_id, split=cfg.split, starts_s=starts_s, in_len=in_len,
                                   out_len=out_len, interval_s=interval_s, store=store, workers=cfg.workers,
                                   seconds=seconds)
        write_json(record, json_path)
        plot_path = viz.plot_skill_vs_lead(result, json_path.with_name(json_path.stem + "_skill.png"),
                                           interval_min=interval_s / 60.0,
                                           title=f"{forecaster.name}, {cfg.split} split, {len(starts_s)} clips")
    run_id = None
    if cfg.log_to_mlflow:
        run_id = log_evaluation_to_mlflow(
            tracking_uri=cfg.tracking_uri, experiment=cfg.experiment, run_id=forecaster.run_id,
            model_name=forecaster.name, split=cfg.split, result=result, interval_s=interval_s,
            n_clips=len(starts_s), files=[p for p in (json_path, plot_path) if p is not None])
    return EvaluateResult(result, table, int(len(starts_s)), json_path, str(cfg.model_uri), forecaster.name,
                          cfg.split, in_len, out_len, plot_path, run_id, seconds, skill)


def _prepare(cfg: EvaluateConfig):
    """Load the forecaster and check it against the store -> (forecaster, in_len, out_len)."""
    store = Path(cfg.store)
    if int(cfg.workers) < 0:
        raise NowcastError(f"workers must be >= 0, got {cfg.workers}", exit_code=2)
    if int(cfg.batch_size) < 1:
        raise NowcastError(f"batch_size must be >= 1, got {cfg.batch_size}", exit_code=2)
    hw = _store_frame_size(store)  # NowcastError if the store is missing
    forecaster = _load_forecaster(cfg.model_uri, cfg.tracking_uri, cfg.device, cfg.in_len, cfg.out_len)
    in_len, out_len = _lengths(forecaster, cfg.in_len, cfg.out_len)
    check_frame_size(forecaster, hw, f"the store {store}")
    return forecaster, in_len, out_len


def evaluate(cfg: EvaluateConfig) -> EvaluateResult:
    """Score ``cfg.model_uri`` on ``cfg.split`` of ``cfg.store`` with the HKO-7 fixed protocol.

    Writes the JSON (and a skill plot beside it), logs to MLflow if asked, returns the scores.
    Raises NowcastError for a missing store, a split without clips, a model whose frame size
    differs from the store's, or an unknown model URI.
    """
    forecaster, in_len, out_len = _prepare(cfg)
    starts = evaluation_clip_starts(cfg.store, cfg.split, cfg.max_clips)
    return _evaluate_loaded(cfg, forecaster, starts, in_len, out_len)


def _fmt(x: float) -> str:
    return "—" if x is None or not math.isfinite(float(x)) else f"{float(x):.4f}"


def render_comparison(results: Sequence[EvaluateResult], title: str = "", width: int = 160) -> str:
    """rich Table (as plain text): one row per model; CSI and HSS per threshold averaged over lead
    times, CSI at the last lead time at 5 mm/h when present, B-MSE and B-MAE averaged over lead times."""
    from rich.console import Console
    from rich.table import Table

    from trajgru.metrics import nanmean

    thresholds = np.asarray(results[0].scores["thresholds"], dtype=float)
    table = Table(title=title or None)
    table.add_column("model", no_wrap=True)
    for name in ("CSI", "HSS"):
        for thr in thresholds:
            table.add_column(f"{name} ≥{thr:g}", justify="right")
    table.add_column("B-MSE", justify="right")
    table.add_column("B-MAE", justify="right")
    for res in results:
        cells = [res.model_name or res.model_uri]
        for name in ("csi", "hss"):
            arr = np.asarray(res.scores[name], dtype=float)
            cells += [_fmt(nanmean(arr[:, k])) for k in range(arr.shape[1])]
        cells += [f"{float(nanmean(np.asarray(res.scores[n], dtype=float))):.1f}" for n in ("b_mse", "b_mae")]
        table.add_row(*cells)
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False).print(table)
    return "\n".join(line.rstrip() for line in buf.getvalue().rstrip("\n").splitlines())


def compare_models(store: str | Path, model_uris: Sequence[str], split: str = "test", *,
                   max_clips: int | None = None, workers: int = 0, batch_size: int = 4,
                   tracking_uri: str | None = None, device: str = "cpu", log_to_mlflow: bool = True,
                   out_dir: str | Path | None = None, ray_address: str | None = None,
                   experiment: str = "nowcast-evaluate") -> CompareResult:
    """Score several models on identical clips (same starts, same in_len/out_len).

    The lengths come from the first model that is not a baseline (else the first URI); baselines
    adapt to them. ``out_dir``: write each model's JSON + plot there (None = no files).
    """
    if not model_uris:
        raise NowcastError("give at least one model to compare", exit_code=2)
    store = Path(store)
    hw = _store_frame_size(store)
    uris = [str(u).strip() for u in model_uris]
    trained = [u for u in uris if u not in BASELINE_URIS]
    lead = trained[0] if trained else uris[0]
    loaded = {lead: _load_forecaster(lead, tracking_uri, device, None, None)}
    in_len, out_len = loaded[lead].in_len, loaded[lead].out_len
    for uri in uris:
        if uri not in loaded:
            loaded[uri] = _load_forecaster(uri, tracking_uri, device, in_len, out_len)
        _lengths(loaded[uri], in_len, out_len)
        check_frame_size(loaded[uri], hw, f"the store {store}")
    starts = evaluation_clip_starts(store, split, max_clips)
    results = []
    for uri in uris:
        out_json = Path(out_dir) / f"evaluate-{short_name(loaded[uri].name)}-{split}.json" if out_dir else None
        cfg = EvaluateConfig(store=store, model_uri=uri, split=split, workers=workers, batch_size=batch_size,
                             max_clips=max_clips, out_json=out_json, tracking_uri=tracking_uri,
                             log_to_mlflow=log_to_mlflow, device=device, in_len=in_len, out_len=out_len,
                             ray_address=ray_address, experiment=experiment)
        results.append(_evaluate_loaded(cfg, loaded[uri], starts, in_len, out_len,
                                        write_files=out_dir is not None))
    title = f"HKO-7 skill on the {split} split: {len(starts)} clips, {in_len} -> {out_len} frames (avg over lead times)"
    return CompareResult(results, render_comparison(results, title), int(len(starts)))


def compare(store: str | Path, model_uris: Sequence[str], split: str = "test", **kwargs) -> str:
    """Score several models on identical clips and return the comparison table as text
    (see :func:`compare_models` for the options)."""
    return compare_models(store, model_uris, split, **kwargs).table


__all__ = [
    "EvaluateConfig",
    "EvaluateResult",
    "CompareResult",
    "evaluate",
    "compare",
    "compare_models",
    "score_clips",
    "score_clips_ray",
    "evaluation_clip_starts",
    "render_comparison",
]
