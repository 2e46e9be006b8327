"""Writing output files safely: the one owner of these rules.

* Nothing is written through a symlink: a file is written under a temporary name in its folder and
  renamed onto its final name (``os.replace`` replaces a symlink there, never its target).
* Nothing that exists is replaced unless the caller says so (``overwrite``), and a folder is only
  replaced when the caller recognises it as its own output (``replaceable``).
* Only folders created here are deleted (the staging folder, and a replaced folder after it was
  moved into the staging folder).

Example::

    with staging_dir(out_dir) as tmp:          # a fresh private folder inside out_dir
        write_png(tmp / "a.png")
        publish(tmp / "a.png", out_dir / "a.png", overwrite=False)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from pipeline.errors import NowcastError


def check_free(
    targets: Iterable[Path], overwrite: bool, replaceable: Callable[[Path], bool] | None = None
) -> None:
    """NowcastError (exit code 2) when a target exists (a symlink counts, even a broken one) and
    ``overwrite`` is false, or when an existing folder among them is not ``replaceable``."""
    for target in targets:
        target = Path(target)
        if not os.path.lexists(target):
            continue
        if not overwrite:
            raise NowcastError(
                f"{target} already exists; pass --overwrite to replace it, or choose another output folder",
                exit_code=2,
            )
        if target.is_dir() and not target.is_symlink() and not (replaceable and replaceable(target)):
            raise NowcastError(
                f"{target} is a folder that nowcast did not write; it is left alone even with "
                "--overwrite: move it away or choose another output folder",
                exit_code=2,
            )


@contextlib.contextmanager
def staging_dir(parent: Path | str) -> Iterator[Path]:
    """A new private folder (mode 0700) inside ``parent`` (created if needed), removed afterwards."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".nowcast-tmp-", dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(
    staged: Path, target: Path, overwrite: bool, replaceable: Callable[[Path], bool] | None = None
) -> Path:
    """Move ``staged`` (a file or folder in a :func:`staging_dir` beside ``target``) onto ``target``.

    An existing ``target`` is replaced only with ``overwrite`` (see :func:`check_free`): a symlink or
    file is replaced by the rename itself; a folder is first moved into the staging folder, which
    is deleted later. Returns ``target``.
    """
    staged, target = Path(staged), Path(target)
    check_free([target], overwrite, replaceable)
    if target.is_dir() and not target.is_symlink():
        os.replace(target, staged.parent / f"replaced-{target.name}")
    elif staged.is_dir() and os.path.lexists(target):
        target.unlink()  # a file or symlink where a folder goes: rename(2) cannot replace it
    os.replace(staged, target)
    return target


def umask() -> int:
    """The process's file-mode creation mask (read without changing it where Linux tells it; else set and
    restored at once)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_file(path: Path | str) -> tuple[int, Path]:
    """A new empty file beside ``path`` under a temporary name -> (open fd, its path), with the mode a
    plain ``open`` would give (0666 less the umask), not ``tempfile.mkstemp``'s private 0600: it is
    renamed onto ``path`` once written."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, Path(tmp)


def write_bytes(path: Path | str, data: bytes, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` under a temporary name in the same folder, then rename it into place
    (never through a symlink at ``path``). Without ``overwrite`` an existing ``path`` is an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    check_free([path], overwrite)
    fd, tmp = temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_text(path: Path | str, text: str, overwrite: bool = True) -> Path:
    """:func:`write_bytes` for UTF-8 text."""
    return write_bytes(path, text.encode("utf-8"), overwrite)


def write_json(path: Path | str, value, overwrite: bool = True) -> Path:
    """:func:`write_text` of ``value`` as indented JSON (NaN refused: it is not JSON)."""
    return write_text(path, json.dumps(value, indent=1, allow_nan=False) + "\n", overwrite)


@contextlib.contextmanager
def exclusive_lock(lock: Path, busy: str) -> Iterator[Path]:
    """Hold an exclusive lock on the file ``lock`` for the duration of the block (the one lock of the
    project: a store's ingest lock, a training run's lock).

    An advisory ``flock`` (the file is never opened through a symlink), released by the kernel when
    this process ends, however it ends (so a ``kill -9`` leaves no stale lock). The file holds the
    holder's pid. Raises NowcastError at once when another process holds the lock (``busy``, with
    ``{pid}`` replaced by the holder's pid), or when the lock file cannot be created.
    """
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise NowcastError(
            f"cannot create the lock file {lock}: {exc}; choose a writable location (and not a symlink)"
        ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            raise NowcastError(busy.format(pid=holder)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield Path(lock)
    finally:
        os.close(fd)  # releases the lock
