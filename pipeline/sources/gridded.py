"""The source behaviour shared by gridded formats (ODIM_H5, CF-NetCDF): files are found by their
contents, each holds one or more times of a 2-D field on a map grid, and the options crop, block
average, Z-R relation and quantity/variable shape what is stored.

A format module subclasses :class:`GridSource` and supplies :meth:`GridSource.claims` (is a file of
this format), :meth:`GridSource.scan` (times, grid, quantity from the metadata) and
:meth:`GridSource.read_raw` (frames as dBZ + mask, :class:`~pipeline.sources.grid.RawFrame`).

Listing (:meth:`GridSource.list_frames`)
----------------------------------------
- Every non-hidden file under the archive root is a candidate, except the day lists
  (``<split>_days.txt`` at the root); a file the format cannot read is reported with the reason.
- The quantity/variable: the one configured, else the most common one the files offer (the first
  file's on a tie); files that offer another are scanned again for it.
- The grid: the configured ``source_grid`` (a store's, on resume or append), else the most common
  grid of the files (the first file's on a tie). A file on another grid is reported with the
  difference.
- The cadence (``cadence_s``): the configured one (a store's), else the most common step between the
  archive's times (``store.infer_interval_s``; none for a single time): the period of accumulations
  whose files state none. The listing settles the three (``Listing.settled``), and ingest configures
  the source with them.
- Two files (or two frames) for one time: identical frames keep the smallest path, frames that
  differ are all reported and the time is missing (:func:`~pipeline.sources.base.resolve_duplicates`).

Reading (:meth:`GridSource.read_frames`)
----------------------------------------
Each file is opened once per batch of its frames. A frame is checked against the listed time and the
source grid, cropped, block-averaged (:func:`~pipeline.sources.grid.fit_frame`) and encoded as the
stored pixel (``dbz_to_u8``: masked and no-echo pixels become 0, the mask says which is which).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from itertools import groupby
from pathlib import Path

import numpy as np

from pipeline.errors import NowcastError
from pipeline.sources.base import Frame, FrameRef, Listing, Source, dbz_to_u8, resolve_duplicates, walk_files
from pipeline.sources.grid import MAX_FRAME_PIXELS, ZR, FileInfo, Grid, RawFrame, fit_frame
from pipeline.store import infer_interval_s

#: Root-level files that belong to the archive but hold no frames (the optional day lists).
DAY_LIST_SUFFIX = "_days.txt"


def parse_crop(value) -> tuple[int, int, int, int] | None:
    """``"x0,y0,x1,y1"`` (as typed after ``--crop``) or a sequence of 4 ints -> a box (pixels), None
    for None. Raises NowcastError (exit code 2) otherwise; whether it fits a grid is checked later."""
    if value is None:
        return None
    try:
        parts = value.split(",") if isinstance(value, str) else list(value)
        box = tuple(int(str(v).strip()) for v in parts)
    except (TypeError, ValueError):
        box = ()
    if len(box) != 4:
        raise NowcastError(
            f"cannot read the crop box {value!r}: give x0,y0,x1,y1 in pixels from the top-left "
            "corner, e.g. --crop 100,50,580,530",
            exit_code=2,
        )
    return box


def parse_zr(value) -> ZR:
    """A Z-R relation from ``"A,B"``, ``{"zr_a": A, "zr_b": B}``, ``(A, B)`` or a ZR; None -> the default."""
    if value is None or isinstance(value, ZR):
        return value or ZR()
    if isinstance(value, str):
        return ZR.parse(value)
    if isinstance(value, dict):
        return ZR(float(value["zr_a"]), float(value["zr_b"]))
    a, b = value
    return ZR(float(a), float(b))


@dataclass(frozen=True)
class GridSource(Source):
    """A gridded archive format with its options (see the module docstring).

    Attributes
    ----------
    variable : the ODIM quantity or NetCDF variable to read; None = settled by the listing.
    crop : (x0, y0, x1, y1) pixels of the source grid to keep (columns x0..x1-1, rows y0..y1-1 from the
        top-left); None = all.
    block : block-average N x N pixels (over the valid pixels, in rain rate); 1 = none.
    zr : the Z-R relation for rain-rate quantities and block averages.
    source_grid : the grid every file must lie on, before crop and block; None = settled by the listing.
    cadence_s : the archive's cadence in seconds, the accumulation period of accumulations whose files do
        not state one; None = settled by the listing (from two or more frame times).
    max_pixels : the largest frame (H * W) read; a file declaring more is bad (not recorded in the store).
    """

    variable: str | None = None
    crop: tuple[int, int, int, int] | None = None
    block: int = 1
    zr: ZR = field(default_factory=ZR)
    source_grid: Grid | None = None
    cadence_s: int | None = None
    max_pixels: int = MAX_FRAME_PIXELS

    options = ("variable", "crop", "block", "zr", "source_grid", "cadence_s", "max_pixels")
    #: What the format calls ``variable`` in messages ("quantity", "variable").
    variable_label = "variable"

    # ------------------------------------------------------------------ format hooks
    def scan(self, path: Path, variable: str | None) -> FileInfo:
        """Times, grid and variable of one file from its metadata (``FileInfo.reason`` when bad)."""
        raise NotImplementedError

    def read_raw(self, path: Path, indices: list[int]) -> list[RawFrame]:
        """Frames ``indices`` of one file as dBZ + mask, opening it once (bad frames carry a reason)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ options
    def detect(self, root: Path) -> bool:
        return False  # recognised by its files' contents only (``claims``)

    def configure(self, **options) -> GridSource:
        super().configure(**options)
        changes = {k: v for k, v in options.items() if v is not None}
        if "crop" in changes:
            changes["crop"] = parse_crop(changes["crop"])
        if "zr" in changes:
            changes["zr"] = parse_zr(changes["zr"])
        if "block" in changes:
            block = changes["block"]
            if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
                raise NowcastError(
                    f"--block must be a whole number of pixels >= 1, got {block!r}", exit_code=2
                )
            changes["block"] = int(block)
        if "max_pixels" in changes:
            limit = changes["max_pixels"]
            if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
                raise NowcastError(
                    f"--max-frame-pixels must be a whole number >= 1, got {limit!r}", exit_code=2
                )
        if isinstance(changes.get("source_grid"), dict):
            changes["source_grid"] = Grid.from_attrs(changes["source_grid"])
        return replace(self, **changes)

    @property
    def grid(self) -> Grid | None:
        """The stored grid: ``source_grid`` cropped, then block-averaged (None before the grid is settled).
        Raises NowcastError (exit code 2) when the crop box or block size does not fit."""
        if self.source_grid is None:
            return None
        grid = self.source_grid.crop(self.crop) if self.crop is not None else self.source_grid
        return grid.block(self.block) if self.block != 1 else grid

    def settings(self) -> dict:
        grid = self.grid
        return {
            "variable": self.variable,
            "crop": list(self.crop) if self.crop else None,
            "block": self.block,
            "zr": self.zr.to_attrs(),
            "source_grid": self.source_grid.to_attrs() if self.source_grid is not None else None,
            "grid": grid.to_attrs() if grid is not None else None,
            "cadence_s": self.cadence_s,
        }

    # ------------------------------------------------------------------ listing
    def list_frames(self, root: Path) -> Listing:
        root = Path(root)
        bad: list[dict] = []
        infos: dict[str, FileInfo] = {}
        for rel in walk_files(root):
            if "/" not in rel and rel.endswith(DAY_LIST_SUFFIX):
                continue
            infos[rel] = self.scan(root / rel, self.variable)
        variable = self.variable or _most_common([info.quantity for info in infos.values() if info.ok])
        for rel, info in infos.items():
            if info.ok and info.quantity != variable:  # the file's own first choice was another quantity
                infos[rel] = self.scan(root / rel, variable)
        bad += [{"path": rel, "reason": info.reason} for rel, info in infos.items() if not info.ok]
        good = {rel: info for rel, info in infos.items() if info.ok}
        grid = self.source_grid or _most_common([info.grid for info in good.values()])
        claims: dict[int, list[FrameRef]] = {}
        for rel, info in good.items():
            diff = _difference(grid, info.grid)
            if diff is not None:
                bad.append({"path": rel, "reason": diff})
                continue
            for index, time_s in enumerate(info.times_s):
                claims.setdefault(int(time_s), []).append(FrameRef(int(time_s), rel, index))
        cadence_s = self.cadence_s
        if cadence_s is None and len(claims) > 1:
            cadence_s = infer_interval_s(np.fromiter(claims, dtype=np.int64))
        # duplicates are compared as they will be read: the settled variable and cadence
        reader = replace(self, variable=variable, cadence_s=cadence_s)
        chosen, dup = resolve_duplicates(
            claims, same=lambda a, b: reader._same_frame(root, a, b), path=lambda ref: ref.path
        )
        settled = {} if grid is None else {"variable": variable, "source_grid": grid, "cadence_s": cadence_s}
        return Listing(sorted(chosen.values()), bad + dup, settled)

    def _same_frame(self, root: Path, a: FrameRef, b: FrameRef) -> bool:
        """True when two frames hold the same values, mask and grid."""
        (fa,), (fb,) = self.read_raw(root / a.path, [a.index]), self.read_raw(root / b.path, [b.index])
        return (
            fa.ok
            and fb.ok
            and fa.grid.matches(fb.grid)
            and np.array_equal(fa.mask, fb.mask)
            and np.array_equal(fa.dbz, fb.dbz, equal_nan=True)
        )

    def frame_shape(self, root: Path, listing: Listing) -> tuple[int, int]:
        """The stored (H, W): the settled grid, cropped and block-averaged."""
        grid = self.grid
        if grid is None:
            raise NowcastError(f"no readable {self.title} file found in {root}: nothing to ingest")
        return grid.shape

    # ------------------------------------------------------------------ reading
    def read_frame(self, root: Path, ref: FrameRef, shape: tuple[int, int] | None = None) -> Frame:
        return next(self.read_frames(root, [ref], shape))

    def read_frames(
        self, root: Path, refs: Sequence[FrameRef], shape: tuple[int, int] | None = None
    ) -> Iterator[Frame]:
        root = Path(root)
        for rel, group in groupby(refs, key=lambda ref: ref.path):
            group = list(group)
            for ref, raw in zip(group, self.read_raw(root / rel, [ref.index for ref in group])):
                yield self._to_frame(ref, raw, shape)

    def _to_frame(self, ref: FrameRef, raw: RawFrame, shape) -> Frame:
        """A reader's frame -> the stored encoding, or the reason it cannot be used."""
        if not raw.ok:
            return Frame.bad(raw.reason)
        if raw.time_s != ref.time_s:
            return Frame.bad(
                f"the frame's time changed since the archive was listed ({raw.time_s} s, "
                f"listed {ref.time_s} s)"
            )
        diff = _difference(self.source_grid, raw.grid)
        if diff is not None:
            return Frame.bad(diff)
        raw = fit_frame(raw, None, self.crop, self.block, self.zr)
        if shape is not None and raw.dbz.shape != tuple(shape):
            return Frame.bad(f"frame size {raw.dbz.shape}, expected {tuple(shape)}")
        return Frame(dbz_to_u8(np.where(raw.mask, raw.dbz, -np.inf)), raw.mask)


def _difference(expected: Grid | None, grid: Grid) -> str | None:
    """How ``grid`` differs from ``expected`` (None: the same; an archive repeats one grid object)."""
    if expected is None or grid == expected:
        return None
    return _cached_difference(expected, grid)


@functools.lru_cache(maxsize=256)
def _cached_difference(expected: Grid, grid: Grid) -> str | None:
    return expected.difference(grid)


def _most_common(values: list) -> object | None:
    """The most common value, the first seen on a tie; None for none."""
    if not values:
        return None
    counts = Counter(values)
    best = max(counts.values())
    return next(v for v in values if counts[v] == best)


__all__ = ["GridSource", "parse_crop", "parse_zr"]
