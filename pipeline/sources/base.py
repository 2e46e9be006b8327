"""The small interface every radar-archive format implements.

A *source* knows one archive format: it lists the frames an archive holds (with their times) and
reads one frame as stored pixels + a validity mask, or says why the frame cannot be used. The
ingest stage knows only this interface, so a new format is one new module in ``pipeline.sources``
(a :class:`Source` subclass) plus one line in the registry (``pipeline.sources.SOURCES``).

Conventions shared by every format
----------------------------------
- Times are ``int`` seconds since the Unix epoch, UTC (the frame's nominal time).
- Paths in :class:`FrameRef` and in bad-file entries are POSIX paths relative to the archive root.
- Pixels are ``uint8`` with ``pixel = round(255 * (dBZ + 10) / 70)`` (:data:`PIXEL_ENCODING`,
  :func:`dbz_to_u8`): a reader converts its format's values to this encoding.
- Masks are ``bool`` with True = a valid measurement (inside the radar's range, not clutter).
- A bad frame (unreadable, wrong size, wrong type) is not an exception: :meth:`Source.read_frame`
  returns a :class:`Frame` with ``reason`` set, and ingest stores the slot as missing.
- Sources hold no open files or caches between calls: they are pickled to Dask workers. A source
  may carry *options* (crop box, Z-R relation, ...; :meth:`Source.configure`), which the store records
  (:meth:`Source.settings`) so that a resumed or appended ingest reads the archive the same way.
- Nothing is dropped silently: a file that cannot be used, a folder named like a frame file, or a
  second file for a time is listed in ``Listing.bad`` with the reason.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from pipeline.errors import NowcastError
from pipeline.times import iso_utc

#: How every source format's values are stored (the store records this string).
PIXEL_ENCODING = "uint8 pixel = round(255 * (dBZ + 10) / 70), i.e. dBZ = 70 * pixel / 255 - 10"

#: Frames sampled by the default :meth:`Source.frame_shape`.
_SHAPE_SAMPLE = 64


def dbz_to_u8(dbz: np.ndarray) -> np.ndarray:
    """Reflectivity (dBZ, any shape) -> stored uint8 pixel ``round(255 * (dBZ + 10) / 70)``, clipped
    to 0..255 (so -10 dBZ and below -> 0, 60 dBZ and above -> 255)."""
    return np.clip(np.rint(255.0 * (np.asarray(dbz, dtype=np.float64) + 10.0) / 70.0), 0, 255).astype(
        np.uint8
    )


@dataclass(frozen=True, order=True)
class FrameRef:
    """Where one frame of an archive is.

    Attributes
    ----------
    time_s : int
        Nominal time of the frame, seconds since the Unix epoch (UTC).
    path : str
        POSIX path of the file holding the frame, relative to the archive root.
    index : int
        Position of the frame inside a file that holds several times (0 for one-frame files).
    mask_path : str or None
        A separate file holding the frame's validity mask, relative to the archive root, for formats
        that keep masks apart (HKO-7). None when the mask comes from ``path`` itself, or when the
        archive has no mask for this frame.
    """

    time_s: int
    path: str
    index: int = 0
    mask_path: str | None = None


@dataclass
class Frame:
    """One frame as read from the archive, or the reason it cannot be used.

    Attributes
    ----------
    pixels : numpy.ndarray or None
        uint8 (H, W), stored encoding (:data:`PIXEL_ENCODING`); None when the frame is bad.
    mask : numpy.ndarray or None
        bool (H, W), True = valid pixel. None when the frame is bad, or when the archive holds no
        mask for it (ingest then stores an all-valid mask and warns).
    reason : str or None
        One line saying why the frame is bad; None for a good frame.
    bad_path : str or None
        The file ``reason`` is about when it is not the frame's own ``FrameRef.path`` (for example an
        unreadable HKO-7 mask file).
    """

    pixels: np.ndarray | None
    mask: np.ndarray | None = None
    reason: str | None = None
    bad_path: str | None = None

    @property
    def ok(self) -> bool:
        """True for a usable frame."""
        return self.reason is None

    @classmethod
    def bad(cls, reason: str, bad_path: str | None = None) -> Frame:
        """A bad frame: no pixels, no mask, and why."""
        return cls(None, None, reason, bad_path)


@dataclass
class Listing:
    """What an archive holds.

    Attributes
    ----------
    frames : list of FrameRef
        One per frame time, sorted by ``time_s`` (times are unique).
    bad : list of dict
        ``{"path": str, "reason": str}`` for files that could not even be listed (a name that does
        not parse, a second file for the same time, ...); paths relative to the archive root.
    settled : dict
        Options the listing settled from the whole archive (for example the grid every frame must lie
        on), to pass to :meth:`Source.configure` before reading; empty for most formats.
    """

    frames: list[FrameRef] = field(default_factory=list)
    bad: list[dict] = field(default_factory=list)
    settled: dict = field(default_factory=dict)

    def times_s(self) -> np.ndarray:
        """int64 (N,) frame times, seconds since the epoch (ascending)."""
        return np.fromiter((f.time_s for f in self.frames), dtype=np.int64, count=len(self.frames))


class Source:
    """One archive format. Subclass it, set the class attributes and implement
    :meth:`detect`, :meth:`list_frames` and :meth:`read_frame`.

    Class attributes
    ----------------
    name : registry key (``"hko7"``).
    title : the format as people write it (``"HKO-7"``); recorded in the store's ``source`` attribute.
    hint : what an archive of this format looks like, for the error when none is recognised
        (``"an HKO-7 archive (a radarPNG/ folder)"``).

    options : the names of the options :meth:`configure` takes (none by default).

    Instances are stateless and picklable (Dask workers receive them).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    hint: ClassVar[str] = ""
    options: ClassVar[tuple[str, ...]] = ()

    def detect(self, root: Path) -> bool:
        """True if ``root`` looks like an archive of this format from its folders alone (a cheap
        check; formats recognised only by their files' contents return False)."""
        raise NotImplementedError

    def claims(self, root: Path, rel: str) -> bool:
        """True if the file ``root / rel`` belongs to an archive of this format (used to detect the
        format and to find archives that mix formats). Never raises."""
        return False

    def configure(self, **options) -> Source:
        """This source with ``options`` (names of :attr:`options`; None = the default). Raises
        NowcastError (exit code 2) for an option this format does not take."""
        given = sorted(k for k, v in options.items() if v is not None)
        unknown = [k for k in given if k not in self.options]
        if unknown:
            raise NowcastError(
                f"{', '.join('--' + k.replace('_', '-') for k in unknown)} cannot be used with "
                f"{self.title} archives",
                exit_code=2,
            )
        return self

    def settings(self) -> dict:
        """The options in use, JSON-able, for the store's ``source`` attribute; ``configure(**settings)``
        gives this source back."""
        return {}

    def list_frames(self, root: Path) -> Listing:
        """Every frame of the archive at ``root`` with its time, plus the files that cannot be listed.

        Raises NowcastError when ``root`` is not an archive of this format.
        """
        raise NotImplementedError

    def read_frame(self, root: Path, ref: FrameRef, shape: tuple[int, int] | None = None) -> Frame:
        """Read one frame.

        Parameters
        ----------
        root : the archive root.
        ref : a frame of :meth:`list_frames`.
        shape : the expected (H, W) in pixels; a frame of another size is bad. None accepts any size.

        Returns
        -------
        Frame : pixels uint8 (H, W) and mask bool (H, W) (or None: no mask in the archive), or
            ``reason`` set when the frame cannot be used. Never raises for a bad file.
        """
        raise NotImplementedError

    def read_frames(
        self, root: Path, refs: Sequence[FrameRef], shape: tuple[int, int] | None = None
    ) -> Iterator[Frame]:
        """:meth:`read_frame` for each of ``refs``, in order. Formats override this when reading
        neighbouring frames together is cheaper (several times in one file, repeated masks)."""
        for ref in refs:
            yield self.read_frame(root, ref, shape)

    def frame_shape(self, root: Path, listing: Listing) -> tuple[int, int]:
        """The archive's frame size (H, W) in pixels: the most common size among up to 64 frames
        spread over ``listing`` (bad frames are skipped). Formats override this when a header says it.

        Raises NowcastError when no sampled frame can be read.
        """
        sizes = Counter(
            frame.pixels.shape for frame in self.read_frames(root, sample_frames(listing.frames)) if frame.ok
        )
        if not sizes:
            raise NowcastError(f"no readable frame found in {root}: nothing to ingest")
        return sizes.most_common(1)[0][0]


def sample_frames(refs: Sequence[FrameRef], n: int = _SHAPE_SAMPLE) -> list[FrameRef]:
    """Up to ``n`` of ``refs`` spread evenly from the first to the last."""
    if not refs:
        return []
    return [refs[i] for i in np.unique(np.linspace(0, len(refs) - 1, n).astype(int))]


def one_line(exc: BaseException) -> str:
    """A deterministic one-line reason from an exception (no object addresses), so that re-runs
    write identical reports; the exception's type name when it has no message."""
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", str(exc)).replace("\n", " ").strip()
    return text or type(exc).__name__


def walk_files(
    root: Path, sub: str = ".", odd: list | None = None, suffixes: tuple[str, ...] = ()
) -> Iterable[str]:
    """Non-hidden files under ``root / sub``, as sorted POSIX paths relative to ``root``.

    odd : when given, a ``{"path", "reason"}`` entry is appended for each folder whose name ends with
        one of ``suffixes`` (a folder named like a frame file is reported, not skipped silently).
    """
    for dirpath, dirnames, filenames in os.walk(root / sub):
        dirnames.sort()
        if odd is not None:
            for name in dirnames:
                if name.endswith(suffixes) and not name.startswith("."):
                    rel = Path(dirpath, name).relative_to(root).as_posix()
                    odd.append({"path": rel, "reason": "a folder named like a frame file, not a file"})
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath, name).relative_to(root).as_posix()


def resolve_duplicates(
    claims: dict[int, list],
    same: Callable[[object, object], bool],
    path: Callable[[object], str] = str,
    canonical: Callable[[int, object], bool] | None = None,
) -> tuple[dict[int, object], list[dict]]:
    """Choose one item per time when several files claim it, the same way on every run.

    Rule: the item at the canonical place wins (when ``canonical`` says one is); else, when every item
    is identical to the one with the smallest path (``same``), that one wins; else the files disagree
    and none is used (the time is missing). Every item not used is reported.

    Parameters
    ----------
    claims : {time_s: [item, ...]} (any order).
    same : whether two items hold the same frame (identical bytes or values).
    path : an item's path relative to the archive root (for sorting and reports).
    canonical : whether an item is at the canonical place for its time.

    Returns
    -------
    chosen : {time_s: item} for the times that have one.
    bad : ``{"path", "reason"}`` for the items not used.
    """
    chosen, bad = {}, []
    for time_s, items in sorted(claims.items()):
        items = sorted(items, key=path)
        if len(items) == 1:
            chosen[time_s] = items[0]
            continue
        keep = next((item for item in items if canonical is not None and canonical(time_s, item)), None)
        if keep is None and all(same(items[0], other) for other in items[1:]):
            keep = items[0]
        names = ", ".join(path(item) for item in items)
        if keep is None:
            bad += [
                {
                    "path": path(item),
                    "reason": f"{len(items)} files claim {iso_utc(time_s)} and differ "
                    f"({names}): none is used",
                }
                for item in items
            ]
            continue
        chosen[time_s] = keep
        bad += [
            {"path": path(item), "reason": f"duplicate time {iso_utc(time_s)}: {path(keep)} is used"}
            for item in items
            if item is not keep
        ]
    return chosen, bad
