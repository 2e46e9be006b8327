"""The one progress bar of the pipeline (Rich), for loops the user waits on."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

T = TypeVar("T")


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True,
                 transient: bool = False) -> Iterator[Callable[[int], None]]:
    """A bar over ``total`` items; yields ``advance(n=1)``. Disabled: a silent ``advance``.

    transient : remove the bar when done (else it stays on screen).
    """
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), disable=not enabled, transient=transient) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def track(items: Iterable[T], description: str, total: int | None = None, enabled: bool = True,
          transient: bool = False) -> Iterator[T]:
    """Yield ``items`` while a bar (see :func:`progress_bar`) counts them; ``total`` defaults to ``len(items)``."""
    with progress_bar(description, len(items) if total is None else total, enabled, transient) as advance:
        for item in items:
            yield item
            advance()
