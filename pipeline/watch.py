"""``nowcast watch``: every new radar frame becomes a forecast, as a long-running service.

One loop, every ``poll_s`` seconds:

1. **Notice** new or changed files in the archive (any format of ``pipeline.sources``; a cheap walk of
   names, sizes and modification times). Each frame time remembers when its file was first seen.
2. **Append** them to the store with ingest's own code (``pipeline.ingest.ingest``: the store's lock,
   checksums, bad files reported), in time order.
3. **Forecast** each new cycle (a frame time in the store) in time order, write it in the chosen format
   (``pipeline.outputs``) to ``DIR/<YYYYmmddTHHMMSSZ>/`` (staged, then renamed into place), move the
   ``DIR/latest`` symlink onto it (``os.replace``, atomic), append one JSON record to
   ``DIR/cycles.jsonl``, persist the state (``DIR/watch_state.json``, atomic) and delete the oldest
   cycle folders beyond ``keep``.

Missing-frame policy
--------------------
A cycle T needs the ``in_len`` frames T - (in_len-1)·interval … T, all present (a bad file counts as
missing). Frames enter the store in time order. When a newer frame arrives while an earlier slot is
still empty, the newer one is held back for up to ``wait_missing_s`` (wall-clock seconds from when it
was seen) for the late one: a late frame arriving within that wait is appended and every cycle is
forecast in time order. After the wait the slot is declared missing (one line, and a ``gap`` record):
the cycles whose inputs include it are recorded as ``skipped`` with the missing times, and forecasts
resume once ``in_len`` consecutive frames follow the gap. A file arriving after its slot was declared
missing (or a second file for a time already in the store) is reported and not used: no cycle is
forecast twice, and every cycle is either forecast or recorded as skipped with the reason.

State and restarts
------------------
``watch_state.json`` holds the last settled cycle and when each pending frame was seen; it is written
atomically after every cycle. A cycle folder is published (renamed) before the state moves past it,
so after ``kill -9`` a restart finds the folder, records the cycle from the folder's ``cycle.json``
(once) and goes on: no cycle is redone or skipped. On a first start the cycles begin at the newest
frame the store holds (older frames are history, not cycles to catch up).

A ``models:/NAME@ALIAS`` model is looked up before every cycle: when the alias moved, the new
version is loaded between cycles (the record says which version made each forecast). SIGTERM or
SIGINT finishes the current cycle and ends the loop (exit 0).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from pipeline import files, outputs
from pipeline.errors import NowcastError, check
from pipeline.forecasters import Forecaster, load_forecaster
from pipeline.ingest import IngestConfig, IngestWarning, ingest
from pipeline.outputs import FORMATS, Forecast
from pipeline.sources import Source, detect_format, walk_files
from pipeline.store import Store
from pipeline.times import iso_utc
from pipeline.tracking import model_version_label

STATE_FILE = "watch_state.json"
RECORDS_FILE = "cycles.jsonl"
CYCLE_FILE = "cycle.json"
LATEST = "latest"
_CYCLE_FORMAT = "%Y%m%dT%H%M%SZ"


def cycle_name(time_s: int) -> str:
    """The folder of the cycle whose last input frame is at ``time_s``: ``20150601T120000Z``."""
    return datetime.fromtimestamp(int(time_s), UTC).strftime(_CYCLE_FORMAT)


def _is_cycle_name(name: str) -> bool:
    try:
        datetime.strptime(name, _CYCLE_FORMAT)
    except ValueError:
        return False
    return True


@dataclass
class WatchConfig:
    """What to watch, what to forecast with and where to write it.

    archive : the radar archive that new files land in (any format of ``pipeline.sources``).
    store : the Zarr store they are appended to (created by the first append when missing).
    model_uri : ``models:/NAME@ALIAS`` (looked up again before every cycle), ``models:/NAME/VERSION``,
        a checkpoint, or a baseline name.
    out_dir : where ``<cycle>/``, ``latest``, ``cycles.jsonl`` and ``watch_state.json`` go.
    format : an output format of ``pipeline.outputs`` (png, zarr, netcdf).
    keep : cycle folders kept (the newest ones).
    poll_s : seconds between looks at the archive.
    wait_missing_s : wall-clock seconds a newer frame waits for an empty earlier slot before the slot is
        declared missing (see the module doc); None = one store interval.
    max_cycles : stop after this many settled cycles (None: run until SIGTERM).
    gif : also write ``forecast.gif`` per cycle (about a second more per cycle).
    threads : CPU threads of the model (``torch.set_num_threads``); None = torch's default. On a node
        shared with other work, 1 avoids the threads waiting for each other (measured: the tiny model
        at 96² took 2.5 s with 1 thread and 33 s with 2 on a 2-core machine at load 50).
    """

    archive: str | Path
    store: str | Path
    model_uri: str
    out_dir: str | Path
    format: str = "png"
    keep: int = 24
    poll_s: float = 2.0
    wait_missing_s: float | None = None
    max_cycles: int | None = None
    gif: bool = False
    tracking_uri: str | None = None
    device: str = "auto"
    threads: int | None = None

    def __post_init__(self):
        check(self.format in FORMATS, f"unknown format {self.format!r}: use {', '.join(FORMATS)}")
        check(self.threads is None or self.threads >= 1, f"--threads must be >= 1, got {self.threads}")
        check(self.keep >= 1, f"--keep must be >= 1 (cycle folders kept), got {self.keep}")
        check(self.poll_s > 0, f"--poll-s must be > 0 seconds, got {self.poll_s}")
        check(
            self.wait_missing_s is None or self.wait_missing_s >= 0,
            f"--wait-missing-s must be >= 0 seconds, got {self.wait_missing_s}",
        )
        check(
            Path(self.archive).is_dir(), f"the archive {self.archive} is not a folder; give the archive root"
        )


@dataclass
class _State:
    """What survives a restart (``watch_state.json``)."""

    last_cycle_s: int | None = None  # the last settled cycle (forecast or skipped)
    seen_s: dict = field(default_factory=dict)  # {frame time_s (str): unix time its file was seen}
    cycles: int = 0  # settled cycles over the service's life

    @classmethod
    def load(cls, path: Path) -> _State:
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
            return cls(data.get("last_cycle_s"), dict(data.get("seen_s", {})), int(data.get("cycles", 0)))
        except (ValueError, TypeError) as exc:
            raise NowcastError(f"{path} is damaged ({exc}); move it away to start the watch afresh") from exc

    def save(self, path: Path) -> None:
        files.write_json(path, asdict(self))


class _Scanner:
    """Notices new and changed files of the archive (name, size, mtime) and when they were first seen."""

    def __init__(self, root: Path):
        self.root = root
        self.known: dict[str, tuple[int, int]] = {}
        self.seen_s: dict[str, float] = {}

    def poll(self) -> list[str]:
        """The files new or changed since the last call (their seen time is now)."""
        now, changed = time.time(), []
        for rel in walk_files(self.root):
            try:
                st = os.stat(self.root / rel, follow_symlinks=False)
            except FileNotFoundError:
                continue
            key = (st.st_size, st.st_mtime_ns)
            if self.known.get(rel) != key:
                self.known[rel] = key
                self.seen_s[rel] = now
                changed.append(rel)
        return changed


@dataclass
class CycleRecord:
    """One line of ``cycles.jsonl``.

    frame_time : the cycle's last input frame (ISO UTC); status : "forecast", "skipped" or "gap".
    seen_s, written_s : unix times the frame's file was first seen and the forecast was published.
    latency_s = written_s - seen_s, split into ingest_s (seen -> in the store), forecast_s (reading the
    inputs + the model) and write_s (the output files, publishing, ``latest``).
    """

    frame_time: str
    frame_time_s: int
    status: str
    model_version: str | None = None
    seen_s: float | None = None
    written_s: float | None = None
    latency_s: float | None = None
    ingest_s: float | None = None
    forecast_s: float | None = None
    write_s: float | None = None
    reason: str | None = None
    folder: str | None = None


class Watcher:
    """The service (see the module doc). :meth:`run` loops until ``stop`` is set or ``max_cycles``."""

    def __init__(self, cfg: WatchConfig, echo: Callable[[str], None] = print):
        self.cfg = cfg
        self.echo = echo
        self.root = Path(cfg.archive).resolve()
        self.store_path = Path(cfg.store).resolve()
        self.out_dir = Path(cfg.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.output = outputs.get_output(cfg.format)
        self.state_path = self.out_dir / STATE_FILE
        self.state = _State.load(self.state_path)
        self.scanner = _Scanner(self.root)
        self.source: Source | None = None
        self.forecaster: Forecaster | None = None
        self.ingested_at: dict[int, float] = {}  # frame time -> unix time its append finished
        self.reported: set[str] = set()
        self.declared_missing: set[int] = set()
        self.settled_this_run = 0
        self.stop = threading.Event()

    # ------------------------------------------------------------------ model
    def _model(self) -> Forecaster:
        """The forecaster for the model URI now (reloaded when a registry alias moved)."""
        label = model_version_label(self.cfg.model_uri, self.cfg.tracking_uri)
        if self.forecaster is None or (label is not None and label != self.forecaster.name):
            self.forecaster = load_forecaster(
                self.cfg.model_uri, tracking_uri=self.cfg.tracking_uri, device=self.cfg.device
            )
            self.echo(f"model {self.cfg.model_uri} -> {self.forecaster.name}")
        return self.forecaster

    # ------------------------------------------------------------------ input
    def _store(self) -> Store | None:
        return Store.open(self.store_path) if self.store_path.exists() else None

    def _report(self, key: str, line: str) -> None:
        if key not in self.reported:
            self.reported.add(key)
            self.echo(line)

    def _append(self) -> None:
        """Append the archive's new frames to the store, in time order, holding newer frames back while
        an earlier slot waits for its late frame (the missing-frame policy of the module doc)."""
        changed = self.scanner.poll()
        if not changed and not self.state.seen_s:
            return
        if self.source is None:
            self.source = detect_format(self.root)
        listing = self.source.list_frames(self.root)
        store = self._store()
        stored = store.time_s if store is not None else np.zeros(0, np.int64)
        last = int(stored[-1]) if stored.size else None
        for ref in listing.frames:
            seen = self.scanner.seen_s.get(ref.path, time.time())
            if last is None or ref.time_s > last:
                self.state.seen_s.setdefault(str(ref.time_s), seen)
            elif ref.path in changed and not np.isin(ref.time_s, stored):
                self._report(
                    f"late:{ref.path}",
                    f"late file {ref.path} ({iso_utc(ref.time_s)}) arrived after its slot was declared "
                    "missing; not used",
                )
        for bad in listing.bad:
            self._report(f"bad:{bad['path']}:{bad['reason']}", f"bad file {bad['path']}: {bad['reason']}")
        until = self._until(last, store.interval_s if store is not None else None)
        if until is None or (last is not None and until <= last):
            return
        self.state.save(self.state_path)  # the seen times survive a crash during the append
        cfg = IngestConfig(archive=self.root, store=self.store_path, workers=0, until_s=until)
        try:
            with warnings.catch_warnings():  # split and old-frame warnings: the watch reports its own
                warnings.simplefilter("ignore", IngestWarning)
                result = ingest(cfg, progress=False)
        except NowcastError as exc:
            self.echo(f"append failed (retrying at the next poll): {exc}")
            return
        done = time.time()
        for t in Store.open(self.store_path).time_s:
            if last is None or t > last:
                self.ingested_at[int(t)] = done
        for bad in result.bad_files:
            self._report(f"bad:{bad['path']}:{bad['reason']}", f"bad file {bad['path']}: {bad['reason']}")

    def _until(self, last: int | None, interval_s: int | None) -> int | None:
        """The newest pending frame time that may be appended now: pending times one interval apart
        from ``last``, and past a gap once its wait is over (the gap is then declared missing)."""
        pending = sorted(int(t) for t in self.state.seen_s if last is None or int(t) > last)
        if not pending:
            return None
        if last is None or interval_s is None:
            return pending[-1]  # a new store: its cadence comes from the frames themselves
        wait_s = interval_s if self.cfg.wait_missing_s is None else self.cfg.wait_missing_s
        until = last
        for t in pending:
            if t - until > interval_s:
                if time.time() - self.state.seen_s[str(t)] < wait_s:
                    break
                missing = list(range(until + interval_s, t, interval_s))
                self._gap(missing)
            until = t
        return until

    def _gap(self, missing: list[int]) -> None:
        new = [t for t in missing if t not in self.declared_missing]
        if not new:
            return
        self.declared_missing.update(new)
        when = ", ".join(iso_utc(t) for t in new)
        self.echo(f"gap: no frame for {when} within the wait; declared missing")
        self._record(CycleRecord(iso_utc(new[0]), int(new[0]), "gap", reason=f"missing frame(s) {when}"))

    # ------------------------------------------------------------------ cycles
    def _cycles(self) -> None:
        """Settle every cycle the store holds after the last settled one, in time order."""
        store = self._store()
        if store is None or store.time_s.size == 0:
            return
        times = store.time_s
        if self.state.last_cycle_s is None:  # first start: the newest frame is the first cycle
            self.state.last_cycle_s = int(times[-1]) - 1
        for t in times[times > self.state.last_cycle_s].tolist():
            if self.stop.is_set() or self._enough():
                return
            self._cycle(store, int(t))

    def _enough(self) -> bool:
        return self.cfg.max_cycles is not None and self.settled_this_run >= self.cfg.max_cycles

    def _cycle(self, store: Store, time_s: int) -> None:
        name = cycle_name(time_s)
        folder = self.out_dir / name
        if (folder / CYCLE_FILE).is_file():  # published before a crash: record it once, do not redo it
            record = CycleRecord(**json.loads((folder / CYCLE_FILE).read_text()))
            if not self._recorded(time_s):
                self._record(record)
            self.echo(f"{record.frame_time}  already written before a restart: {folder}")
        else:
            record = self._forecast(store, time_s, name)
            self._record(record)
            self.echo(_line(record))
        self.state.last_cycle_s = time_s
        self.state.seen_s = {k: v for k, v in self.state.seen_s.items() if int(k) > time_s}
        self.state.cycles += 1
        self.state.save(self.state_path)
        self.settled_this_run += 1
        self._prune()

    def _forecast(self, store: Store, time_s: int, name: str) -> CycleRecord:
        seen = self.state.seen_s.get(str(time_s))
        ingested = self.ingested_at.get(time_s)
        base = dict(frame_time=iso_utc(time_s), frame_time_s=time_s, seen_s=seen)
        t0 = time.time()
        forecaster = self._model()
        input_times = store.slot_times_s(
            time_s - (forecaster.in_len - 1) * store.interval_s, forecaster.in_len
        )
        rows = np.searchsorted(store.time_s, input_times).clip(0, store.time_s.size - 1)
        ok = (store.time_s[rows] == input_times) & store.present[rows]
        if not ok.all():
            missing = ", ".join(iso_utc(t) for t in input_times[~ok])
            return CycleRecord(
                **base,
                status="skipped",
                model_version=forecaster.name,
                reason=f"missing input frame(s) {missing}",
            )
        forecaster.check_frame_size(store.frame_size, f"the store {store.path}")
        frames, masks = store.reader().read(input_times)
        forecast = Forecast(
            forecast=forecaster.forecast_frames(frames),
            interval_s=store.interval_s,
            last_time_s=time_s,
            model_uri=str(self.cfg.model_uri),
            model_name=forecaster.name,
            input_mask=masks[-1],
            store=store,
            inputs_u8=frames,
            input_masks=masks,
        )
        t1 = time.time()
        with files.staging_dir(self.out_dir) as tmp:
            staged = tmp / name
            staged.mkdir()
            outputs.write_forecast(staged, self.output, forecast, self.cfg.gif)
            written = time.time()
            record = CycleRecord(
                **base,
                status="forecast",
                model_version=forecaster.name,
                written_s=written,
                latency_s=None if seen is None else written - seen,
                ingest_s=None if seen is None or ingested is None else ingested - seen,
                forecast_s=t1 - t0,
                write_s=written - t1,
                folder=name,
            )
            files.write_json(staged / CYCLE_FILE, asdict(record))
            files.publish(staged, self.out_dir / name, overwrite=False)
        self._point_latest(name)
        return record

    def _point_latest(self, name: str) -> None:
        """Move the ``latest`` symlink onto ``name`` atomically (a new link renamed over the old one)."""
        tmp = self.out_dir / f".{LATEST}.{os.getpid()}.tmp"
        if os.path.lexists(tmp):
            tmp.unlink()
        os.symlink(name, tmp)
        os.replace(tmp, self.out_dir / LATEST)

    def _record(self, record: CycleRecord) -> None:
        """Append one JSON line to ``cycles.jsonl`` (never through a symlink)."""
        line = json.dumps(asdict(record), allow_nan=False) + "\n"
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
        fd = os.open(self.out_dir / RECORDS_FILE, flags, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def _recorded(self, time_s: int) -> bool:
        return any(r["frame_time_s"] == time_s and r["status"] != "gap" for r in read_records(self.out_dir))

    def _prune(self) -> None:
        """Delete the oldest cycle folders this service wrote (they hold ``cycle.json``) beyond ``keep``."""
        ours = sorted(
            p
            for p in self.out_dir.iterdir()
            if _is_cycle_name(p.name) and not p.is_symlink() and p.is_dir() and (p / CYCLE_FILE).is_file()
        )
        for old in ours[: max(len(ours) - self.cfg.keep, 0)]:
            shutil.rmtree(old)

    # ------------------------------------------------------------------ loop
    def run(self) -> int:
        """Poll, append and forecast until ``stop`` is set or ``max_cycles`` cycles settled; -> cycles."""
        self.echo(
            f"watching {self.root} -> {self.store_path} -> {self.out_dir} ({self.cfg.format}, every "
            f"{self.cfg.poll_s:g} s); last settled cycle: "
            f"{'none' if self.state.last_cycle_s is None else iso_utc(self.state.last_cycle_s)}"
        )
        if self.cfg.threads is not None:
            torch.set_num_threads(self.cfg.threads)
        self._model()
        while not self.stop.is_set() and not self._enough():
            try:
                self._append()
                self._cycles()
            except NowcastError as exc:  # the service keeps running; the next poll tries again
                self._report(f"error:{exc}", f"error (retrying at the next poll): {exc}")
            if self._enough():
                break
            self.stop.wait(self.cfg.poll_s)
        return self.settled_this_run


def _line(record: CycleRecord) -> str:
    """The one line a cycle prints."""
    if record.status != "forecast":
        return f"{record.frame_time}  {record.status}: {record.reason}"
    latency = "latency unknown" if record.latency_s is None else f"latency {record.latency_s:.2f} s"
    ingest_s = "?" if record.ingest_s is None else f"{record.ingest_s:.2f}"
    return (
        f"{record.frame_time}  forecast {record.folder} by {record.model_version}: {latency} "
        f"(ingest {ingest_s} s, forecast {record.forecast_s:.2f} s, write {record.write_s:.2f} s)"
    )


def read_records(out_dir: str | Path) -> list[dict]:
    """The records of ``DIR/cycles.jsonl`` (a line cut short by a crash is ignored)."""
    path = Path(out_dir) / RECORDS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def watch(cfg: WatchConfig, echo: Callable[[str], None] = print) -> int:
    """Run the service until SIGTERM/SIGINT (or ``max_cycles``); -> the cycles settled. In the main
    thread SIGTERM and SIGINT end it after the current cycle."""
    watcher = Watcher(cfg, echo)
    if threading.current_thread() is threading.main_thread():

        def stop(signum, _frame):
            echo(f"{signal.Signals(signum).name}: stopping after the current cycle")
            watcher.stop.set()

        previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            return watcher.run()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    return watcher.run()


__all__ = ["CycleRecord", "WatchConfig", "Watcher", "cycle_name", "read_records", "watch"]
