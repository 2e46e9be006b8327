"""``nowcast evaluate``: the HKO-7 fixed evaluation protocol.

Protocol
--------
* Clips: the split's *sequential* clip starts recorded in the store's catalog
  (``Store.clip_starts(split, "sequent")``: 25-frame clips, stride 5,
  at most 2 consecutive missing frames), in time order, optionally only the first ``max_clips``.
* Per clip: the first ``in_len`` frames (5) are the input, the next ``out_len`` frames (20) the
  truth. Absent frames are zeros with mask 0; truth pixels whose mask is false are not scored.
  Forecasts are clamped to [0, 1] (pixel units) before scoring, as frames would be stored.
* Scores: :class:`trajgru.metrics.SkillScores` pooled over every clip (contingency counts summed
  before any ratio), CSI/HSS/POD/FAR/GSS per lead time and threshold (0.5, 2, 5, 10, 30 mm/h),
  MSE/MAE/B-MSE/B-MAE per lead time.
* Verification (:class:`pipeline.verification.Verification`, in rain rate through the store's Z–R):
  FSS per lead time, threshold and neighbourhood; CRPS, Brier score and skill, reliability, ROC AUC of
  the exceedance probabilities (ensembles: member fractions, with a rank histogram; deterministic
  forecasts: neighbourhood probabilities, :mod:`pipeline.probabilities`). An ensemble's deterministic
  scores (HKO-7 and FSS) are those of its mean in rain rate.
* Data-parallel: ``workers=N > 0`` splits the clips with ``pipeline.dataset.rank_slice`` over N Ray
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
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
import torch
from rich.console import Console
from rich.table import Table

from pipeline import files, tracking, viz
from pipeline.baselines_pysteps import Radar, store_radar
from pipeline.dataset import rank_slice
from pipeline.errors import NowcastError, Validated, check
from pipeline.forecasters import Forecaster, absolute_uri, baseline_name, load_forecaster
from pipeline.probabilities import DEFAULT_NEIGHBOURHOOD_PX, CalibratedProbabilities, load_calibration
from pipeline.raycluster import connect_ray
from pipeline.scoring import score_clips
from pipeline.store import Store
from pipeline.verification import Verification, plot_verification, verification_metrics
from trajgru.metrics import DEFAULT_THRESHOLDS_MM_H, SkillScores, champion_score, nanmean

PROTOCOL = "sequent"


@dataclass
class EvaluateConfig(Validated):
    """What to evaluate and how.

    store : Zarr store written by ``nowcast ingest``.
    model_uri : ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, a checkpoint path, or a baseline
        (``pipeline.forecasters.BASELINES``: ``persistence``, ``optical-flow``, ``extrapolation``, ``sprog``,
        ``steps[:members=M,seed=S]``).
    split : catalog split to score (train | valid | test).
    workers : 0 scores in this process; N > 0 on N Ray tasks (``ray_address`` / env
        ``RAY_ADDRESS`` joins a cluster, else a local Ray is started and shut down again).
    batch_size : clips per forward pass.
    max_clips : score only the first N sequential clips (quick checks); None = all.
    clip_stride : score every Nth sequential clip (an evenly spaced subset, applied before ``max_clips``);
        1 = all.
    neighbourhood_px : the neighbourhood (pixels) of a deterministic forecast's exceedance probabilities.
    calibration : a calibration file written by ``nowcast calibrate`` for this model: its calibrated
        probabilities are scored instead of neighbourhood ones (:mod:`pipeline.probabilities`); None: none.
    out_json : where to write the scores as JSON; None = ``<model>-<split>.json`` in the folder
        ``<store>.evaluations`` beside the store (:func:`default_out_dir`; never the current directory).
        A skill-versus-lead-time plot is written beside it (``*_skill.png``).
    log_to_mlflow : log metrics + JSON + plot to MLflow, under the model's training run when the
        tracking store holds it, else a new run ``evaluate-<model>`` in ``experiment``. Nothing is
        logged (and a note says so) when no tracking store is configured and ``./mlflow.db`` does not
        exist: evaluate never creates a tracking store by default.
    in_len, out_len : default from the forecaster (5 and 20 for HKO-7); a trained model's
        in_len cannot change, out_len may be shorter than the model's (forecasts truncated).
    """

    store: Store | str | Path
    model_uri: str
    split: str = "test"
    workers: int = 0
    batch_size: int = 4
    max_clips: int | None = None
    out_json: str | Path | None = None
    tracking_uri: str | None = None
    log_to_mlflow: bool = True
    device: str = "auto"  # "auto": a GPU when one is visible
    fast_path: bool = True  # trajgru.fast.enable_fast_path for trained models
    in_len: int | None = None
    out_len: int | None = None
    ray_address: str | None = None
    experiment: str = "nowcast-evaluate"
    thresholds_mm_h: tuple[float, ...] = DEFAULT_THRESHOLDS_MM_H
    interval_s: int | None = None  # None: the store's interval (HKO-7: 360 s)
    clip_stride: int = 1
    neighbourhood_px: int = DEFAULT_NEIGHBOURHOOD_PX
    calibration: str | Path | None = None

    def rules(self):
        yield self.workers >= 0, f"workers must be >= 0, got {self.workers}"
        yield self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"
        yield self.max_clips is None or self.max_clips >= 1, f"max_clips must be >= 1, got {self.max_clips}"
        yield self.clip_stride >= 1, f"clip_stride must be >= 1, got {self.clip_stride}"
        yield self.neighbourhood_px >= 1, f"neighbourhood_px must be >= 1, got {self.neighbourhood_px}"


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
    skill: object = field(default=None, repr=False)  # the merged SkillScores (None when reused)
    verification: dict | None = None  # Verification.result() (None when reused from an older record)
    notes: list[str] = field(default_factory=list)  # what the user should know (e.g. not logged)
    reused: bool = False  # scores read back from an earlier JSON record
    interval_s: int = 360  # the cadence the lead times are counted in


@dataclass
class CompareResult:
    """Several models scored on identical clips; ``table`` is a rendered rich table."""

    results: list[EvaluateResult]
    table: str
    n_clips: int


# --------------------------------------------------------------------------- inputs
def _load(
    model_uri: str,
    tracking_uri: str | None,
    device: str,
    in_len: int | None,
    out_len: int | None,
    fast_path: bool = True,
    radar: Radar | None = None,
) -> Forecaster:
    return load_forecaster(
        model_uri,
        tracking_uri=tracking_uri,
        device=device,
        in_len=in_len,
        out_len=out_len,
        fast_path=fast_path,
        radar=radar,
    )


def _lengths(forecaster: Forecaster, in_len: int | None, out_len: int | None) -> tuple[int, int]:
    """(in_len, out_len) to evaluate with; NowcastError if the model cannot produce them."""
    n_in = int(in_len or forecaster.in_len)
    n_out = int(out_len or forecaster.out_len)
    if n_in != forecaster.in_len:
        raise NowcastError(
            f"{forecaster.name} takes {forecaster.in_len} input frames, not {n_in}; "
            "leave in_len unset to use the model's"
        )
    if n_out > forecaster.out_len:
        raise NowcastError(
            f"{forecaster.name} forecasts {forecaster.out_len} frames, fewer than the "
            f"{n_out} asked for; leave out_len unset or lower it"
        )
    if n_in < 1 or n_out < 1:
        raise NowcastError(f"in_len and out_len must be >= 1, got {n_in} and {n_out}", exit_code=2)
    return n_in, n_out


def _protocol_clips(
    store: Store, split: str, max_clips: int | None = None, clip_stride: int = 1
) -> np.ndarray:
    """The HKO-7 sequential clip starts (int64 epoch s) of ``split``: every ``clip_stride``-th one, the first
    ``max_clips`` of those.

    Raises NowcastError when the split has no clips.
    """
    starts = store.clip_starts(split, PROTOCOL)[:: int(clip_stride)][
        : None if max_clips is None else int(max_clips)
    ]
    if starts.size == 0:
        raise NowcastError(
            f"the {split!r} split of {store.path} has no evaluation clips (25 frames with at most 2 "
            "consecutive missing). Check `nowcast info` for the split's days; re-ingest with days "
            f"listed for {split!r} (a `{split}_days.txt` day list) or from a longer archive, or "
            "evaluate another split with --split"
        )
    return starts


# --------------------------------------------------------------------------- scoring
def _score_slice(
    store: Store,
    starts_s: np.ndarray,
    model_uri: str,
    tracking_uri: str | None,
    device: str,
    in_len: int,
    out_len: int,
    batch_size: int,
    thresholds_mm_h: tuple,
    fast_path: bool,
    neighbourhood_px: int = DEFAULT_NEIGHBOURHOOD_PX,
    calibration: CalibratedProbabilities | None = None,
) -> tuple[SkillScores, Verification]:
    """One Ray task: load the forecaster and score a slice of clips -> (SkillScores, Verification)."""
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1)))
    radar = store_radar(store)
    forecaster = _load(model_uri, tracking_uri, device, in_len, out_len, fast_path, radar)
    verification = Verification(out_len, forecaster.members, neighbourhood_px, calibration=calibration)
    skill = score_clips(
        forecaster,
        store,
        starts_s,
        in_len,
        out_len,
        batch_size,
        thresholds_mm_h,
        verification=verification,
        radar=radar,
    )
    return skill, verification


def score_clips_ray(
    model_uri: str,
    store: Store,
    starts_s: np.ndarray,
    in_len: int,
    out_len: int,
    workers: int,
    batch_size: int = 4,
    tracking_uri: str | None = None,
    device: str = "cpu",
    thresholds_mm_h: Sequence[float] = DEFAULT_THRESHOLDS_MM_H,
    ray_address: str | None = None,
    fast_path: bool = True,
    neighbourhood_px: int = DEFAULT_NEIGHBOURHOOD_PX,
    members: int = 1,
    calibration: CalibratedProbabilities | None = None,
) -> tuple[SkillScores, Verification]:
    """Score on ``workers`` Ray tasks, each a disjoint slice (``pipeline.dataset.rank_slice``); merged
    (SkillScores, Verification) (``members``: the forecaster's ensemble size; ``calibration``: its
    calibrated probabilities, or None).

    The store travels as its absolute path, checkpoint paths and the tracking URI are made absolute;
    a Ray started here ships this source tree to the tasks (``raycluster.connect_ray``) and is shut
    down at the end; an already initialised Ray is reused and left running.
    """
    uri = absolute_uri(model_uri)
    if uri.startswith("models:/"):
        tracking_uri = tracking.resolve_tracking_uri(tracking_uri)
    started = connect_ray(ray_address, include_dashboard=False, configure_logging=False)
    try:
        task = ray.remote(num_cpus=1, max_retries=1)(_score_slice)
        refs = []
        for rank in range(int(workers)):
            part = rank_slice(np.asarray(starts_s, np.int64), rank, int(workers))
            if part.size:
                refs.append(
                    task.remote(
                        store,
                        part,
                        uri,
                        tracking_uri,
                        device,
                        in_len,
                        out_len,
                        batch_size,
                        tuple(thresholds_mm_h),
                        fast_path,
                        neighbourhood_px,
                        calibration,
                    )
                )
        merged = SkillScores(out_len, thresholds_mm_h)
        verification = Verification(out_len, members, neighbourhood_px, calibration=calibration)
        for part_scores, part_verification in ray.get(refs):
            merged.merge(part_scores)
            verification.merge(part_verification)
        return merged, verification
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


def json_name(model_name: str, split: str) -> str:
    """The file name of a model's scores on a split: ``<short model name>-<split>.json``."""
    return f"{short_name(model_name)}-{_slug(split)}.json"


def default_out_dir(store: str | Path) -> Path:
    """Where evaluations of ``store`` go when no path is given: ``<store>.evaluations`` beside it."""
    store = Path(store).expanduser().absolute()
    return store.parent / f"{store.name}.evaluations"


def _starts_digest(starts_s: np.ndarray) -> dict:
    arr = np.ascontiguousarray(starts_s, dtype="<i8")
    return {
        "count": int(arr.size),
        "first_s": int(arr[0]) if arr.size else None,
        "last_s": int(arr[-1]) if arr.size else None,
        "sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
    }


def evaluation_record(
    skill,
    *,
    model_uri: str,
    model_name: str,
    run_id: str | None,
    split: str,
    starts_s: np.ndarray,
    in_len: int,
    out_len: int,
    interval_s: int,
    store: Store,
    workers: int,
    seconds: float,
    verification: Verification | None = None,
) -> dict:
    """The JSON document written by :func:`evaluate` (scores + what was scored; ``verification``: the
    spatial and probabilistic scores, under the key ``verification``)."""
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
        "store": store.fingerprint(),
        "champion_score": None if math.isnan(champ) else champ,
        "workers": int(workers),
        "seconds": round(float(seconds), 3),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "scores": skill.to_json_dict(),
        "verification": None if verification is None else verification.to_json_dict(),
    }


#: The fields of an evaluation record that must match for its scores to be reused.
_SAME_EVALUATION = ("model_name", "split", "in_len", "out_len", "interval_s", "clip_starts", "store")


def reuse_record(path: Path, expected: dict) -> dict | None:
    """The record at ``path`` when it scored what ``expected`` describes (same model name, split, clip
    starts, lengths, cadence, store fingerprint and thresholds), else None (also for an unreadable file)."""
    try:
        record = json.loads(Path(path).read_text())
        same = all(record[key] == expected[key] for key in _SAME_EVALUATION)
        return record if same and record["scores"]["thresholds"] == expected["scores"]["thresholds"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def log_evaluation_to_mlflow(
    *,
    tracking_uri: str,
    experiment: str,
    run_id: str | None,
    model_name: str,
    split: str,
    result: dict,
    interval_s: int,
    n_clips: int,
    files: Sequence[Path],
    verified: dict | None = None,
) -> str:
    """Log :func:`tracking.skill_metrics` (step 0), :func:`tracking.skill_curves`,
    :func:`pipeline.verification.verification_metrics` of ``verified`` (FSS, CRPS, Brier skill, ...), tags
    and ``files`` (artifacts under ``evaluation/<split>``).

    Under ``run_id`` when given (the model's training run), else a new run ``evaluate-<model>``
    in ``experiment``. Returns the run id.
    """
    summary = tracking.skill_metrics(result, split)
    return tracking.log_to_run(
        tracking_uri=tracking_uri,
        run_id=run_id,
        experiment=experiment,
        run_name=f"evaluate-{short_name(model_name)}",
        new_run_tags={"nowcast.stage": "evaluate"},
        metrics=[(k, v, 0) for k, v in summary.items()]
        + tracking.skill_curves(result, split, interval_s)
        + ([] if verified is None else verification_metrics(verified, split)),
        tags={f"eval.{split}.n_clips": str(n_clips), f"eval.{split}.model": model_name},
        files=files,
        artifact_path=f"evaluation/{split}",
    )


def _log(
    cfg: EvaluateConfig,
    forecaster: Forecaster,
    result: dict,
    interval_s: int,
    n_clips: int,
    paths: Sequence[Path],
    notes: list[str],
    verified: dict | None = None,
) -> str | None:
    """Log an evaluation where :class:`EvaluateConfig` says; returns the run id (None when not logged,
    with the reason appended to ``notes``)."""
    uri = tracking.existing_tracking_uri(cfg.tracking_uri)
    if uri is None:
        notes.append(
            "not logged to MLflow: no tracking store is configured and ./mlflow.db does not exist "
            "(pass --tracking-uri or set MLFLOW_TRACKING_URI to log; --no-log to skip silently)"
        )
        return None
    run_id = forecaster.run_id
    if run_id is not None and not tracking.run_exists(run_id, uri):
        notes.append(
            f"the model's training run {run_id} is not in the tracking store {uri}; the evaluation "
            "is logged into a new run (pass the --tracking-uri it was trained with to log it there)"
        )
        run_id = None
    return log_evaluation_to_mlflow(
        tracking_uri=uri,
        experiment=cfg.experiment,
        run_id=run_id,
        model_name=forecaster.name,
        split=cfg.split,
        result=result,
        interval_s=interval_s,
        n_clips=n_clips,
        files=paths,
        verified=verified,
    )


# --------------------------------------------------------------------------- entry points
def _evaluate_loaded(
    cfg: EvaluateConfig,
    store: Store,
    forecaster: Forecaster,
    starts_s: np.ndarray,
    in_len: int,
    out_len: int,
    out_json: Path | None,
) -> EvaluateResult:
    """Score an already loaded forecaster on given clips, write the JSON + skill plot to ``out_json``
    (None: nowhere), and log both to MLflow when asked."""
    interval_s = int(cfg.interval_s or store.interval_s)
    calibration = load_calibration(cfg.calibration, forecaster, out_len)
    t0 = time.perf_counter()
    if int(cfg.workers) > 0:
        skill, verification = score_clips_ray(
            cfg.model_uri,
            store,
            starts_s,
            in_len,
            out_len,
            cfg.workers,
            cfg.batch_size,
            cfg.tracking_uri,
            cfg.device,
            cfg.thresholds_mm_h,
            cfg.ray_address,
            cfg.fast_path,
            cfg.neighbourhood_px,
            forecaster.members,
            calibration,
        )
    else:
        verification = Verification(
            out_len, forecaster.members, cfg.neighbourhood_px, calibration=calibration
        )
        skill = score_clips(
            forecaster,
            store,
            starts_s,
            in_len,
            out_len,
            cfg.batch_size,
            cfg.thresholds_mm_h,
            progress=True,
            verification=verification,
            radar=store_radar(store),
        )
    seconds = time.perf_counter() - t0
    result = skill.result()
    header = (
        f"{forecaster.name} on the {cfg.split} split ({len(starts_s)} clips, {in_len} -> {out_len} frames)"
    )
    record = evaluation_record(
        skill,
        model_uri=str(cfg.model_uri),
        model_name=forecaster.name,
        run_id=forecaster.run_id,
        split=cfg.split,
        starts_s=starts_s,
        in_len=in_len,
        out_len=out_len,
        interval_s=interval_s,
        store=store,
        workers=cfg.workers,
        seconds=seconds,
        verification=verification,
    )
    verified = verification.result()
    notes: list[str] = []
    run_id = None
    with tempfile.TemporaryDirectory() as tmp:
        json_path = Path(out_json) if out_json else Path(tmp) / json_name(forecaster.name, cfg.split)
        plot_path = json_path.with_name(json_path.stem + "_skill.png")
        verification_plot = json_path.with_name(json_path.stem + "_verification.png")
        if out_json or cfg.log_to_mlflow:
            files.write_json(json_path, record)  # (creates the folder)
            viz.plot_skill_vs_lead(
                result,
                plot_path,
                interval_min=interval_s / 60.0,
                title=f"{forecaster.name}, {cfg.split} split, {len(starts_s)} clips",
            )
            plot_verification(
                verified, verification_plot, f"{forecaster.name}, {cfg.split} split", interval_s
            )
        if cfg.log_to_mlflow:
            paths = [json_path, plot_path, verification_plot]
            run_id = _log(cfg, forecaster, result, interval_s, len(starts_s), paths, notes, verified)
    if not out_json:
        json_path = plot_path = None
    return EvaluateResult(
        result,
        header + "\n" + skill.summary_table(),
        int(len(starts_s)),
        json_path,
        str(cfg.model_uri),
        forecaster.name,
        cfg.split,
        in_len,
        out_len,
        plot_path,
        run_id,
        seconds,
        skill,
        verification=verified,
        notes=notes,
        interval_s=interval_s,
    )


def _prepare(cfg: EvaluateConfig) -> tuple[Store, Forecaster, int, int]:
    """Open the store, load the forecaster and check one against the other
    -> (store, forecaster, in_len, out_len)."""
    store = Store.of(cfg.store)  # NowcastError if the store is missing
    forecaster = _load(
        cfg.model_uri,
        cfg.tracking_uri,
        cfg.device,
        cfg.in_len,
        cfg.out_len,
        cfg.fast_path,
        store_radar(store),
    )
    in_len, out_len = _lengths(forecaster, cfg.in_len, cfg.out_len)
    forecaster.check_frame_size(store.frame_size, f"the store {cfg.store}")
    return store, forecaster, in_len, out_len


def evaluate(cfg: EvaluateConfig) -> EvaluateResult:
    """Score ``cfg.model_uri`` on ``cfg.split`` of ``cfg.store`` with the HKO-7 fixed protocol.

    Writes the JSON (and a skill plot beside it; :attr:`EvaluateConfig.out_json`), logs to MLflow if
    asked, returns the scores. Raises NowcastError for a missing store, a split without clips, a model
    whose frame size differs from the store's, or an unknown model URI.
    """
    store, forecaster, in_len, out_len = _prepare(cfg)
    starts = _protocol_clips(store, cfg.split, cfg.max_clips, cfg.clip_stride)
    out_json = Path(cfg.out_json or default_out_dir(cfg.store) / json_name(forecaster.name, cfg.split))
    return _evaluate_loaded(cfg, store, forecaster, starts, in_len, out_len, out_json)


def _fmt(x: float) -> str:
    return "—" if x is None or not math.isfinite(float(x)) else f"{float(x):.4f}"


def table_row(result: EvaluateResult) -> dict:
    """The numbers of a comparison row, means over the lead times (NaN ignored; None when undefined):
    ``{"csi": {"0.5": ..., "5": ...}, "hss": {...}, "b_mse", "b_mae", "csi5_by_lead", "n_clips",
    "interval_s"}`` (the row format of ``benchmarks/bench_skill.py`` results)."""

    def mean(values) -> float | None:
        value = float(nanmean(np.asarray(values, dtype=float)))
        return value if math.isfinite(value) else None

    scores = result.scores
    thresholds = [float(t) for t in np.asarray(scores["thresholds"], dtype=float)]
    csi, hss = np.asarray(scores["csi"], dtype=float), np.asarray(scores["hss"], dtype=float)
    five = thresholds.index(5.0) if 5.0 in thresholds else None
    return {
        "csi": {f"{t:g}": mean(csi[:, k]) for k, t in enumerate(thresholds)},
        "hss": {f"{t:g}": mean(hss[:, k]) for k, t in enumerate(thresholds)},
        "b_mse": mean(scores["b_mse"]),
        "b_mae": mean(scores["b_mae"]),
        "csi5_by_lead": None if five is None else [None if math.isnan(v) else float(v) for v in csi[:, five]],
        "n_clips": int(result.n_clips),
        "interval_s": int(result.interval_s),
    }


def render_comparison(results: Sequence[EvaluateResult], title: str = "", width: int = 160) -> str:
    """rich Table (as plain text): one row per model (:func:`table_row`): CSI and HSS per threshold, B-MSE
    and B-MAE, each the mean over lead times."""
    thresholds = np.asarray(results[0].scores["thresholds"], dtype=float)
    table = Table(title=title or None)
    table.add_column("model", no_wrap=True)
    for name in ("CSI", "HSS"):
        for thr in thresholds:
            table.add_column(f"{name} ≥{thr:g}", justify="right")
    table.add_column("B-MSE", justify="right")
    table.add_column("B-MAE", justify="right")
    for res in results:
        row = table_row(res)
        cells = [
            res.model_name or res.model_uri,
            *[_fmt(v) for v in row["csi"].values()],
            *[_fmt(v) for v in row["hss"].values()],
        ]
        cells += ["—" if row[n] is None else f"{row[n]:.1f}" for n in ("b_mse", "b_mae")]
        table.add_row(*cells)
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False).print(table)
    return "\n".join(line.rstrip() for line in buf.getvalue().rstrip("\n").splitlines())


def _reused_result(record: dict, path: Path, uri: str) -> EvaluateResult:
    """An EvaluateResult from an earlier record (see :func:`reuse_record`)."""
    scores = {
        k: np.asarray(v, dtype=float) if isinstance(v, list) else v for k, v in record["scores"].items()
    }
    header = (
        f"{record['model_name']} on the {record['split']} split ({record['n_clips']} clips): scores reused "
        f"from {path}"
    )
    return EvaluateResult(
        scores,
        header,
        int(record["n_clips"]),
        path,
        uri,
        record["model_name"],
        record["split"],
        int(record["in_len"]),
        int(record["out_len"]),
        path.with_name(path.stem + "_skill.png"),
        reused=True,
        interval_s=int(record["interval_s"]),
    )


def compare_models(
    store: Store | str | Path,
    model_uris: Sequence[str],
    split: str = "test",
    *,
    max_clips: int | None = None,
    workers: int = 0,
    batch_size: int = 4,
    tracking_uri: str | None = None,
    device: str = "cpu",
    log_to_mlflow: bool = True,
    out_dir: str | Path | None = None,
    ray_address: str | None = None,
    experiment: str = "nowcast-evaluate",
    fast_path: bool = True,
    reuse_baselines: bool = False,
) -> CompareResult:
    """Score several models on identical clips (same starts, same in_len/out_len).

    The lengths come from the first model that is not a baseline (else the first URI); baselines
    adapt to them. ``out_dir``: write each model's JSON + plot there (None = no files).
    ``reuse_baselines``: a baseline whose JSON in ``out_dir`` scored the same clips of the same store
    (:func:`reuse_record`) is not scored or logged again; its scores are read back.
    """
    check(bool(model_uris), "give at least one model to compare")
    check(max_clips is None or int(max_clips) >= 1, f"max_clips must be >= 1, got {max_clips}")
    handle = Store.of(store)
    uris = [str(u).strip() for u in model_uris]
    trained = [u for u in uris if baseline_name(u) is None]
    lead = trained[0] if trained else uris[0]
    radar = store_radar(handle)
    loaded = {lead: _load(lead, tracking_uri, device, None, None, fast_path, radar)}
    in_len, out_len = loaded[lead].in_len, loaded[lead].out_len
    for uri in uris:
        if uri not in loaded:
            loaded[uri] = _load(uri, tracking_uri, device, in_len, out_len, fast_path, radar)
        _lengths(loaded[uri], in_len, out_len)
        loaded[uri].check_frame_size(handle.frame_size, f"the store {store}")
    starts = _protocol_clips(handle, split, max_clips)
    results = []
    for uri in uris:
        out_json = Path(out_dir) / json_name(loaded[uri].name, split) if out_dir else None
        if reuse_baselines and out_json is not None and baseline_name(uri) is not None:
            expected = evaluation_record(
                SkillScores(out_len),
                model_uri=uri,
                model_name=loaded[uri].name,
                run_id=None,
                split=split,
                starts_s=starts,
                in_len=in_len,
                out_len=out_len,
                interval_s=handle.interval_s,
                store=handle,
                workers=workers,
                seconds=0,
            )
            record = reuse_record(out_json, expected)
            if record is not None:
                results.append(_reused_result(record, out_json, uri))
                continue
        cfg = EvaluateConfig(
            store=store,
            model_uri=uri,
            split=split,
            workers=workers,
            batch_size=batch_size,
            max_clips=max_clips,
            out_json=out_json,
            tracking_uri=tracking_uri,
            log_to_mlflow=log_to_mlflow,
            device=device,
            in_len=in_len,
            out_len=out_len,
            ray_address=ray_address,
            experiment=experiment,
            fast_path=fast_path,
        )
        results.append(_evaluate_loaded(cfg, handle, loaded[uri], starts, in_len, out_len, out_json))
    title = (
        f"HKO-7 skill on the {split} split: {len(starts)} clips, {in_len} -> {out_len} frames "
        "(avg over lead times)"
    )
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
    "render_comparison",
]
