"""Optional Triton kernels of the fast path: bilinear warp + concatenation, fused GRU gates.

Every kernel here has a portable PyTorch twin (``trajgru.warp``, ``trajgru.cells``) that is
the reference it is tested against; the model uses a kernel only where :func:`use_triton`
says so, and falls back to the portable code everywhere else.

Triton is optional. Kernel bodies are plain Python functions; they are wrapped with
``triton.jit`` on first launch (:func:`jit`), not at import, so that

- importing ``trajgru`` never needs Triton, and
- a test on a CPU-only machine can set ``TRITON_INTERPRET=1`` before the first launch and
  run the very same kernels through Triton's interpreter on CPU tensors.

Kernels call no helper functions (a helper would have to be jitted as well): each one is
self-contained.
"""
from __future__ import annotations

import os
from typing import Callable

import torch

__all__ = ["triton_available", "interpreting", "use_triton", "jit", "BACKENDS"]

#: ``backend`` arguments accepted by the fast-path functions.
BACKENDS = ("auto", "triton", "torch")

try:  # noqa: SIM105
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    _TRITON_IMPORT_ERROR: str | None = None
except Exception as exc:  # ImportError, or a broken install
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
    _TRITON_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

_JITTED: dict[tuple[Callable, bool], object] = {}


def triton_available() -> bool:
    """True if ``import triton`` works in this process."""
    return triton is not None


def interpreting() -> bool:
    """True if ``TRITON_INTERPRET=1``: kernels run through Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(backend: str, *tensors: torch.Tensor) -> bool:
    """Whether a fast-path op with ``backend`` should launch its Triton kernel on ``tensors``.

    ``"torch"``: never. ``"auto"``: when Triton is importable and every tensor is on a CUDA
    device. ``"triton"``: always; raises if Triton is missing, or if a tensor is on the CPU
    without ``TRITON_INTERPRET=1`` (the interpreter is how the tests run kernels on CPUs).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if backend == "auto":
        return triton_available() and on_cuda
    if not triton_available():
        raise RuntimeError(f"backend='triton' but Triton cannot be imported ({_TRITON_IMPORT_ERROR})")
    if not on_cuda and not interpreting():
        raise RuntimeError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1 (Triton's interpreter)")
    return True


def jit(fn: Callable):
    """``triton.jit(fn)``, made once per function and interpreter mode (see module doc)."""
    key = (fn, interpreting())
    kernel = _JITTED.get(key)
    if kernel is None:
        if triton is None:
            raise RuntimeError(f"Triton is not available ({_TRITON_IMPORT_ERROR})")
        kernel = triton.jit(fn)
        _JITTED[key] = kernel
    return kernel


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (>= 1)."""
    return 1 << max(0, (int(n) - 1).bit_length())
