"""Radar-archive formats, one module each, behind one small interface (:mod:`pipeline.sources.base`).

- :data:`SOURCES`: the registry, ``{name: Source instance}``: ``hko7`` (HKO-7 PNG layout), ``odim``
  (ODIM_H5 Cartesian products), ``netcdf`` (CF-NetCDF grids).
- :func:`get_source`: a source by name.
- :func:`detect_format`: the source whose files the archive holds (an archive mixing formats is an error).

To add a format: write ``pipeline/sources/<format>.py`` with a :class:`~pipeline.sources.base.Source`
subclass (``detect``, ``list_frames``, ``read_frame``), and add one entry to :data:`SOURCES`.
Ingest needs nothing else.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import NowcastError
from pipeline.sources.base import PIXEL_ENCODING, Frame, FrameRef, Listing, Source, dbz_to_u8, walk_files
from pipeline.sources.hko7 import FrameDecodeError, Hko7Source
from pipeline.sources.netcdf import NetcdfSource
from pipeline.sources.odim import OdimSource

#: Every known archive format by name, in the order :func:`detect_format` asks them about a file.
SOURCES: dict[str, Source] = {source.name: source for source in (Hko7Source(), OdimSource(), NetcdfSource())}

#: Files named in the "mixed formats" error, per format.
_NAMED = 3


def get_source(name: str) -> Source:
    """The source registered as ``name``; NowcastError (exit code 2) naming the known ones otherwise."""
    try:
        return SOURCES[name]
    except KeyError:
        raise NowcastError(
            f"unknown archive format {name!r}; known: {', '.join(SOURCES)}", exit_code=2
        ) from None


def detect_format(root: str | Path) -> Source:
    """The source whose files the archive at ``root`` holds.

    Every non-hidden file is offered to the sources in :data:`SOURCES` order (:meth:`Source.claims`,
    a content check); files no source claims (notes, day lists) are left to the listing. With no file
    claimed, the first source that recognises the folders (:meth:`Source.detect`) is used.

    Raises NowcastError when files of two formats are found (naming some of each), or when no source
    recognises the archive (saying what each format looks like).
    """
    root = Path(root)
    found: dict[str, list[str]] = {}
    if root.is_dir():
        for rel in walk_files(root):
            owner = next((source for source in SOURCES.values() if source.claims(root, rel)), None)
            if owner is not None:
                found.setdefault(owner.name, []).append(rel)
    if len(found) > 1:
        parts = [
            f"{len(files)} {SOURCES[name].title} file(s) ({', '.join(files[:_NAMED])}"
            f"{', ...' if len(files) > _NAMED else ''})"
            for name in SOURCES
            if (files := found.get(name))
        ]
        raise NowcastError(
            f"{root} mixes archive formats: {' and '.join(parts)}; keep one format per archive, "
            f"or pass --format ({'|'.join(SOURCES)}) to ingest one of them"
        )
    if found:
        return SOURCES[next(iter(found))]
    for source in SOURCES.values():
        if source.detect(root):
            return source
    hints = " nor ".join(source.hint for source in SOURCES.values())
    raise NowcastError(f"{root} is not {hints}; pass the archive root, e.g. one made by `nowcast synth`")


__all__ = [
    "SOURCES",
    "PIXEL_ENCODING",
    "Frame",
    "FrameDecodeError",
    "FrameRef",
    "Listing",
    "Source",
    "dbz_to_u8",
    "detect_format",
    "get_source",
]
