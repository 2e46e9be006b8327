"""Optional Triton kernels of the fast path: bilinear warp + concatenation, fused GRU gates.

Every kernel here has a portable PyTorch twin (``trajgru.warp``, ``trajgru.cells``) that is
the reference it is tested against; the model uses a kernel only where :func:`use_triton`
says so, and falls back to the portable code everywhere else.

Triton is optional and imported lazily: not by ``import trajgru``, only by the first
:func:`triton_available` query or kernel launch. Kernel bodies are plain Python functions
wrapped with ``triton.jit`` on first launch (:func:`jit`), so that

- importing ``trajgru`` never needs (or imports) Triton, and
- a test on a CPU-only machine can set ``TRITON_INTERPRET=1`` before the first launch and
  run the very same kernels through Triton's interpreter on CPU tensors. (Triton reads
  the variable when it is imported as well, for its own library functions such as
  ``tl.sum``; that is why the import waits.)

Kernel modules name ``triton.language`` as the global ``tl``, bound by :func:`jit`.
Kernels call no helper functions (a helper would have to be jitted as well): each one is
self-contained.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

__all__ = ["triton_available", "interpreting", "use_triton", "jit", "BACKENDS"]

#: ``backend`` arguments accepted by the fast-path functions.
BACKENDS = ("auto", "triton", "torch")

#: placeholder for ``triton.language`` in kernel signatures (annotations are not evaluated)
tl = None

_TRITON: list = []  # [module] once imported, [None, error] if the import failed
_JITTED: dict[tuple[Callable, bool], object] = {}


def _import_triton():
    """``triton`` (imported on first call), or None if it cannot be imported."""
    if not _TRITON:
        try:
            import triton
            import triton.language  # noqa: F401

            _TRITON.append(triton)
        except Exception as exc:  # ImportError, or a broken install
            _TRITON.extend([None, f"{type(exc).__name__}: {exc}"])
    return _TRITON[0]


def _import_error() -> str:
    return _TRITON[1] if len(_TRITON) > 1 else ""


def triton_available() -> bool:
    """True if ``import triton`` works in this process (imports it on the first call)."""
    return _import_triton() is not None


def interpreting() -> bool:
    """True if ``TRITON_INTERPRET=1``: kernels run through Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def tracing(*tensors: torch.Tensor) -> bool:
    """True while ``torch.export`` or ``torch.compile`` trace (tensors are then fake)."""
    from torch._subclasses.fake_tensor import FakeTensor

    return (
        torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or any(isinstance(t, FakeTensor) for t in tensors)
    )


def use_triton(backend: str, *tensors: torch.Tensor) -> bool:
    """Whether a fast-path op with ``backend`` should launch its Triton kernel on ``tensors``.

    ``"torch"``: never. ``"auto"``: when Triton is importable and every tensor is on a CUDA
    device. ``"triton"``: always; raises if Triton is missing, or if a tensor is on the CPU
    without ``TRITON_INTERPRET=1`` (the interpreter is how the tests run kernels on CPUs).
    Never while ``torch.export`` / ``torch.compile`` trace: they see the portable code (an
    exported fast-path model is the plain math; ``torch.compile`` fuses it itself).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch" or tracing(*tensors):
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if backend == "auto":
        return on_cuda and triton_available()  # no Triton import for CPU tensors
    if not triton_available():
        raise RuntimeError(f"backend='triton' but Triton cannot be imported ({_import_error()})")
    if not on_cuda and not interpreting():
        raise RuntimeError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1 (Triton's interpreter)")
    return True


def jit(fn: Callable, do_not_specialize: tuple[str, ...] = ()):
    """``triton.jit(fn)``, made once per function and interpreter mode (see module doc).

    Binds the global ``tl`` of ``fn``'s module to ``triton.language`` first.
    ``do_not_specialize``: integer arguments (sizes) whose values should not each compile a
    variant (Triton otherwise specialises on ``== 1`` and divisibility by 16).
    """
    key = (fn, interpreting())
    kernel = _JITTED.get(key)
    if kernel is None:
        triton = _import_triton()
        if triton is None:
            raise RuntimeError(f"Triton is not available ({_import_error()})")
        fn.__globals__["tl"] = triton.language
        kernel = triton.jit(fn, do_not_specialize=list(do_not_specialize))
        _JITTED[key] = kernel
    return kernel


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (>= 1)."""
    return 1 << max(0, (int(n) - 1).bit_length())
