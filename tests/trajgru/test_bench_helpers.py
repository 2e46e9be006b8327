"""Small pure helpers of benchmarks/bench_trajgru.py (the GPU numbers depend on them)."""

from __future__ import annotations

import pytest
import torch

from benchmarks import bench_trajgru as bench


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("cpu (2 threads)", None),
    ],
)
def test_peak_table(name, peak):
    assert bench.peak_bf16_tflops(name) == peak


def test_speedups_are_against_plain_fp32_of_the_same_batch():
    rows = [
        dict(variant="plain-fp32", batch=4, forecast_batch=1, train_step_s=0.2, forecast_s=0.04),
        dict(variant="graph-bf16", batch=4, forecast_batch=1, train_step_s=0.05, forecast_s=0.01),
        dict(variant="graph-bf16", batch=16, forecast_batch=16, train_step_s=0.1, forecast_s=0.02),
        dict(variant="fast-bf16", batch=4, forecast_batch=1, error="OOM"),
    ]
    bench._add_ratios(rows)
    assert rows[1]["train_speedup_vs_plain_fp32"] == pytest.approx(4.0)
    assert rows[1]["forecast_speedup_vs_plain_fp32"] == pytest.approx(4.0)
    assert "train_speedup_vs_plain_fp32" not in rows[2] and "train_speedup_vs_plain_fp32" not in rows[3]


def test_moving_blobs_are_quantised_frames():
    clips = bench.moving_blobs(2, 3, 25, 32, seed=1)
    assert clips.shape == (2, 25, 3, 1, 32, 32)
    assert 0 <= clips.min() and clips.max() <= 1 and clips.max() > 0.2
    assert torch.equal(clips, torch.round(clips * 255) / 255)  # no denormal tails
    assert torch.equal(clips, bench.moving_blobs(2, 3, 25, 32, seed=1))  # deterministic
