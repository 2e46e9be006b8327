"""Compile every fast-path kernel for a GPU target on a machine without a GPU.

Triton can lower a kernel all the way to a cubin for a given architecture with no device
present (it ships ``ptxas``). This catches what the CPU interpreter cannot: type errors
of the compiled dialect, unsupported operations, register/shared-memory overflows::

    python -m trajgru.kernels.compile_check            # sm_90 (H100 / H200), bf16 and fp32

Run it without ``TRITON_INTERPRET=1`` (the interpreter's library functions cannot be
compiled); it prints one line per kernel variant and exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import jit
from .gru_gates import _GENERIC as _GATE_GENERIC
from .gru_gates import BLOCK as _GATE_BLOCK
from .gru_gates import NUM_WARPS as _GATE_WARPS
from .gru_gates import _gru_bwd_kernel, _gru_fwd_kernel
from .warp_concat import _GENERIC as _WARP_GENERIC
from .warp_concat import BWD_CONFIG, FWD_CONFIG, _warp_concat_bwd_kernel, _warp_concat_fwd_kernel

_WARP_STRIDES = ["h_sb", "h_sc", "h_sy", "h_sx", "f_sb", "f_sc", "f_sy", "f_sx"]
_GATE_STRIDES = [f"{t}_{s}" for t in "igho" for s in ("sb", "sc", "sy", "sx")]


def _hko7_stage0_values(wide: bool) -> dict[str, int]:
    """Integer arguments of the kernels at hko7 stage 0 (B=4, C=64, 96x96, L=13), channels-last
    bf16 activations: what the runtime specialises on (``== 1``, divisibility by 16)."""
    b, c, h, w, n_flows = 4, 64, 96, 96, 13
    v = dict(
        n_pix=b * h * w,
        H=h,
        W=w,
        C=c,
        L=n_flows,
        n_elem=b * c * h * w,
        h_sb=h * w * c,
        h_sc=1,
        h_sy=w * c,
        h_sx=c,
        f_sb=h * w * 2 * n_flows,
        f_sc=1,
        f_sy=w * 2 * n_flows,
        f_sx=2 * n_flows,
    )
    for t, ch in (("i", 3 * c), ("g", 3 * c), ("h", c), ("o", c)):
        v.update({f"{t}_sb": h * w * ch, f"{t}_sc": 1, f"{t}_sy": w * ch, f"{t}_sx": ch})
    return v


def _specialise(fn, signature: dict, constexprs: dict, values: dict, generic) -> tuple[dict, dict, dict]:
    """Mimic Triton's runtime specialisation: integer arguments equal to 1 become constants,
    multiples of 16 (and every pointer: PyTorch allocations are aligned) get the divisibility
    attribute; ``generic`` arguments get neither (``do_not_specialize``)."""
    sig, consts, attrs = dict(signature), dict(constexprs), {}
    for i, name in enumerate(fn.__code__.co_varnames[: fn.__code__.co_argcount]):
        kind = sig.get(name)
        if kind is None or kind == "constexpr" or name in generic:
            continue
        if kind.startswith("*"):
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif kind == "i32" and name in values:
            if values[name] == 1:
                sig[name] = "constexpr"
                consts[name] = 1
            elif values[name] % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, consts, attrs


def variants(dtype: str, wide: bool = False) -> list[tuple]:
    """(name, kernel, generic args, signature, constexprs, num_warps) for one element type
    (bf16/fp32), with the launch configurations the model uses."""
    i32 = "i32"
    warp_sizes = {"n_pix": i32, "H": i32, "W": i32, "C": i32, "L": i32, **{s: i32 for s in _WARP_STRIDES}}
    fwd_meta = {"SIGN": -1.0, "BLOCK_P": FWD_CONFIG[0], "BLOCK_C": FWD_CONFIG[1], "WIDE": wide}
    bwd_meta = {"SIGN": -1.0, "BLOCK_P": BWD_CONFIG[0], "BLOCK_C": BWD_CONFIG[1], "WIDE": wide}
    out = [
        (
            f"warp_concat fwd wide={wide}",
            _warp_concat_fwd_kernel,
            _WARP_GENERIC,
            {
                "h_ptr": f"*{dtype}",
                "flow_ptr": f"*{dtype}",
                "out_ptr": f"*{dtype}",
                **warp_sizes,
                **{k: "constexpr" for k in fwd_meta},
            },
            fwd_meta,
            FWD_CONFIG[2],
        ),
        (
            f"warp_concat bwd wide={wide}",
            _warp_concat_bwd_kernel,
            _WARP_GENERIC,
            {
                "h_ptr": f"*{dtype}",
                "flow_ptr": f"*{dtype}",
                "gout_ptr": f"*{dtype}",
                "gh_ptr": "*fp32",
                "gflow_ptr": "*fp32",
                **warp_sizes,
                **{k: "constexpr" for k in bwd_meta},
            },
            bwd_meta,
            BWD_CONFIG[2],
        ),
    ]
    if wide:
        return out
    gate_sizes = {
        "n_elem": i32,
        "C": i32,
        "H": i32,
        "W": i32,
        "slope": "fp32",
        **{s: i32 for s in _GATE_STRIDES},
    }
    for has_i2h in (True, False):
        meta = {"HAS_I2H": has_i2h, "CHANNELS_LAST": True, "BLOCK": _GATE_BLOCK, "WIDE": False}
        out.append(
            (
                f"gru_gates fwd i2h={has_i2h}",
                _gru_fwd_kernel,
                _GATE_GENERIC,
                {
                    **{p: f"*{dtype}" for p in ("i2h_ptr", "h2h_ptr", "h_ptr", "out_ptr")},
                    **gate_sizes,
                    **{k: "constexpr" for k in meta},
                },
                meta,
                _GATE_WARPS,
            )
        )
        out.append(
            (
                f"gru_gates bwd i2h={has_i2h}",
                _gru_bwd_kernel,
                _GATE_GENERIC,
                {
                    **{
                        p: f"*{dtype}"
                        for p in ("i2h_ptr", "h2h_ptr", "h_ptr", "gout_ptr", "gi2h_ptr", "gh2h_ptr", "gh_ptr")
                    },
                    **gate_sizes,
                    **{k: "constexpr" for k in meta},
                },
                meta,
                _GATE_WARPS,
            )
        )
    return out


def _ptxas_report(compiled, arch: int) -> str:
    """ptxas -v's register / spill line for a compiled kernel ('' if ptxas is unavailable)."""
    import subprocess
    import tempfile

    import triton

    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    for name in ("ptxas-blackwell", "ptxas"):
        ptxas = os.path.join(bin_dir, name)
        if not os.path.exists(ptxas):
            continue
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as fh:
            fh.write(compiled.asm["ptx"])
        try:
            proc = subprocess.run(
                [ptxas, f"--gpu-name=sm_{arch}a", "-v", fh.name, "-o", os.devnull],
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            os.unlink(fh.name)
        if proc.returncode == 0:
            return " ".join(
                ln.split("info    : ")[-1].strip()
                for ln in proc.stderr.splitlines()
                if "spill" in ln or "registers" in ln
            )
    return ""


def compile_all(arch: int = 90, dtypes=("bf16", "fp32")) -> list[tuple[str, bool, str, int]]:
    """Compile every variant for ``sm_<arch>``, specialised as at hko7 stage 0 (channels-last);
    returns (name, ok, detail, spill bytes)."""
    import re

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    results = []
    for dtype in dtypes:
        for name, fn, generic, signature, constexprs, warps in variants(dtype) + variants(dtype, wide=True):
            label = f"{name} {dtype} sm_{arch}"
            try:
                sig, consts, attrs = _specialise(
                    fn, signature, constexprs, _hko7_stage0_values(constexprs.get("WIDE", False)), generic
                )
                src = ASTSource(fn=jit(fn, generic), signature=sig, constexprs=consts, attrs=attrs)
                compiled = triton.compile(src, target=target, options={"num_warps": warps})
                report = _ptxas_report(compiled, arch)
                spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill", report))
                results.append((label, True, report or f"cubin {len(compiled.asm['cubin'])} bytes", spills))
            except Exception as exc:  # report every variant, then fail
                results.append((label, False, f"{type(exc).__name__}: {exc}"[:2000], 0))
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (default 90: H100/H200)")
    p.add_argument("--dtypes", default="bf16,fp32")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("unset TRITON_INTERPRET: the interpreter's functions cannot be compiled", file=sys.stderr)
        return 2
    results = compile_all(args.arch, tuple(args.dtypes.split(",")))
    for label, ok, detail, spills in results:
        print(
            f"{'ok  ' if ok else 'FAIL'} {label}: {detail}"
            + (f"  <- {spills} bytes spilled" if spills else "")
        )
    return 0 if all(ok for _, ok, _, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
