"""The whole GPU check of the fast path in one prepared run (issue 12), under 5 minutes.

Run from the repository root on the GPU machine (plain ``python3``; needs only torch,
triton and numpy; pytest is used if present)::

    PYTHONPATH=$PWD python3 benchmarks/gpu_check.py            # results in $OUT (or <tmp>/gpu_check_out)
    PYTHONPATH=$PWD python3 benchmarks/gpu_check.py --quick    # minutes on a CPU: every stage, tiny sizes

Stages, each in its own subprocess with its own timeout (a crash, a hang or an illegal
memory access in one stage cannot stop the others), inside one overall budget
(``--budget-s``, default 280 s; a stage that would start with less than 15 s left is
skipped and says so; a stage cut by its timeout keeps the rows it already wrote). Expected
on one H100: about 3 minutes, much of it Triton compilation and cuDNN autotuning; the
stages run in the order below, most valuable first:

=========  ======================================================================  ==============
stage      what                                                                    writes
=========  ======================================================================  ==============
env        nvidia-smi, Python / torch / triton / CUDA versions, device             env.txt
checks     kernels vs the dense formula (fp32, bf16, gradients), gates, fast vs    checks.json
           plain model (fp32 tight, bf16 tolerance), captured train step and
           forecaster vs eager, repeatability, warp micro-benchmark
bench      hko7 480x480: plain-fp32, graph-bf16, fast-bf16, plain-bf16 at batch    bench.txt,
           4 (forecast batch 1); graph-bf16, plain-bf16 at batch 16 (forecast 16)  bench.json
numerics   300 training steps (tiny, 96x96 moving blobs): plain fp32 vs the fast   numerics.json
           path (bf16, CUDA graph); loss curves compared
profile    torch.profiler of one fast-bf16 batch-4 step: top kernels               profile.txt
pytest     the CUDA tests of the suite (``pytest -m gpu tests``) if pytest is there    pytest.txt
=========  ======================================================================  ==============

plus ``summary.txt`` (stage status, time and the tail of each stage's output): 8 files
in all, in one folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = ("env", "checks", "bench", "numerics", "profile", "pytest")  # in order of value
#: (full, quick) timeout per stage in seconds
STAGE_TIMEOUT = {
    "env": (10, 20),
    "checks": (55, 300),
    "bench": (150, 300),
    "numerics": (35, 300),
    "profile": (20, 120),
    "pytest": (90, 240),
}
MIN_STAGE_S = 15


# ---------------------------------------------------------------- driver


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--out",
        default=os.environ.get("OUT") or os.path.join(tempfile.gettempdir(), "gpu_check_out"),
        help="results folder (default $OUT, else <tmp>/gpu_check_out)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes (CPU-friendly), every stage")
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="overall wall budget in seconds (default 280; 900 with --quick)",
    )
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {', '.join(STAGES)}")
    p.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # internal: run one stage here
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.stage:
        return run_stage(args.stage, out, args.quick)

    if args.budget_s is None:
        args.budget_s = 900.0 if args.quick else 280.0
    start = time.monotonic()
    summary = []
    env = dict(
        os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1"
    )
    if args.quick and not _cuda_available():
        env["TRITON_INTERPRET"] = "1"  # run the Triton kernels through the CPU interpreter
    for stage in [s.strip() for s in args.stages.split(",") if s.strip()]:
        left = args.budget_s - (time.monotonic() - start)
        if left < MIN_STAGE_S:
            summary.append(dict(stage=stage, status="skipped", reason=f"budget: {left:.0f} s left"))
            print(f"[gpu_check] {stage}: skipped ({left:.0f} s left)", flush=True)
            continue
        timeout = min(STAGE_TIMEOUT[stage][1 if args.quick else 0], left)
        t0 = time.monotonic()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--out", str(out)]
        if args.quick:
            cmd.append("--quick")
        print(f"[gpu_check] {stage}: start (timeout {timeout:.0f} s)", flush=True)
        log = out / f".{stage}.log"
        with open(log, "w") as fh:
            try:
                rc = subprocess.run(
                    cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout
                ).returncode
                status = "ok" if rc == 0 else f"exit {rc}"
            except subprocess.TimeoutExpired:
                status = f"timeout after {timeout:.0f} s"
        took = time.monotonic() - t0
        tail = log.read_text(errors="replace")[-3000:]
        log.unlink(missing_ok=True)
        summary.append(dict(stage=stage, status=status, seconds=round(took, 1), log_tail=tail))
        print(f"[gpu_check] {stage}: {status} in {took:.1f} s", flush=True)
    total = time.monotonic() - start
    write_summary(out, summary, total)
    print(f"[gpu_check] done in {total:.1f} s; results in {out}", flush=True)
    return 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def write_summary(out: Path, summary: list[dict], total: float) -> None:
    lines = [f"gpu_check: {total:.1f} s in all"]
    for s in summary:
        lines.append(
            f"== {s['stage']}: {s['status']}"
            + (f" ({s['seconds']} s)" if "seconds" in s else "")
            + (f" {s.get('reason', '')}" if s.get("reason") else "")
        )
        if s.get("log_tail"):
            lines.extend("   " + ln for ln in s["log_tail"].rstrip().splitlines()[-60:])
    (out / "summary.txt").write_text("\n".join(lines) + "\n")


def run_stage(stage: str, out: Path, quick: bool) -> int:
    fn = {
        "env": stage_env,
        "checks": stage_checks,
        "pytest": stage_pytest,
        "bench": stage_bench,
        "numerics": stage_numerics,
        "profile": stage_profile,
    }[stage]
    return fn(out, quick) or 0


# ---------------------------------------------------------------- stages


def stage_env(out: Path, quick: bool) -> int:
    import platform

    import torch

    lines = [
        f"python {platform.python_version()} ({sys.executable})",
        f"torch {torch.__version__}",
        f"cuda (torch build) {torch.version.cuda}",
        f"cudnn {torch.backends.cudnn.version()}",
    ]
    try:
        import triton

        lines.append(f"triton {triton.__version__}")
    except Exception as exc:
        lines.append(f"triton: not importable ({exc})")
    try:
        import numpy

        lines.append(f"numpy {numpy.__version__}")
    except Exception as exc:
        lines.append(f"numpy: {exc}")
    try:
        import pytest

        lines.append(f"pytest {pytest.__version__}")
    except Exception:
        lines.append("pytest: not installed (checks stage covers the kernel tests)")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines.append(
            f"device {props.name}, capability {props.major}.{props.minor}, "
            f"{props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs"
        )
    else:
        lines.append("device: no CUDA")
    lines.append(f"cpu cores {os.cpu_count()}")
    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=10).stdout
    except Exception as exc:
        smi = f"nvidia-smi: {exc}"
    text = "\n".join(lines) + "\n\n" + smi
    (out / "env.txt").write_text(text)
    print(text)
    return 0


class _Checks:
    """Named checks; each records ok / FAIL / ERROR and what it measured, and rewrites
    ``path`` after every check (a timeout keeps the finished ones)."""

    def __init__(self, path: Path, header: dict):
        self.results: list[dict] = []
        self.path, self.header = path, header

    def run(self, name: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            info = fn() or {}
            ok = bool(info.pop("ok", True))
            rec = dict(name=name, status="ok" if ok else "FAIL", **info)
        except Exception as exc:
            rec = dict(
                name=name,
                status="ERROR",
                error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc()[-2000:],
            )
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        self.results.append(rec)
        self.path.write_text(json.dumps(dict(self.header, results=self.results), indent=1, default=str))
        print(
            f"{rec['status']:5s} {name} "
            + json.dumps(
                {k: v for k, v in rec.items() if k not in ("name", "status", "traceback")}, default=str
            ),
            flush=True,
        )


def _maxdiff(a, b) -> float:
    return float((a.detach().double().cpu() - b.detach().double().cpu()).abs().max())


def _rel_l2(a, b) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def stage_checks(out: Path, quick: bool) -> int:
    import copy

    import torch
    import torch.nn.functional as F

    from trajgru import build_model, kernels
    from trajgru.cells import TrajGRUCell
    from trajgru.fast import CapturedForecaster, enable_fast_path, fused_adam
    from trajgru.kernels.gru_gates import gru_gates_triton
    from trajgru.kernels.reference import dense_warp_concat, gru_equations, kink_free_flows
    from trajgru.kernels.warp_concat import warp_concat_torch, warp_concat_triton
    from trajgru.step import NonFiniteLoss, TrainStep

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    # fp32 means fp32 here: no TF32 in cuDNN convolutions (the plain path's 1x1 conv) or
    # cuBLAS (the fast path's GEMM), or the two paths differ by TF32 rounding (~1e-3)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    checks = _Checks(out / "checks.json", dict(device=str(dev), interpreter=kernels.interpreting()))
    gen = torch.Generator().manual_seed(0)
    small = quick and not cuda

    def warp_fwd(shape, dtype, channels_last):
        b, c, h, w, n = shape
        x = torch.randn(b, c, h, w, generator=gen).to(dtype)
        flows = ((torch.rand(b, 2 * n, h, w, generator=gen) * 2 - 1) * 4).to(dtype)
        xd, fd = x.to(dev), flows.to(dev)
        if channels_last:
            xd = xd.contiguous(memory_format=torch.channels_last)
            fd = fd.contiguous(memory_format=torch.channels_last)
        got = warp_concat_triton(xd, fd, True)
        ref = dense_warp_concat(x.float(), flows.float(), True)
        err = _maxdiff(got, ref)
        tol = 1e-5 if dtype == torch.float32 else 2e-2 + 8e-3 * float(ref.abs().max())
        return dict(ok=err <= tol and got.dtype == dtype, max_abs_err=err, tol=tol)

    # on the GPU: the channel counts of hko7 (64, 192) and L (13, 9), so that the kernels
    # compiled here are the model's own variants (Triton caches them on disk for later stages)
    shapes = [(2, 5, 7, 9, 3), (1, 70, 6, 5, 2)] if small else [(2, 64, 24, 24, 13), (1, 192, 16, 16, 9)]
    for shape in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            checks.run(
                f"warp_concat fwd {shape} {str(dtype)[6:]} channels_last",
                lambda s=shape, d=dtype: warp_fwd(s, d, True),
            )
    checks.run("warp_concat fwd NCHW fp32", lambda: warp_fwd(shapes[0], torch.float32, False))

    def warp_grads():
        b, c, h, w, n = (2, 3, 6, 7, 3) if small else (2, 16, 12, 12, 5)
        x = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)
        flows = kink_free_flows(b, n, h, w, 2.5, gen)
        wgt = torch.randn(b, h, w, n * c, generator=gen, dtype=torch.float64)
        xr, fr = x.clone().requires_grad_(), flows.clone().requires_grad_()
        (dense_warp_concat(xr, fr, True) * wgt).sum().backward()
        xd = x.float().to(dev).contiguous(memory_format=torch.channels_last).requires_grad_()
        fd = flows.float().to(dev).requires_grad_()
        (warp_concat_triton(xd, fd, True) * wgt.float().to(dev)).sum().backward()
        ex, ef = _maxdiff(xd.grad, xr.grad), _maxdiff(fd.grad, fr.grad)
        scale_f = float(fr.grad.abs().max())
        return dict(ok=ex < 1e-4 and ef < 1e-4 * max(1.0, scale_f), grad_h_err=ex, grad_flow_err=ef)

    checks.run("warp_concat gradients vs formula (fp64 autograd)", warp_grads)

    def warp_vs_portable_bf16_grads():
        b, c, h, w, n = (1, 4, 6, 5, 2) if small else (4, 64, 48, 48, 13)
        x = (
            torch.randn(b, c, h, w, generator=gen)
            .bfloat16()
            .to(dev)
            .contiguous(memory_format=torch.channels_last)
        )
        flows = (torch.randn(b, 2 * n, h, w, generator=gen) * 2).bfloat16().to(dev)
        g = torch.randn(b, h, w, n * c, generator=gen).bfloat16().to(dev)
        res = []
        for fn in (warp_concat_torch, warp_concat_triton):
            xr, fr = x.clone().requires_grad_(), flows.clone().requires_grad_()
            fn(xr, fr, True).backward(g)
            res.append((xr.grad, fr.grad))
        eh, ef = _rel_l2(res[1][0], res[0][0]), _rel_l2(res[1][1], res[0][1])
        return dict(ok=eh < 2e-2 and ef < 5e-2, grad_h_rel_l2=eh, grad_flow_rel_l2=ef)

    checks.run("warp_concat bf16 gradients vs portable grid_sample path", warp_vs_portable_bf16_grads)

    def repeatable():
        b, c, h, w, n = (1, 4, 6, 5, 2) if small else (2, 64, 48, 48, 13)
        x = torch.randn(b, c, h, w, generator=gen).to(dev).contiguous(memory_format=torch.channels_last)
        flows = (torch.randn(b, 2 * n, h, w, generator=gen) * 2).to(dev)
        g = torch.randn(b, h, w, n * c, generator=gen).to(dev)
        runs = []
        for _ in range(2):
            xr, fr = x.clone().requires_grad_(), flows.clone().requires_grad_()
            warp_concat_triton(xr, fr, True).backward(g)
            runs.append((xr.grad, fr.grad))
        return dict(
            ok=_maxdiff(runs[0][1], runs[1][1]) == 0 and _maxdiff(runs[0][0], runs[1][0]) < 1e-4,
            flow_grad_diff=_maxdiff(runs[0][1], runs[1][1]),
            h_grad_diff=_maxdiff(runs[0][0], runs[1][0]),
        )

    checks.run("warp_concat backward repeatability (fp32 atomics)", repeatable)

    def gates(has_i2h, channels_last, dtype):
        b, c, h, w = (2, 5, 6, 7) if small else (4, 64, 24, 24)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        ts = [torch.randn(b, k * c, h, w, generator=gen, dtype=torch.float64) * 2 for k in (3, 3, 1)]
        if not has_i2h:
            ts[0] = None
        refs = [t.clone().requires_grad_() for t in ts if t is not None]
        ref = gru_equations(refs[0] if has_i2h else None, refs[-2], refs[-1], 0.2)
        g = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
        ref_grads = torch.autograd.grad(ref, refs, g)
        devs = [
            t.to(dtype).to(dev).contiguous(memory_format=fmt).requires_grad_() for t in ts if t is not None
        ]
        got = gru_gates_triton(devs[0] if has_i2h else None, devs[-2], devs[-1], 0.2)
        grads = torch.autograd.grad(got, devs, g.to(dtype).to(dev))
        tol = 1e-5 if dtype == torch.float32 else 6e-2
        errs = [_maxdiff(got, ref)] + [_maxdiff(a, b) for a, b in zip(grads, ref_grads)]
        if dtype != torch.float32:  # bf16: compare relative L2 instead (inputs were rounded)
            errs = [_rel_l2(got, ref)] + [_rel_l2(a, b) for a, b in zip(grads, ref_grads)]
            tol = 2e-2
        return dict(ok=max(errs) < tol, errors=errs, tol=tol)

    for has in (True, False):
        for cl in (True, False):
            checks.run(
                f"gru_gates fp32 i2h={has} channels_last={cl}", lambda h=has, c=cl: gates(h, c, torch.float32)
            )
    checks.run("gru_gates bf16 i2h=True channels_last=True", lambda: gates(True, True, torch.bfloat16))

    def randomise_flows(model):
        for c in model.recurrent_cells():
            if isinstance(c, TrajGRUCell):
                with torch.no_grad():
                    c.flow_out.weight.normal_(0, 0.02)
                    c.flow_out.bias.uniform_(-1.5, 1.5)
        return model

    model_kw = dict(height=32, width=32, in_len=2, out_len=3) if small else dict(height=240, width=240)
    preset = "tiny" if small else "hko7"

    def model_fp32():
        torch.manual_seed(0)
        plain = randomise_flows(build_model(preset, **model_kw)).to(dev)
        fast = enable_fast_path(copy.deepcopy(plain), backend="triton" if not cuda else "auto")
        cfg = plain.config
        x = torch.rand(cfg.in_len, 1, 1, cfg.height, cfg.width, device=dev)
        y = torch.rand(cfg.out_len, 1, 1, cfg.height, cfg.width, device=dev)
        res = []
        for m in (plain, fast):
            m.zero_grad()
            o = m(x)
            F.mse_loss(o, y).backward()
            res.append((o.detach(), [p.grad for p in m.parameters()]))
        out_err = _rel_l2(res[1][0], res[0][0])
        grad_errs = [_rel_l2(a, b) for a, b in zip(res[1][1], res[0][1]) if b.abs().max() > 0]
        return dict(
            ok=out_err < 1e-4 and max(grad_errs) < 1e-3, out_rel_l2=out_err, grad_rel_l2_max=max(grad_errs)
        )

    checks.run(f"model fast (fp32 kernels) vs plain fp32: {preset} {model_kw}", model_fp32)

    def model_bf16():
        if not cuda:
            return dict(ok=True, note="bf16 autocast checked on CUDA only")
        torch.manual_seed(0)
        plain = randomise_flows(build_model(preset, **model_kw)).to(dev)
        fast = enable_fast_path(copy.deepcopy(plain))
        cfg = plain.config
        x = torch.rand(cfg.in_len, 2, 1, cfg.height, cfg.width, device=dev)
        y = torch.rand(cfg.out_len, 2, 1, cfg.height, cfg.width, device=dev)
        plain.zero_grad()
        ref = plain(x)
        F.mse_loss(ref, y).backward()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = fast(x)
        F.mse_loss(got.float(), y).backward()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            plain_bf16 = plain(x).float()
        e_fast, e_plain = _rel_l2(got.float(), ref), _rel_l2(plain_bf16, ref)
        ge = [
            _rel_l2(a.grad, b.grad)
            for a, b in zip(fast.parameters(), plain.parameters())
            if b.grad.abs().max() > 0
        ]
        return dict(
            ok=e_fast < 3e-2,
            out_rel_l2_fast_bf16=e_fast,
            out_rel_l2_plain_bf16=e_plain,
            max_abs_diff=_maxdiff(got.float(), ref),
            grad_rel_l2_max=max(ge),
            grad_rel_l2_median=sorted(ge)[len(ge) // 2],
        )

    checks.run(f"model fast bf16 vs plain fp32 (bf16 tolerance): {preset} {model_kw}", model_bf16)

    def captured_train():
        if not cuda:
            return dict(ok=True, note="CUDA graphs need CUDA")
        torch.backends.cudnn.deterministic = True
        torch.manual_seed(0)
        m1 = enable_fast_path(randomise_flows(build_model("tiny")).cuda())
        m2 = copy.deepcopy(m1)
        o1, o2 = (
            fused_adam(m1.parameters(), 1e-3, (0.5, 0.999)),
            fused_adam(m2.parameters(), 1e-3, (0.5, 0.999)),
        )
        s1, s2 = (torch.optim.lr_scheduler.StepLR(o, 2, 0.5) for o in (o1, o2))
        batches = [
            (
                torch.rand(5, 4, 1, 96, 96, generator=gen).cuda(),
                torch.rand(20, 4, 1, 96, 96, generator=gen).cuda(),
            )
            for _ in range(5)
        ]
        mse = lambda p, t: F.mse_loss(p, t)  # noqa: E731
        g1 = TrainStep(m1, o1, mse, clip_norm=0.05, capture_example=batches[0])
        e2 = TrainStep(m2, o2, mse, clip_norm=0.05)
        if not g1.graphed:
            return dict(ok=False, fallback=g1.fallback_reason)
        diffs = []
        for x, y in batches:
            l1, n1 = g1(x, y)
            l2, n2 = e2(x, y)
            diffs.append(abs(l1 - l2) / abs(l2))
            s1.step()
            s2.step()
        pdiff = max(_rel_l2(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
        before = [p.detach().clone() for p in m1.parameters()]
        try:
            g1(batches[0][0], torch.full_like(batches[0][1], float("nan")))
            refused = False
        except NonFiniteLoss:
            refused = True
        skipped = refused and all(torch.equal(p, b) for p, b in zip(m1.parameters(), before))
        torch.backends.cudnn.deterministic = False
        return dict(
            ok=max(diffs) < 1e-4 and pdiff < 1e-3 and skipped,
            loss_rel_diffs=diffs,
            param_rel_l2_max=pdiff,
            nan_step_skipped=skipped,
            lr_now=float(o1.param_groups[0]["lr"]),
        )

    checks.run("TrainStep captured == plain steps, fp32, clip, StepLR, NaN refused", captured_train)

    def captured_forecast():
        if not cuda:
            return dict(ok=True, note="CUDA graphs need CUDA")
        m = enable_fast_path(randomise_flows(build_model("tiny")).cuda())
        x = torch.rand(5, 2, 1, 96, 96, device="cuda")
        fc = CapturedForecaster(m, x)
        x2 = torch.rand_like(x)
        got = fc(x2).clone()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            ref = m(x2).float()
        return dict(
            ok=fc.graphed and _maxdiff(got, ref) < 1e-2,
            graphed=fc.graphed,
            fallback=fc.fallback_reason,
            max_abs_diff=_maxdiff(got, ref),
        )

    checks.run("CapturedForecaster (graph) == eager bf16 forecast", captured_forecast)

    def micro():
        """fwd+bwd time of the warp + concat at hko7 stage 0 (B=4, C=64, 96x96, L=13), bf16."""
        if not cuda:
            return dict(ok=True, note="timing on CUDA only")
        x = torch.randn(4, 64, 96, 96, device="cuda").bfloat16().contiguous(memory_format=torch.channels_last)
        flows = (
            (torch.randn(4, 26, 96, 96, device="cuda") * 2)
            .bfloat16()
            .contiguous(memory_format=torch.channels_last)
        )
        g = torch.randn(4, 96, 96, 13 * 64, device="cuda").bfloat16()
        times = {}
        for name, fn in (("portable_grid_sample", warp_concat_torch), ("triton", warp_concat_triton)):
            xr, fr = x.clone().requires_grad_(), flows.clone().requires_grad_()
            for _ in range(3):
                fn(xr, fr, True).backward(g)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(20):
                o = fn(xr, fr, True)
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            for _ in range(20):
                fn(xr, fr, True).backward(g)
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            times[name] = dict(fwd_ms=(t1 - t0) / 20 * 1e3, fwd_bwd_ms=(t2 - t1) / 20 * 1e3)
            del o
        return dict(ok=True, **times)

    checks.run("warp+concat micro-benchmark, hko7 stage 0 shape, bf16", micro)

    n_bad = sum(r["status"] != "ok" for r in checks.results)
    print(f"checks: {len(checks.results) - n_bad}/{len(checks.results)} ok")
    return 0


def stage_pytest(out: Path, quick: bool) -> int:
    try:
        import pytest  # noqa: F401
    except ImportError:
        (out / "pytest.txt").write_text(
            "pytest is not installed here; the checks stage ran the kernel tests' logic.\n"
        )
        print("pytest not installed: skipped")
        return 0
    # the CUDA tests (marked gpu) of the whole suite; the rest runs in CI on CPUs
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "-m", "gpu", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    text = proc.stdout[-20000:] + proc.stderr[-5000:]
    (out / "pytest.txt").write_text(text)
    print(text[-3000:])
    return 0


def stage_bench(out: Path, quick: bool) -> int:
    import contextlib

    import torch

    from benchmarks import bench_trajgru as bench

    if quick or not torch.cuda.is_available():
        argv = [
            "--preset",
            "tiny",
            "--size",
            "32",
            "--variants",
            "plain-fp32,graph-bf16",
            "--batches",
            "2,3",
            "--forecast-batches",
            "1,2",
            "--big-batch-variants",
            "graph-bf16",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--device",
            "cuda" if torch.cuda.is_available() else "cpu",
        ]
    else:
        argv = [
            "--preset",
            "hko7",
            "--device",
            "cuda",
            "--variants",
            "all",
            "--batches",
            "4,16",
            "--forecast-batches",
            "1,16",
            "--big-batch-variants",
            "graph-bf16,plain-bf16",
            "--steps",
            "3",
            "--warmup",
            "2",
        ]
    argv += ["--json-out", str(out / "bench.json")]
    # stream to bench.txt as rows arrive (a timeout keeps what was measured; bench.json is
    # rewritten after every row too)
    with open(out / "bench.txt", "w", buffering=1) as fh, contextlib.redirect_stdout(_Tee(fh, sys.stdout)):
        print("command: python benchmarks/bench_trajgru.py " + " ".join(argv[:-2]))
        try:
            bench.main(argv)
        except Exception:
            traceback.print_exc(file=sys.stdout)
    return 0


class _Tee:
    """Write to several text streams."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for st in self.streams:
            st.write(text)
        return len(text)

    def flush(self):
        for st in self.streams:
            st.flush()


def stage_numerics(out: Path, quick: bool) -> int:
    import torch

    from benchmarks import bench_trajgru as bench

    cuda = torch.cuda.is_available()
    steps = 300 if (cuda and not quick) else 3
    batch = 8 if (cuda and not quick) else 2
    args = bench.parse_args(["--numerics", str(steps), "--numerics-batch", str(batch)])
    r = bench.numerics(args, torch.device("cuda" if cuda else "cpu"))
    bench.print_numerics(r)
    (out / "numerics.json").write_text(json.dumps(r, default=str))
    return 0


def stage_profile(out: Path, quick: bool) -> int:
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    from trajgru import build_model
    from trajgru.fast import enable_fast_path, fused_adam
    from trajgru.step import TrainStep

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    kw = dict(height=32, width=32) if not cuda else {}
    model = build_model("tiny" if not cuda else "hko7", **kw).to(dev)
    enable_fast_path(model)
    opt = fused_adam(model.parameters(), 1e-4, (0.5, 0.999))
    cfg = model.config
    b = 4 if cuda else 1
    x = torch.rand(cfg.in_len, b, 1, cfg.height, cfg.width, device=dev)
    y = torch.rand(cfg.out_len, b, 1, cfg.height, cfg.width, device=dev)
    torch.backends.cudnn.benchmark = True

    train_step = TrainStep(model, opt, F.mse_loss, clip_norm=50.0, autocast_dtype=torch.bfloat16)

    def step():
        train_step(x, y)

    for _ in range(2):
        step()
    if cuda:
        torch.cuda.synchronize()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        step()
        if cuda:
            torch.cuda.synchronize()
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    try:
        table = prof.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=70)
    except Exception:
        table = prof.key_averages().table(
            sort_by="self_cuda_time_total" if cuda else sort, row_limit=30, max_name_column_width=70
        )
    head = (
        f"profile of one fast-path bf16 training step (trajgru.step.TrainStep, plain path), {cfg.preset} "
        f"{cfg.height}x{cfg.width}, batch {b}\n"
    )
    (out / "profile.txt").write_text(head + table)
    try:
        kernels = [e for e in prof.events() if "CUDA" in str(getattr(e, "device_type", ""))]
        head += (
            f"{len(kernels)} device events, "
            f"{sum(getattr(e, 'device_time_total', 0.0) for e in kernels) / 1e3:.1f} ms device time\n"
        )
    except Exception as exc:
        head += f"(kernel count unavailable: {exc})\n"
    (out / "profile.txt").write_text(head + table)
    print(head + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
