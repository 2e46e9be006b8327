"""`nowcast`: the command-line interface of the nowcasting pipeline.

Each command parses its options, builds the stage's config dataclass, calls the stage
function in `pipeline` and prints the result. No logic of its own; heavy imports
(ray, mlflow, dask, zarr, torch) happen inside the commands so `nowcast --help` is instant.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import typer

app = typer.Typer(
    name="nowcast",
    help="Precipitation nowcasting at scale: radar archive -> Zarr (Dask) -> TrajGRU (Ray Train) -> "
    "MLflow registry.\n\n"
    "Start with `nowcast demo`, which runs every stage on a small synthetic archive.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}

#: How help shows an option's value: click's names, not Python types; flags show none.
_METAVARS = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "Path": "PATH"}


class _Command(typer.core.TyperCommand):
    """A command whose help shows ``INTEGER``/``TEXT``/``PATH`` placeholders and none for flags (Typer
    itself shows Python types: ``<bool>``, ``<list[str]>``)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
                continue
            bare = param.bare_type().removeprefix("list[").removesuffix("]")
            value = _METAVARS.get(bare, bare.upper())
            if param.param_type_name == "argument":
                param.metavar = param.metavar or param.name.upper()
                param.display_type_rich = lambda ctx, value=value: value  # Typer's own ignores metavar
            elif param.metavar is None:
                param.metavar = value
        return params


def command(**kwargs):
    """``app.command`` with the help of :class:`_Command`."""
    return app.command(cls=_Command, **kwargs)


TRACKING_HELP = "MLflow tracking URI (server URL or sqlite:///file.db). Default: sqlite:///<cwd>/mlflow.db."
RAY_HELP = (
    "Address of an existing Ray cluster (e.g. ray://head:10001 or head:6379). Default: start a local one."
)


def _package_version() -> str:
    try:
        return version("nowcast")
    except PackageNotFoundError:
        return "0+unknown"


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"nowcast {_package_version()}")
        raise typer.Exit()


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    show_version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Global options."""
    _state["debug"] = debug


def _fail(message: str, exit_code: int) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(exit_code)


def _run(stage: Callable, *args, **kwargs):
    """Call a pipeline stage; turn user errors into one line and an exit code (tracebacks only with --debug)."""
    from pipeline.errors import NowcastError

    try:
        return stage(*args, **kwargs)
    except NowcastError as exc:
        if _state["debug"]:
            raise
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted; re-run the same command to resume where it stopped", 130)
    except Exception as exc:  # an unexpected failure: one line, and how to see more
        if _state["debug"]:
            raise
        _fail(f"{type(exc).__name__}: {exc} (re-run with `nowcast --debug ...` for the traceback)", 1)


def _parse_splits(parse: Callable, texts: list[str]) -> list[tuple[str, object]]:
    """Parse each ``--split`` text; a malformed one is a usage error (exit 2)."""
    from pipeline.errors import NowcastError

    try:
        return [parse(text) for text in texts]
    except ValueError as exc:
        raise NowcastError(str(exc), exit_code=2) from exc


def _cell(value) -> str:
    """A table cell for a value: a mapping as one ``key: value`` line per item (nested mappings as
    ``key value, ...``; underscores read as spaces), anything else as text."""
    if isinstance(value, dict):
        return "\n".join(f"{k}: {_cell_inline(v)}" for k, v in value.items()) or "(none)"
    return str(value)


def _cell_inline(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{str(k).replace('_', ' ')} {v}" for k, v in value.items())
    return str(value)


def _source(ctx: typer.Context, name: str) -> str | None:
    """Where option ``name`` got its value: "COMMANDLINE", "ENVIRONMENT", "DEFAULT", ..."""
    source = ctx.get_parameter_source(name)
    return source.name if source is not None else None


def _print_table(rows: list[tuple[str, object]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for key, value in rows:
        table.add_row(str(key), _cell(value))
    Console().print(table)


@command()
def synth(
    out_dir: Path = typer.Argument(..., help="Folder to write the archive into (HKO-7 layout)."),
    days: int = typer.Option(4, help="Number of days to simulate."),
    frames_per_day: int = typer.Option(
        240, help="Frames per day at the 6-minute cadence (240 = a full day)."
    ),
    size: int = typer.Option(480, help="Image size in pixels (square)."),
    start: str = typer.Option("2015-06-01", help="First day, YYYY-MM-DD (UTC)."),
    seed: int = typer.Option(0, help="Random seed (same seed, same bytes)."),
    missing_rate: float = typer.Option(0.01, help="Fraction of frames randomly missing."),
    workers: int | None = typer.Option(None, help="Processes to use (default: all cores)."),
) -> None:
    """Write a synthetic radar archive in the HKO-7 layout (PNG frames, zlib masks, day lists).

    Example: nowcast synth archive/ --days 4 --size 480
    """
    from pipeline.synth import SynthConfig, synth_archive

    cfg = _run(
        SynthConfig,
        out_dir=out_dir,
        start=start,
        days=days,
        frames_per_day=frames_per_day,
        size_px=size,
        seed=seed,
        missing_frame_rate=missing_rate,
        workers=workers,
    )
    result = _run(synth_archive, cfg)
    typer.echo(
        f"wrote {result.n_frames} frames over {result.n_days} days to {result.out_dir} in {result.seconds:.1f} s"
    )


@command()
def ingest(
    archive: Path = typer.Argument(
        ...,
        help="Archive root: an HKO-7 layout (radarPNG/ + radarPNG_mask/), or a "
        "folder tree of ODIM_H5 or CF-NetCDF files.",
    ),
    store: Path = typer.Argument(..., help="Zarr store to create or extend (e.g. data/hko7.zarr)."),
    fmt: str | None = typer.Option(
        None,
        "--format",
        help="Archive format: hko7 | odim | netcdf. "
        "Default: detected from the files (an archive mixing formats is an error).",
    ),
    scheduler: str | None = typer.Option(
        None,
        help="Address of an existing Dask scheduler (tcp://host:8786; default: $DASK_SCHEDULER_ADDRESS, "
        "else a local cluster).",
    ),
    workers: int | None = typer.Option(
        None,
        help="Local Dask worker processes (default: all cores, or the "
        "$DASK_SCHEDULER_ADDRESS cluster; 0: ingest in this process, without Dask).",
    ),
    split: list[str] | None = typer.Option(
        None,
        "--split",
        help="NAME=DAYLIST_FILE or NAME=START..END (repeat per split). Default: the archive's "
        "<split>_days.txt files, else the last 10% of days for test and 10% before them for valid.",
    ),
    crop: str | None = typer.Option(
        None,
        help="ODIM/NetCDF: keep pixels x0,y0,x1,y1 of the source grid "
        "(columns x0..x1-1, rows y0..y1-1 from the top-left).",
    ),
    block: int | None = typer.Option(
        None,
        help="ODIM/NetCDF: average N x N pixels into one (in rain rate, over valid pixels), after --crop.",
    ),
    zr: str | None = typer.Option(
        None,
        help="ODIM/NetCDF: Z-R relation Z = A*R^B as A,B for rain-rate "
        "quantities and block averages (default: HKO-7's 58.53,1.56).",
    ),
    variable: str | None = typer.Option(
        None,
        help="ODIM quantity (DBZH | TH | RATE | ACRR) or NetCDF variable "
        "to read (default: reflectivity if present).",
    ),
    max_frame_pixels: int | None = typer.Option(
        None,
        help="ODIM/NetCDF: refuse files declaring frames of more than this many pixels (H*W), before "
        "reading them (default: 25000000, i.e. 5000x5000).",
    ),
    earliest: str | None = typer.Option(
        "1990-01-01", help="Frames dated before this (UTC) are reported as bad files."
    ),
    latest: str | None = typer.Option(
        None, help="Frames dated after this (UTC) are reported as bad files (default: now + 1 day)."
    ),
) -> None:
    """Turn a radar archive into a chunked, compressed Zarr v3 store of frames, masks and clip catalogs.

    Resumable and idempotent: re-run after an interruption, or after new days arrive, to finish or append;
    the store's --crop, --block, --zr and --variable are reused. One ingest per store at a time.
    Exits 1 (after writing the rest) when frames older than the store's last time were refused.

    Example: nowcast ingest archive/ data/store.zarr --scheduler tcp://10.0.0.5:8786
    """
    import warnings

    from pipeline.catalog import parse_split_option
    from pipeline.ingest import IngestConfig
    from pipeline.ingest import ingest as run_ingest

    splits = dict(_run(_parse_splits, parse_split_option, split)) if split else None
    cfg = _run(
        IngestConfig,
        archive=archive,
        store=store,
        scheduler=scheduler,
        workers=workers,
        splits=splits,
        source=fmt,
        crop=crop,
        block=block,
        zr=zr,
        variable=variable,
        max_frame_pixels=max_frame_pixels,
        earliest_time=earliest,
        latest_time=latest,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        result = _run(run_ingest, cfg)
    for warning in caught:
        typer.secho(f"warning: {warning.message}", fg=typer.colors.YELLOW, err=True)
    typer.echo(
        f"{result.n_frames} frames in {store} ({result.n_new_frames} new) at "
        f"{result.frames_per_s:.0f} frames/s; {result.n_bad} bad files"
    )
    if result.n_bad:
        typer.echo(f"bad files, each with its reason (full list in {result.report_path}):")
        for item in list(result.bad_files)[:10]:
            typer.echo(f"  {item}")
    if result.n_skipped_old:
        _fail(
            f"{result.n_skipped_old} frame(s) older than the store's last time were refused (first: "
            f"{result.first_skipped_old}); the rest is stored; ingest into a new store to include them",
            1,
        )


@command()
def info(
    store: Path = typer.Argument(..., help="A Zarr store written by `nowcast ingest`."),
    verify: bool = typer.Option(
        False,
        "--verify",
        help="Check every chunk of every array, every file against its recorded digest, and the arrays "
        "against each other (exit 1 on any damage).",
    ),
) -> None:
    """Summarise a store: frames, time span, gaps, splits and clip counts, bad-file counts.

    Example: nowcast info data/store.zarr --verify
    """
    from pipeline.store import Store

    handle = _run(lambda: Store.open(store))
    if not verify:
        _print_table(list(_run(handle.describe).items()), title=str(store))
        return
    from pipeline.errors import NowcastError
    from pipeline.progress import track

    try:  # a damaged time or present array stops the summary, not the check
        _print_table(list(handle.describe().items()), title=str(store))
    except NowcastError as exc:
        typer.echo(f"no summary: {exc}")
    result = _run(lambda: handle.verify(lambda items, name: track(items, f"verify {name}", transient=True)))
    checks = (
        "crc32c checksums"
        if result["checksums"]
        else "no checksums (ingested before version 2: only missing or undecodable chunks are found)"
    )
    for item in result["damaged"]:
        when = f" ({item['times'][0]} to {item['times'][1]})" if item["times"] else ""
        typer.echo(f"  {item['array']} frames {item['rows'][0]}-{item['rows'][1]}{when}: {item['problem']}")
    for line in result["problems"]:
        typer.echo(f"  {line}")
    for line in result["unchecked"]:
        typer.echo(f"  not checked: {line}")
    n_damage = len(result["damaged"]) + len(result["problems"])
    if not n_damage:
        typer.echo(
            f"verified {result['chunks_checked']} chunks ({checks}) and the arrays' agreement: no damage"
        )
        return
    _fail(f"{n_damage} damage(s) found in {store} ({checks}); re-ingest the archive into a new store", 1)


@command()
def train(
    ctx: typer.Context,
    store: Path = typer.Argument(..., help="Zarr store written by `nowcast ingest`."),
    preset: str = typer.Option("tiny", help="Model preset: hko7 | mnist++ | tiny."),
    cell: str = typer.Option("trajgru", help="Recurrent cell: trajgru | convgru | convlstm."),
    recipe: str | None = typer.Option(
        None, help="Training recipe: tiny | tiny-demo | hko7-paper (default: the preset's; see README)."
    ),
    workers: int = typer.Option(2, help="Ray Train workers (data-parallel)."),
    gpu: bool = typer.Option(False, "--gpu", help="One GPU per worker (NCCL, bf16 autocast)."),
    fast_path: bool = typer.Option(
        True,
        "--fast-path/--no-fast-path",
        help="trajgru's fast path: fused kernels + channels-last on a GPU, channels-last on the CPU (same weights).",
    ),
    steps: int | None = typer.Option(
        None, help="Training iterations (default: the recipe's; tiny 3000, hko7 100000)."
    ),
    batch_size: int | None = typer.Option(
        None, help="Global batch size (default: the recipe's; tiny 16, hko7 4)."
    ),
    lr: float | None = typer.Option(
        None, help="Peak Adam learning rate (default: the recipe's; tiny 1e-3, hko7 1e-4)."
    ),
    checkpoint_every: int | None = typer.Option(None, help="Checkpoint every N steps."),
    val_every: int | None = typer.Option(None, help="Validate every N steps."),
    early_stop_patience: int | None = typer.Option(
        None, help="Stop after N validations without a better score (0: never)."
    ),
    run_name: str | None = typer.Option(None, help="Ray run name; re-running the same name resumes it."),
    storage_path: Path | None = typer.Option(None, help="Ray storage for checkpoints (shared on a cluster)."),
    config: Path | None = typer.Option(None, help="YAML/JSON file of TrainConfig overrides."),
    register_as: str | None = typer.Option(
        None, help="Register the model under this name in the MLflow registry."
    ),
    experiment: str = typer.Option("nowcast", help="MLflow experiment name."),
    force: bool = typer.Option(
        False, "--force", help="Resume --run-name even on a store other than the one it started on."
    ),
    tracking_uri: str | None = typer.Option(None, envvar="MLFLOW_TRACKING_URI", help=TRACKING_HELP),
    ray_address: str | None = typer.Option(None, envvar="RAY_ADDRESS", help=RAY_HELP),
) -> None:
    """Train a nowcasting model with Ray Train (data-parallel), tracked in MLflow.

    Options on the command line win over the --config file, which wins over environment variables and
    the defaults.

    Example: nowcast train data/store.zarr --preset tiny --workers 2 --steps 300 --register-as nowcast-tiny
    """
    from pipeline.train import TrainConfig, load_config_file
    from pipeline.train import train as run_train

    names = {"gpu": "use_gpu"}  # option -> TrainConfig field, where they differ
    given = {
        source: {
            names.get(k, k): v for k, v in ctx.params.items() if k != "config" and _source(ctx, k) == source
        }
        for source in ("ENVIRONMENT", "COMMANDLINE")
    }
    values = {
        **given["ENVIRONMENT"],
        **(_run(load_config_file, config) if config else {}),
        **given["COMMANDLINE"],
    }
    cfg = _run(TrainConfig, **values)
    result = _run(run_train, cfg)
    rows = [
        ("run id", str(result.run_id)),
        ("final step", f"{result.final_step}{' (stopped early)' if result.stopped_early else ''}"),
        (
            "registered weights",
            f"step {result.best_step} (best validation)" if result.best_step else "last step",
        ),
        ("checkpoint", str(result.checkpoint_path)),
        ("model", str(result.model_uri)),
    ]
    if result.registered_version is not None:
        rows.append(("registered version", f"{register_as or cfg.register_as} v{result.registered_version}"))
        rows.append(
            (
                "champion",
                "yes"
                if result.promoted
                else "no (no validation score)"
                if result.best_step is None
                else "no (did not beat the current champion)",
            )
        )
    _print_table(rows, title="training finished")


@command()
def evaluate(
    store: Path = typer.Argument(..., help="Zarr store written by `nowcast ingest`."),
    model: str = typer.Option(
        ...,
        "--model",
        help="models:/NAME@ALIAS, models:/NAME/VERSION, a checkpoint path, or a baseline: persistence, "
        "optical-flow, extrapolation, sprog, steps (options: steps:members=20,seed=1).",
    ),
    split: str = typer.Option("test", help="Split to score (train | valid | test)."),
    workers: int = typer.Option(0, help="Score in parallel on N Ray workers (0: in this process)."),
    batch_size: int = typer.Option(4, help="Clips per forward pass."),
    max_clips: int | None = typer.Option(None, help="Score only the first N clips (quick checks)."),
    clip_stride: int = typer.Option(
        1, help="Score every Nth clip: an evenly spaced subset (e.g. for STEPS), before --max-clips."
    ),
    neighbourhood: int | None = typer.Option(
        None,
        help="Neighbourhood (pixels) of a deterministic forecast's exceedance probabilities (default: 25).",
    ),
    calibration: Path | None = typer.Option(
        None, help="Score calibrated probabilities from this file (`nowcast calibrate`) instead."
    ),
    out_json: Path | None = typer.Option(
        None,
        help="Write the scores as JSON here (and a skill plot beside it). Default: <store>.evaluations/.",
    ),
    no_log: bool = typer.Option(False, "--no-log", help="Do not log the scores to MLflow."),
    tracking_uri: str | None = typer.Option(
        None,
        envvar="MLFLOW_TRACKING_URI",
        help="MLflow tracking URI to log into. Default: ./mlflow.db if it exists "
        "(evaluate does not create one).",
    ),
    device: str = typer.Option("auto", help="cpu | cuda | auto (a GPU when one is visible)."),
    fast_path: bool = typer.Option(
        True,
        "--fast-path/--no-fast-path",
        help="trajgru's fast path: fused kernels + channels-last on a GPU, channels-last on the CPU (same weights).",
    ),
    ray_address: str | None = typer.Option(None, envvar="RAY_ADDRESS", help=RAY_HELP),
) -> None:
    """Score a model (or a baseline) with the HKO-7 fixed protocol: sequential clips, 5 -> 20 frames.

    Example: nowcast evaluate data/store.zarr --model models:/nowcast-tiny@champion
    """
    from pipeline.evaluate import EvaluateConfig
    from pipeline.evaluate import evaluate as run_evaluate

    cfg = _run(
        EvaluateConfig,
        store=store,
        model_uri=model,
        split=split,
        workers=workers,
        batch_size=batch_size,
        max_clips=max_clips,
        clip_stride=clip_stride,
        **({} if neighbourhood is None else {"neighbourhood_px": neighbourhood}),
        calibration=calibration,
        out_json=out_json,
        log_to_mlflow=not no_log,
        tracking_uri=tracking_uri,
        ray_address=ray_address,
        device=device,
        fast_path=fast_path,
    )
    result = _run(run_evaluate, cfg)
    typer.echo(result.table)
    typer.echo(f"{result.n_clips} clips; scores written to {result.json_path}")
    if result.mlflow_run_id:
        typer.echo(f"logged to MLflow run {result.mlflow_run_id}")
    for note in result.notes:
        typer.echo(f"note: {note}")


@command()
def calibrate(
    store: Path = typer.Argument(..., help="Zarr store written by `nowcast ingest`."),
    model: str = typer.Option(
        ..., "--model", help="A deterministic model or baseline: models:/NAME@ALIAS, a checkpoint, sprog, ..."
    ),
    out: Path = typer.Option(..., "--out", help="The calibration file (JSON) to write."),
    split: str = typer.Option("valid", help="Split to fit on (keep the test split unseen)."),
    clip_stride: int = typer.Option(1, help="Fit on every Nth sequential clip of the split."),
    max_clips: int | None = typer.Option(None, help="At most N clips (quick checks)."),
    thresholds: str = typer.Option("1,5,10", help="Thresholds t of P(rain >= t), mm/h."),
    tracking_uri: str | None = typer.Option(None, envvar="MLFLOW_TRACKING_URI", help=TRACKING_HELP),
    device: str = typer.Option("auto", help="cpu | cuda | auto (a GPU when one is visible)."),
) -> None:
    """Fit calibrated exceedance probabilities P(rain >= t) for a deterministic model, on the validation split.

    Example: nowcast calibrate data/store.zarr --model models:/nowcast-tiny@champion --out calibration.json
    """
    from pipeline.calibrate import CalibrateConfig
    from pipeline.calibrate import calibrate as run_calibrate
    from pipeline.probabilities import parse_thresholds

    cfg = _run(
        CalibrateConfig,
        store=store,
        model_uri=model,
        out=out,
        split=split,
        clip_stride=clip_stride,
        max_clips=max_clips,
        thresholds_mm_h=_run(parse_thresholds, thresholds),
        tracking_uri=tracking_uri,
        device=device,
    )
    result = _run(run_calibrate, cfg)
    rows = [("clips", f"{result.n_clips} of the {split} split"), ("seconds", f"{result.seconds:.1f}")]
    for t, skill in result.brier_skill_calibrated.items():
        before = result.brier_skill_neighbourhood[t]
        rows.append((f"Brier skill >= {t} mm/h", f"{skill:.3f} (25 px neighbourhood: {before:.3f})"))
    _print_table(rows, title=f"calibration written to {result.path}")


@command()
def predict(
    model: str = typer.Option(
        ...,
        "--model",
        help="models:/NAME@ALIAS, models:/NAME/VERSION, a checkpoint path, or a baseline (persistence, "
        "optical-flow, extrapolation, sprog, steps:members=20,seed=1).",
    ),
    out_dir: Path = typer.Option(Path("forecast"), help="Folder for the forecast frames and GIF."),
    store: Path | None = typer.Option(None, help="Take the input frames from this store..."),
    time: str | None = typer.Option(
        None, help="...ending at this time (ISO 8601 UTC, e.g. 2015-06-04T12:00)."
    ),
    inputs: list[Path] | None = typer.Option(
        None, "--input", help="Or: the input PNG frames (HKO-7 encoding), oldest first; repeat the option."
    ),
    fmt: str = typer.Option(
        "png",
        "--format",
        help="png (frames + GIF), zarr (an array) or netcdf (CF-NetCDF rain "
        "rate in mm/h on the store's grid; stores of ODIM/NetCDF archives).",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the files of an earlier forecast in --out-dir."
    ),
    probabilities: str | None = typer.Option(
        None,
        help="Also write P(rain >= t) per lead time for these thresholds in mm/h (e.g. 1,5,10) into the "
        "zarr or netcdf output.",
    ),
    neighbourhood: int | None = typer.Option(
        None, help="Neighbourhood (pixels) of a deterministic forecast's probabilities (default: 25)."
    ),
    calibration: Path | None = typer.Option(
        None, help="Write calibrated probabilities from this file (`nowcast calibrate`) instead."
    ),
    device: str = typer.Option("auto", help="cpu | cuda | auto (a GPU when one is visible)."),
    fast_path: bool = typer.Option(
        True,
        "--fast-path/--no-fast-path",
        help="trajgru's fast path: fused kernels + channels-last on a GPU, channels-last on the CPU (same weights).",
    ),
    tracking_uri: str | None = typer.Option(None, envvar="MLFLOW_TRACKING_URI", help=TRACKING_HELP),
) -> None:
    """Forecast the next frames (20 for hko7) from the last input frames (5 for hko7).

    Example: nowcast predict --model models:/nowcast-tiny@champion --store data/store.zarr --time 2015-06-04T12:00
    """
    from pipeline.predict import PredictConfig
    from pipeline.predict import predict as run_predict
    from pipeline.probabilities import parse_thresholds

    cfg = _run(
        PredictConfig,
        probabilities_mm_h=None if probabilities is None else _run(parse_thresholds, probabilities),
        **({} if neighbourhood is None else {"neighbourhood_px": neighbourhood}),
        calibration=calibration,
        model_uri=model,
        out_dir=out_dir,
        store=store,
        time=time,
        input_pngs=inputs or None,
        format=fmt,
        overwrite=overwrite,
        tracking_uri=tracking_uri,
        device=device,
        fast_path=fast_path,
    )
    result = _run(run_predict, cfg)
    typer.echo(f"wrote {len(result.paths)} forecast file(s) to {out_dir}")
    if result.gif_path:
        typer.echo(f"animation: {result.gif_path}")


@command()
def serve(
    model: str = typer.Option(
        ..., "--model", help="models:/NAME@ALIAS, models:/NAME/VERSION or an MLflow model directory."
    ),
    replicas: int = typer.Option(1, help="Model replicas (each takes a GPU when the cluster has enough)."),
    max_batch_size: int = typer.Option(8, help="Requests a replica forecasts together in one model call."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, help="HTTP port."),
    tracking_uri: str | None = typer.Option(None, envvar="MLFLOW_TRACKING_URI", help=TRACKING_HELP),
    ray_address: str | None = typer.Option(None, envvar="RAY_ADDRESS", help=RAY_HELP),
) -> None:
    """Serve a registered nowcaster over HTTP on Ray Serve (POST /invocations; Ctrl-C stops).

    Example: nowcast serve --model models:/nowcast-tiny@champion --replicas 2 --port 8000
    """
    from pipeline.serving import serve_nowcaster
    from pipeline.tracking import pinned_model_uri, resolve_tracking_uri

    uri = _run(pinned_model_uri, model, tracking_uri)
    _run(
        serve_nowcaster,
        uri,
        resolve_tracking_uri(tracking_uri),
        replicas=replicas,
        max_batch_size=max_batch_size,
        host=host,
        port=port,
        ray_address=ray_address,
    )


@command()
def watch(
    archive: Path = typer.Argument(..., help="The radar archive new files land in (any supported format)."),
    store: Path = typer.Argument(..., help="The Zarr store they are appended to (created when missing)."),
    model: str = typer.Option(
        ..., help="models:/NAME@champion (looked up before every cycle), a checkpoint, ..."
    ),
    out_dir: Path = typer.Option(..., help="Folder for <cycle>/ forecasts, latest, cycles.jsonl, state."),
    fmt: str = typer.Option("png", "--format", help="png | zarr | netcdf (stores of ODIM/NetCDF archives)."),
    keep: int = typer.Option(24, help="Cycle folders kept (the newest)."),
    poll_s: float = typer.Option(2.0, "--poll-s", help="Seconds between looks at the archive."),
    wait_missing_s: float | None = typer.Option(
        None,
        "--wait-missing-s",
        help="Seconds a newer frame waits for a late earlier one (default: one interval).",
    ),
    max_cycles: int | None = typer.Option(None, help="Stop after N cycles (default: run until SIGTERM)."),
    gif: bool = typer.Option(False, "--gif/--no-gif", help="Also write forecast.gif per cycle."),
    threads: int | None = typer.Option(None, help="CPU threads of the model (1 on a shared node)."),
    device: str = typer.Option("auto", help="cpu | cuda | auto (a GPU when one is visible)."),
    tracking_uri: str | None = typer.Option(None, envvar="MLFLOW_TRACKING_URI", help=TRACKING_HELP),
) -> None:
    """Turn every new radar frame into a forecast: a long-running service (SIGTERM ends it).

    Example: nowcast watch archive/ store.zarr --model models:/nowcast-tiny@champion --out-dir forecasts/
    """
    from pipeline.watch import WatchConfig
    from pipeline.watch import watch as run_watch

    cfg = _run(
        WatchConfig,
        archive=archive,
        store=store,
        model_uri=model,
        out_dir=out_dir,
        format=fmt,
        keep=keep,
        poll_s=poll_s,
        wait_missing_s=wait_missing_s,
        max_cycles=max_cycles,
        gif=gif,
        tracking_uri=tracking_uri,
        device=device,
        threads=threads,
    )
    n = _run(run_watch, cfg, echo=lambda line: typer.echo(line))
    typer.echo(f"stopped after {n} cycle(s)")


@command()
def promote(
    name: str = typer.Argument(..., help="Registered model name."),
    model_version: str = typer.Argument(..., metavar="VERSION", help="Version number to point the alias at."),
    alias: str = typer.Option("champion", help="Alias to set."),
    force: bool = typer.Option(
        False, "--force", help="Make a version without a validation score champion anyway."
    ),
    tracking_uri: str | None = typer.Option(None, envvar="MLFLOW_TRACKING_URI", help=TRACKING_HELP),
) -> None:
    """Point a registry alias (default: champion) at a model version by hand.

    Example: nowcast promote nowcast-tiny 3 --alias champion
    """
    from pipeline.tracking import promote as run_promote

    _run(run_promote, name, model_version, alias=alias, tracking_uri=tracking_uri, force=force)
    typer.echo(f"models:/{name}@{alias} -> version {model_version}")


@command()
def demo(
    workdir: Path = typer.Option(
        Path("nowcast-demo"), help="Working directory for the archive, store, runs and outputs."
    ),
    steps: int | None = typer.Option(
        None, help="Training steps (default sized to finish in minutes on 2 cores)."
    ),
    workers: int = typer.Option(2, help="Ray Train workers."),
    tracking_uri: str | None = typer.Option(None, envvar="MLFLOW_TRACKING_URI", help=TRACKING_HELP),
    ray_address: str | None = typer.Option(None, envvar="RAY_ADDRESS", help=RAY_HELP),
    watch: bool = typer.Option(
        False, "--watch", help="Then replay test frames into a live archive and watch forecasts appear."
    ),
    watch_cycles: int = typer.Option(5, help="With --watch: frames replayed (cycles)."),
    watch_every_s: float = typer.Option(3.0, "--watch-every-s", help="With --watch: seconds between frames."),
) -> None:
    """Run the whole pipeline on a small synthetic archive: synth, ingest, train (Ray), evaluate vs baselines,
    register as champion (MLflow), forecast GIF. Safe to re-run. With --watch (after a demo run, or
    running one first): new frames land every few seconds and `nowcast watch` forecasts each one.

    Example: nowcast demo --workdir nowcast-demo; nowcast demo --workdir nowcast-demo --watch
    """
    from pipeline.demo import DemoConfig, replay_watch, run_demo

    overrides = {"steps": steps} if steps is not None else {}
    cfg = _run(
        DemoConfig,
        workdir=workdir,
        workers=workers,
        tracking_uri=tracking_uri,
        ray_address=ray_address,
        **overrides,
    )
    if watch:
        _run(replay_watch, cfg, watch_cycles, watch_every_s, echo=lambda line: typer.echo(line))
        return
    result = _run(run_demo, cfg)
    typer.echo(result.summary)


if __name__ == "__main__":
    sys.exit(app())
