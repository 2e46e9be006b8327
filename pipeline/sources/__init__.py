"""Radar-archive formats, one module each, behind one small interface (:mod:`pipeline.sources.base`).

- :data:`SOURCES`: the registry, ``{name: Source instance}``.
- :func:`get_source`: a source by name.
- :func:`detect_format`: the source that recognises an archive root.

To add a format: write ``pipeline/sources/<format>.py`` with a :class:`~pipeline.sources.base.Source`
subclass (``detect``, ``list_frames``, ``read_frame``), and add one entry to :data:`SOURCES`.
Ingest needs nothing else.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.errors import NowcastError
from pipeline.sources.base import PIXEL_ENCODING, Frame, FrameRef, Listing, Source, dbz_to_u8
from pipeline.sources.hko7 import Hko7Source

#: Every known archive format by name, in the order :func:`detect_format` tries them.
SOURCES: dict[str, Source] = {source.name: source for source in (Hko7Source(),)}


def get_source(name: str) -> Source:
    """The source registered as ``name``; NowcastError (exit code 2) naming the known ones otherwise."""
    try:
        return SOURCES[name]
    except KeyError:
        raise NowcastError(f"unknown archive format {name!r}; known: {', '.join(SOURCES)}", exit_code=2) from None


def detect_format(root: str | Path) -> Source:
    """The first source of :data:`SOURCES` that recognises the archive at ``root``.

    Raises NowcastError, saying what each format looks like, when none does.
    """
    root = Path(root)
    for source in SOURCES.values():
        if source.detect(root):
            return source
    hints = " nor ".join(source.hint for source in SOURCES.values())
    raise NowcastError(f"{root} is not {hints}; pass the archive root, e.g. one made by `nowcast synth`")


__all__ = ["SOURCES", "PIXEL_ENCODING", "Frame", "FrameRef", "Listing", "Source", "dbz_to_u8", "detect_format",
           "get_source"]
