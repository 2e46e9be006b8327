"""Time one training step (Adam) and one forecast of the TrajGRU encoder-forecaster.

Examples::

    python benchmarks/bench_trajgru.py --preset hko7 --size 480 --batch 1 --steps 2
    python benchmarks/bench_trajgru.py --preset hko7 --size 480 --batch 4 --device cuda --bf16
    python benchmarks/bench_trajgru.py --preset tiny --batch 2 --steps 10

Prints seconds per training step, training samples/s, seconds per forecast (in_len ->
out_len frames, e.g. 5 -> 20), forecast samples/s and peak memory
(``torch.cuda.max_memory_allocated`` on CUDA; the process's peak resident set size,
``ru_maxrss``, on the CPU). Inputs are random frames in [0, 1]; the loss is plain MSE.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trajgru import build_model  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="hko7", help="hko7 | mnist++ | tiny (default hko7)")
    p.add_argument("--cell", default="trajgru", help="trajgru | convgru | convlstm")
    p.add_argument("--size", type=int, default=None, help="height = width in pixels (default: the preset's)")
    p.add_argument("--batch", type=int, default=4, help="training batch size (default 4)")
    p.add_argument("--forecast-batch", type=int, default=1, help="forecast batch size (default 1)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--steps", type=int, default=3, help="timed repetitions of each measurement")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--channels-last", action="store_true", help="channels_last weights and activations")
    p.add_argument("--compile", action="store_true", help="torch.compile each recurrent cell's step")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    p.add_argument("--json", action="store_true", help="also print one JSON line with the results")
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, steps: int, warmup: int, device: torch.device) -> float:
    """Mean wall seconds of ``fn()`` over ``steps`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run(args: argparse.Namespace) -> dict:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to PyTorch")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    overrides = {} if args.size is None else {"height": args.size, "width": args.size}
    model = build_model(args.preset, args.cell, **overrides).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model.compile_cells()
    cfg = model.config
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def frames(n, batch):
        return torch.rand(n, batch, 1, cfg.height, cfg.width, generator=gen).to(device)

    x_train, y_train = frames(cfg.in_len, args.batch), frames(cfg.out_len, args.batch)
    x_fc = frames(cfg.in_len, args.forecast_batch)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def train_step():
        with autocast:
            loss = torch.nn.functional.mse_loss(model(x_train).float(), y_train)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def forecast():
        with torch.inference_mode(), autocast:
            model(x_fc)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_s = _timed(train_step, args.steps, args.warmup, device)
    train_peak = peak_memory_mib(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    forecast_s = _timed(forecast, args.steps, args.warmup, device)
    forecast_peak = peak_memory_mib(device)
    n_params = sum(p.numel() for p in model.parameters())
    return dict(
        preset=cfg.preset, cell=cfg.cell, size=f"{cfg.height}x{cfg.width}", in_len=cfg.in_len,
        out_len=cfg.out_len, batch=args.batch, forecast_batch=args.forecast_batch,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        bf16=args.bf16, channels_last=args.channels_last, compiled=args.compile, params=n_params,
        torch=torch.__version__, train_step_s=train_s, train_samples_per_s=args.batch / train_s,
        forecast_s=forecast_s, forecast_samples_per_s=args.forecast_batch / forecast_s,
        train_peak_mib=train_peak, forecast_peak_mib=forecast_peak,
        peak_memory_kind="torch.cuda.max_memory_allocated" if device.type == "cuda" else "ru_maxrss (process)",
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    r = run(args)
    print(
        f"{r['preset']}/{r['cell']} {r['size']} {r['in_len']}->{r['out_len']} on {r['device']}, "
        f"torch {r['torch']}, {r['params'] / 1e6:.2f} M params, bf16={r['bf16']}, "
        f"channels_last={r['channels_last']}, compiled={r['compiled']}"
    )
    print(
        f"train step (Adam, batch {r['batch']}): {r['train_step_s']:.3f} s/step, "
        f"{r['train_samples_per_s']:.2f} samples/s, peak memory {r['train_peak_mib']:.0f} MiB"
    )
    print(
        f"forecast {r['in_len']}->{r['out_len']} (batch {r['forecast_batch']}): {r['forecast_s']:.3f} s, "
        f"{r['forecast_samples_per_s']:.2f} samples/s, peak memory {r['forecast_peak_mib']:.0f} MiB "
        f"[{r['peak_memory_kind']}]"
    )
    if args.json:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
