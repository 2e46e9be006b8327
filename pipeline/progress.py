"""The one progress bar of the pipeline (Rich), for loops the user waits on.

On a terminal it is a live bar; when stdout is not a terminal (a log file, a pipe, CI) it prints plain
``description: done/total`` lines instead, about every tenth of the way and at the end.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


@contextlib.contextmanager
def _plain_lines(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """``advance(n=1)`` that prints ``description: done/total`` at each tenth of ``total`` and at the end."""
    state = {"done": 0, "printed": 0}
    step = max(1, -(-total // 10))  # about ten lines

    def advance(n: int = 1) -> None:
        state["done"] += n
        done = state["done"]
        if done - state["printed"] >= step or done >= total:
            state["printed"] = done
            print(f"{description}: {done}/{total}", flush=True)

    yield advance


@contextlib.contextmanager
def progress_bar(
    description: str, total: int, enabled: bool = True, transient: bool = False
) -> Iterator[Callable[[int], None]]:
    """A bar over ``total`` items; yields ``advance(n=1)``. Disabled: a silent ``advance``. Without a
    terminal on stdout: plain progress lines (see the module doc).

    transient : remove the bar when done (else it stays on screen).
    """
    if enabled and not sys.stdout.isatty():
        with _plain_lines(description, total) as advance:
            yield advance
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=transient,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def track(
    items: Iterable[T],
    description: str,
    total: int | None = None,
    enabled: bool = True,
    transient: bool = False,
) -> Iterator[T]:
    """Yield ``items`` while a bar (see :func:`progress_bar`) counts them; ``total`` defaults to ``len(items)``."""
    with progress_bar(description, len(items) if total is None else total, enabled, transient) as advance:
        for item in items:
            yield item
            advance()
