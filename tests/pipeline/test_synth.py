"""Tests for pipeline.synth: layout, codecs, masks, determinism, missing frames, day lists, weather."""

from __future__ import annotations

import dataclasses
import math
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import synth
from pipeline.catalog import read_day_list, split_days_by_fraction
from pipeline.errors import NowcastError
from pipeline.sources import dbz_to_u8, hko7
from pipeline.synth import SynthConfig, synth_archive

SIZE = 64
FRAMES = 30
DAYS = 3
START = "2015-06-01"


def _archive(root: Path, **kw) -> synth.SynthResult:
    args = dict(
        start=START, days=DAYS, frames_per_day=FRAMES, size_px=SIZE, seed=0, missing_frame_rate=0.1, workers=1
    )
    args.update(kw)
    return synth_archive(SynthConfig(root, **args), progress=False)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, synth.SynthResult]:
    root = tmp_path_factory.mktemp("synth") / "archive"
    return root, _archive(root)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "L"
        return np.array(img)


def _read_mask(path: Path, shape) -> np.ndarray:
    return np.frombuffer(zlib.decompress(path.read_bytes()), np.uint8).reshape(shape).astype(bool)


def _rain_mm_h_naive(pixel_u8: np.ndarray) -> np.ndarray:
    """Independent reference: pixel -> dBZ = 70 p/255 - 10 -> Z = 10^(dBZ/10) -> R = (Z / 58.53)^(1/1.56)."""
    dbz = pixel_u8.astype(np.float64) * 70.0 / 255.0 - 10.0
    return (10.0 ** (dbz / 10.0) / 58.53) ** (1.0 / 1.56)


# --- layout --------------------------------------------------------------------------------------------------
def test_layout_and_file_names(archive):
    root, res = archive
    pngs = sorted((root / "radarPNG").rglob("*"))
    pngs = [p for p in pngs if p.is_file()]
    masks = [p for p in (root / "radarPNG_mask").rglob("*") if p.is_file()]
    assert res.n_days == DAYS and res.n_frames == len(pngs) == len(masks)
    t0 = np.datetime64(START + "T00:00:00")
    allowed = {
        t0 + np.timedelta64(d, "D") + np.timedelta64(6 * k, "m") for d in range(DAYS) for k in range(FRAMES)
    }
    for p in pngs:
        rel = p.relative_to(root).as_posix()
        m = re.fullmatch(
            r"radarPNG/(\d{4})/(\d{2})/(\d{2})/RAD(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})00\.png", rel
        )
        assert m, rel
        yyyy, mm, dd, yy, mo, d2, hh, mi = m.groups()
        assert yyyy[2:] == yy and mm == mo and dd == d2
        t = np.datetime64(f"{yyyy}-{mm}-{dd}T{hh}:{mi}:00")
        assert t in allowed
        assert (root / "radarPNG_mask" / yyyy / mm / dd / (p.stem + ".mask")).is_file()
    for split in ("train", "valid", "test"):
        assert (root / f"{split}_days.txt").is_file()
    assert (root / "synth_config.json").is_file()


def test_frame_times_use_six_minute_slots_from_midnight(tmp_path):
    _archive(tmp_path, days=1, frames_per_day=240, size_px=16, missing_frame_rate=0.0)
    times = sorted(hko7.time_from_name(p) for p in (tmp_path / "radarPNG").rglob("*.png"))
    day0 = int(np.datetime64(START, "s").astype(np.int64))
    assert times == [day0 + 360 * k for k in range(240)]
    assert hko7.file_stem(times[-1]) == "RAD150601235400"


# --- codecs -----------------------------------------------------------------------------------------------------
def test_png_matches_dbz_formula(archive):
    root, _ = archive
    frames = list(synth.simulate_day(0, START, FRAMES, SIZE, 0.1))
    checked = 0
    for f in frames:
        if f.missing or checked == 4:
            continue
        img = _read_png(hko7.frame_path(root, f.time_s))
        assert img.shape == (SIZE, SIZE) and img.dtype == np.uint8
        expected = np.zeros((SIZE, SIZE), np.uint8)
        for r in range(SIZE):  # naive per-pixel reference of round(255 (dBZ + 10) / 70), clipped to 0..255
            for c in range(SIZE):
                v = math.floor(255.0 * (float(f.dbz[r, c]) + 10.0) / 70.0 + 0.5)
                expected[r, c] = min(255, max(0, v))
        np.testing.assert_array_equal(img, expected)
        checked += 1
    assert checked >= 4


def test_masks_circular_coverage_and_clutter(archive):
    root, _ = archive
    paths = sorted((root / "radarPNG_mask").rglob("*.mask"))
    r0 = synth.COVERAGE_RADIUS * SIZE
    circle = np.array(
        [
            [(c + 0.5 - SIZE / 2) ** 2 + (r + 0.5 - SIZE / 2) ** 2 <= r0 * r0 for c in range(SIZE)]
            for r in range(SIZE)
        ]
    )
    for mpath in paths[:10]:
        mask = _read_mask(mpath, (SIZE, SIZE))
        assert hko7.decode_mask(mpath.read_bytes(), (SIZE, SIZE)).tolist() == mask.tolist()
        assert not (mask & ~circle).any(), "valid pixels outside the radar range"
        holes = circle & ~mask  # clutter / outliers inside the coverage
        assert 1 <= holes.sum() <= 0.03 * circle.sum()
        assert mask[SIZE // 2 - 3 : SIZE // 2 + 3, SIZE // 2 - 3 : SIZE // 2 + 3].sum() >= 30
        png = _read_png(hko7.frame_path(root, hko7.time_from_name(mpath)))
        assert (png[~circle] == 0).all()
        assert (png[holes] >= dbz_to_u8(40.0)).all(), "clutter pixels carry high values"
    # the static clutter is the same in every frame
    common = np.logical_and.reduce([~_read_mask(p, (SIZE, SIZE)) & circle for p in paths])
    assert common.sum() >= 1


# --- determinism ----------------------------------------------------------------------------------------------
def test_deterministic_across_runs_and_worker_counts(tmp_path, archive):
    root, _ = archive
    _archive(tmp_path / "w2", workers=2)
    reference = _files(root)
    assert _files(tmp_path / "w2") == reference
    _archive(tmp_path / "w1", workers=1)
    assert _files(tmp_path / "w1") == reference
    _archive(tmp_path / "s1", seed=1)
    other = _files(tmp_path / "s1")
    assert other.keys() != reference.keys() or any(other[k] != reference[k] for k in reference)


def test_a_date_gets_the_same_weather_whatever_the_start(tmp_path, archive):
    root, _ = archive
    _archive(tmp_path / "late", start="2015-06-02", days=2)
    late = _files(tmp_path / "late")
    early = _files(root)
    frames = [k for k in late if k.startswith("radarPNG")]
    assert frames and all(late[k] == early[k] for k in frames)


# --- missing frames -----------------------------------------------------------------------------------------
def test_missing_frames_exist_and_frames_match_masks(archive):
    root, res = archive
    assert res.n_frames < DAYS * FRAMES
    stems_png = {p.stem for p in (root / "radarPNG").rglob("*.png")}
    stems_mask = {p.stem for p in (root / "radarPNG_mask").rglob("*.mask")}
    assert stems_png == stems_mask


def test_no_missing_frames_when_rate_is_zero(tmp_path):
    res = _archive(tmp_path, days=2, frames_per_day=40, size_px=16, missing_frame_rate=0.0)
    assert res.n_frames == 80


def _runs(missing: np.ndarray) -> np.ndarray:
    """Lengths of runs of True (naive loop)."""
    runs, n = [], 0
    for m in missing:
        if m:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    if n:
        runs.append(n)
    return np.array(runs)


def test_missing_slots_statistics():
    rate, n = 0.02, 200_000
    missing = synth.missing_slots(np.random.default_rng(5), n, rate)
    runs = _runs(missing)
    lo, hi = synth.OUTAGE_FRAMES
    outages = (runs >= lo).sum()
    expected_outages = rate * synth.OUTAGE_START_PER_MISSING * n
    assert 0.7 * expected_outages < outages < 1.3 * expected_outages + 5
    # drop-outs plus outages: rate + ~(outage starts x mean length)
    expected = rate + rate * synth.OUTAGE_START_PER_MISSING * (lo + hi) / 2
    assert abs(missing.mean() - expected) < 0.25 * expected
    assert runs.max() <= 2 * hi + 2
    assert not synth.missing_slots(np.random.default_rng(5), n, 0.0).any()


# --- day lists ---------------------------------------------------------------------------------------------------
def test_day_lists_partition_the_days(archive):
    root, res = archive
    lists = {s: read_day_list(root / f"{s}_days.txt") for s in ("train", "valid", "test")}
    all_days = [np.datetime64(START, "D") + i for i in range(DAYS)]
    assert sorted(sum(lists.values(), [])) == all_days
    assert all(len(v) >= 1 for v in lists.values())
    assert max(lists["train"]) < min(lists["valid"]) and max(lists["valid"]) < min(lists["test"])
    for split in lists:
        for line in (root / f"{split}_days.txt").read_text().splitlines():
            day, rain = (x.strip() for x in line.split(","))
            assert re.fullmatch(r"\d{8}", day) and float(rain) > 0
    assert sorted(res.day_rain_mm) == [str(d) for d in all_days]


@pytest.mark.parametrize("n", range(1, 25))
def test_split_days_sizes(n):
    """synth's ~70/15/15 day lists: the catalog's one split rule with synth's fractions."""
    days = [np.datetime64("2015-01-01") + i for i in range(n)]
    parts = {
        k: list(v) for k, v in split_days_by_fraction(days, synth.VALID_FRACTION, synth.TEST_FRACTION).items()
    }
    assert parts["train"] + parts["valid"] + parts["test"] == days
    if n >= 3:
        assert all(len(p) >= 1 for p in parts.values())
        assert len(parts["train"]) >= n * 0.7 - 2
    else:
        assert len(parts["train"]) == 1


# --- weather ----------------------------------------------------------------------------------------------------
def test_intensities_cover_all_thresholds(tmp_path):
    root = tmp_path / "a"
    _archive(root, days=2, frames_per_day=40, size_px=96, missing_frame_rate=0.0)
    rain = []
    for p in sorted((root / "radarPNG").rglob("*.png")):
        mask = _read_mask(hko7.mask_path(root, hko7.time_from_name(p)), (96, 96))
        rain.append(_rain_mm_h_naive(_read_png(p))[mask])
    rain = np.concatenate(rain)
    fractions = {th: float((rain >= th).mean()) for th in (0.5, 2, 5, 10, 30)}
    assert fractions[0.5] < 0.6, "most of the radar range should be dry"
    assert fractions[30] > 1e-4, fractions
    assert all(fractions[a] > fractions[b] for a, b in [(0.5, 2), (2, 5), (5, 10), (10, 30)]), fractions


def _shift_ssd(a: np.ndarray, b: np.ndarray, valid: np.ndarray, max_shift: int) -> np.ndarray:
    """SSD of b[y, x] - a[y - dy, x - dx] over pixels valid in both, for every integer (dy, dx) up to max_shift."""
    h, w = a.shape
    out = np.zeros((2 * max_shift + 1,) * 2)
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            to = (slice(max(0, dy), h + min(0, dy)), slice(max(0, dx), w + min(0, dx)))
            frm = (slice(max(0, -dy), h + min(0, -dy)), slice(max(0, -dx), w + min(0, -dx)))
            both = valid[to] & valid[frm]
            d = (b[to] - a[frm])[both]
            out[dy + max_shift, dx + max_shift] = np.sum(d * d)
    return out


def _non_uniform_fraction(frames: np.ndarray, valid: np.ndarray, lag: int = 3, max_shift: int = 6) -> float:
    """Share of the motion-explainable change that one global shift cannot explain.

    For pairs (t, t + lag): R0 = residual without shift, Rq = each quadrant with its own best shift,
    Rg = one common shift for all quadrants; returns sum(Rg - Rq) / sum(R0 - Rq). ~0 for a uniform shift.
    """
    half = frames.shape[1] // 2
    quads = [(slice(r, r + half), slice(c, c + half)) for r in (0, half) for c in (0, half)]
    rg = rq = r0 = 0.0
    for t in range(0, len(frames) - lag, 2):
        a, b, v = frames[t], frames[t + lag], valid[t] & valid[t + lag]
        surfaces = [_shift_ssd(a[q], b[q], v[q], max_shift) for q in quads]
        rg += sum(surfaces).min()
        rq += sum(s.min() for s in surfaces)
        r0 += sum(s[max_shift, max_shift] for s in surfaces)
    return (rg - rq) / (r0 - rq)


def test_motion_is_not_a_uniform_shift():
    frames, valid = [], []
    for day in ("2015-06-01", "2015-06-02"):
        fr = list(synth.simulate_day(0, day, 30, SIZE))
        frames.append(np.stack([np.clip(f.dbz, 0, None) for f in fr]))
        valid.append(np.stack([f.mask for f in fr]))
    score = np.mean([_non_uniform_fraction(f, v) for f, v in zip(frames, valid)])
    # control: one frame moved by a uniform shift, with sensor noise -> the measure is ~0
    rng = np.random.default_rng(0)
    base = frames[0][10]
    control = np.stack(
        [np.roll(base, (k // 3, 2 * (k // 3)), (0, 1)) + rng.normal(0, 1, base.shape) for k in range(30)]
    )
    control_score = _non_uniform_fraction(control, np.ones(control.shape, bool))
    assert control_score < 0.02
    assert score > 0.1 and score > 5 * control_score, (score, control_score)


def test_wind_is_non_uniform_and_divergence_free():
    for seed in range(5):
        wind = synth.WindField.random(np.random.default_rng(seed))
        n, h = 41, 1e-4
        g = np.linspace(0.0, 1.0, n)
        x, y = np.meshgrid(g, g)
        u, v = wind.velocity(x, y, 30.0)
        speed_var = np.sqrt(u.var() + v.var())
        assert speed_var > 0.1 * np.hypot(u.mean(), v.mean())
        # divergence by central differences (independent of the analytic construction)
        du_dx = (wind.velocity(x + h, y, 30.0)[0] - wind.velocity(x - h, y, 30.0)[0]) / (2 * h)
        dv_dy = (wind.velocity(x, y + h, 30.0)[1] - wind.velocity(x, y - h, 30.0)[1]) / (2 * h)
        vort = wind.vorticity(x, y, 30.0)
        assert np.abs(du_dx + dv_dy).max() < 1e-6 + 1e-3 * np.abs(vort).max()
        # slowly time-varying: a later wind differs but not wildly from one frame to the next
        u2, v2 = wind.velocity(x, y, 31.0)
        u_late, _ = wind.velocity(x, y, 150.0)
        assert np.abs(u2 - u).max() < 0.2 * np.abs(u).max() + 1e-9
        assert np.abs(u_late - u).max() > np.abs(u2 - u).max()


def test_objects_follow_the_wind_rotate_and_live_a_life_cycle():
    wind = synth.WindField.random(np.random.default_rng(2))
    cells = _some_cells(n=5)
    cells.drift_u[:] = 0.0
    cells.drift_v[:] = 0.0
    cells.spin[:] = 0.0
    x0, y0, th0, t = cells.x.copy(), cells.y.copy(), cells.theta.copy(), 7.0
    cells.advance(wind, t)
    for k in range(5):  # midpoint rule, one point at a time
        u1, v1 = wind.velocity(np.array(x0[k]), np.array(y0[k]), t)
        xm, ym = x0[k] + 0.5 * float(u1), y0[k] + 0.5 * float(v1)
        u2, v2 = wind.velocity(np.array(xm), np.array(ym), t + 0.5)
        assert cells.x[k] == pytest.approx(xm - 0.5 * float(u1) + float(u2), abs=1e-12)
        assert cells.y[k] == pytest.approx(ym - 0.5 * float(v1) + float(v2), abs=1e-12)
        vort = float(wind.vorticity(np.array(xm), np.array(ym), t + 0.5))
        assert cells.theta[k] == pytest.approx(th0[k] + 0.5 * vort, abs=1e-6)
    step = np.hypot(cells.x - x0, cells.y - y0)
    assert np.ptp(step) > 0.05 * step.mean(), "cells in different places move differently"
    # life cycle: zero at birth and death, peak at mid-life
    pop = synth._new_cells(np.random.default_rng(0), 3, synth.Population.empty(), random_age=False)
    assert (pop.envelope(1.5) == 0).all()
    pop.age = pop.life / 2
    np.testing.assert_allclose(pop.envelope(1.5), 1.0)
    pop.age = pop.life
    np.testing.assert_allclose(pop.envelope(1.5), 0.0, atol=1e-12)


def test_simulator_births_and_deaths():
    sim = synth.DaySimulator(0, np.datetime64(START), 32)
    births = deaths = 0
    for _ in range(40):
        old_life = set(np.round(sim.cells.life, 12))
        sim.step()
        new_life = set(np.round(sim.cells.life, 12))
        births += len(new_life - old_life)
        deaths += len(old_life - new_life)
    assert births > 0 and deaths > 0


# --- renderers against naive references ------------------------------------------------------------------------
def _some_cells(n=6, seed=3):
    cells = synth._new_cells(np.random.default_rng(seed), n, synth.Population.empty(), random_age=True)
    cells.x = np.random.default_rng(seed).uniform(0.1, 0.9, n)
    cells.y = np.random.default_rng(seed + 1).uniform(0.1, 0.9, n)
    cells.satellite[:] = 0.5
    return cells


def test_render_cells_matches_naive_loop():
    size = 24
    cells = _some_cells()
    fast = synth._render_cells(cells, size)
    cx, cy, a, b, theta, amp = synth._cell_cores(cells, size)
    naive = np.zeros((size, size))
    for r in range(size):
        for c in range(size):
            for k in range(len(cx)):
                dx, dy = c - cx[k], r - cy[k]
                along = dx * math.cos(theta[k]) + dy * math.sin(theta[k])
                across = -dx * math.sin(theta[k]) + dy * math.cos(theta[k])
                if max(abs(dx), abs(dy)) <= 3 * a.max():
                    naive[r, c] += amp[k] * math.exp(-0.5 * ((along / a[k]) ** 2 + (across / b[k]) ** 2))
    np.testing.assert_allclose(fast, naive, rtol=1e-4, atol=1e-3 * amp.max())


def test_render_bands_and_skirts_match_naive_loop():
    n = 16
    bands = synth._new_bands(np.random.default_rng(1), 3, random_age=True)
    cells = _some_cells()
    fast_b, fast_s = synth._render_bands(bands, n), synth._render_skirts(cells, n)
    env_b, env_c = bands.envelope(0.5), cells.envelope(1.5)
    naive_b, naive_s = np.zeros((n, n)), np.zeros((n, n))
    for r in range(n):
        for c in range(n):
            x, y = (c + 0.5) / n, (r + 0.5) / n
            for k in range(len(bands)):
                dx, dy = x - bands.x[k], y - bands.y[k]
                along = dx * math.cos(bands.theta[k]) + dy * math.sin(bands.theta[k])
                across = (
                    -dx * math.sin(bands.theta[k])
                    + dy * math.cos(bands.theta[k])
                    - bands.curvature[k] * along**2
                )
                q = (along / bands.sigma_major[k]) ** 2 + (across / bands.sigma_minor[k]) ** 2
                naive_b[r, c] += bands.peak_mm_h[k] * env_b[k] * math.exp(-0.5 * q)
            for k in range(len(cells)):
                sigma = synth.SKIRT_SIZE * cells.sigma_major[k] * (0.6 + 0.4 * env_c[k])
                d2 = (x - cells.x[k]) ** 2 + (y - cells.y[k]) ** 2
                naive_s[r, c] += (
                    synth.SKIRT_INTENSITY * cells.peak_mm_h[k] * env_c[k] * math.exp(-0.5 * d2 / sigma**2)
                )
    np.testing.assert_allclose(fast_b, naive_b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fast_s, naive_s, rtol=1e-4, atol=1e-6)


# --- configuration --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        dict(days=0),
        dict(days=2.5),
        dict(days=True),
        dict(frames_per_day=0),
        dict(frames_per_day=241),
        dict(size_px=8),
        dict(seed=-1),
        dict(seed=1.5),
        dict(missing_frame_rate=-0.1),
        dict(missing_frame_rate=0.6),
        dict(missing_frame_rate="x"),
        dict(workers=0),
        dict(start="2015-13-01"),
        dict(start="June"),
        dict(start="1999-12-31"),
        dict(start="2099-12-31", days=2),
        dict(out_dir=""),
    ],
)
def test_bad_config_raises(tmp_path, bad):
    kw = dict(out_dir=tmp_path / "a")
    kw.update(bad)
    with pytest.raises(NowcastError, match=rf"({'|'.join(bad)}|2000-2099)") as info:
        SynthConfig(**kw)
    assert info.value.exit_code == 2


def test_out_dir_that_is_a_file_raises(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NowcastError, match="not a directory"):
        SynthConfig(f)


def test_defaults_and_progress(tmp_path):
    cfg = SynthConfig(tmp_path / "a")
    assert (
        cfg.start,
        cfg.days,
        cfg.frames_per_day,
        cfg.size_px,
        cfg.seed,
        cfg.missing_frame_rate,
        cfg.workers,
    ) == ("2015-06-01", 4, 240, 480, 0, 0.01, None)
    res = synth_archive(SynthConfig(tmp_path / "b", days=1, frames_per_day=3, size_px=16), progress=True)
    assert res.out_dir == (tmp_path / "b").absolute() and res.seconds > 0 and res.n_days == 1


# --- resampling helpers against naive references -------------------------------------------------------------
@pytest.mark.parametrize("n_out,n_in", [(20, 5), (7, 7), (5, 13)])
def test_linear_resample_matches_np_interp(n_out, n_in):
    signal = np.random.default_rng(0).normal(size=n_in)
    idx, w = synth.resample_taps(n_out, n_in)
    fast = (w * signal[idx]).sum(axis=0)
    # np.interp on pixel-centre positions; it holds the end values beyond the ends
    ref = np.interp((np.arange(n_out) + 0.5) / n_out, (np.arange(n_in) + 0.5) / n_in, signal)
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-6)


def test_cubic_resample_matches_keys_kernel_and_keeps_constants():
    n_in, n_out = 6, 17
    signal = np.random.default_rng(1).normal(size=n_in)
    idx, w = synth.resample_taps(n_out, n_in, cubic=True)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-6)

    def keys(d, a=-0.5):
        d = abs(d)
        if d <= 1:
            return (a + 2) * d**3 - (a + 3) * d**2 + 1
        return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a if d < 2 else 0.0

    for j in range(n_out):
        x = (j + 0.5) * n_in / n_out - 0.5
        ref = sum(
            keys(x - i) * signal[min(max(i, 0), n_in - 1)]
            for i in range(math.floor(x) - 1, math.floor(x) + 3)
        )
        assert (w[:, j] * signal[idx[:, j]]).sum() == pytest.approx(ref, abs=1e-5)
    img = np.random.default_rng(2).normal(size=(4, 5)).astype(np.float32)
    rows, cols = synth.resample_taps(9, 4), synth.resample_taps(11, 5)
    ref2 = np.array(
        [
            [
                sum(
                    rows[1][a, r] * cols[1][b, c] * img[rows[0][a, r], cols[0][b, c]]
                    for a in range(2)
                    for b in range(2)
                )
                for c in range(11)
            ]
            for r in range(9)
        ]
    )
    np.testing.assert_allclose(synth.resize2d(img, rows, cols), ref2, rtol=1e-5, atol=1e-6)


def test_bilinear_sample_matches_naive_with_reflection():
    rng = np.random.default_rng(3)
    img = rng.normal(size=(5, 7)).astype(np.float32)
    x = rng.uniform(-3, 9, (4, 6))
    y = rng.uniform(-3, 7, (4, 6))

    def reflect(i, n):  # cba|abcd|dcb, by repeated folding
        while i < 0 or i >= n:
            i = -1 - i if i < 0 else 2 * n - 1 - i
        return i

    fast = synth.bilinear_sample(img, x, y)
    for (r, c), xv in np.ndenumerate(x):
        yv = y[r, c]
        x0, y0 = math.floor(xv), math.floor(yv)
        fx, fy = xv - x0, yv - y0
        val = sum(
            wy * wx * img[reflect(y0 + dy, 5), reflect(x0 + dx, 7)]
            for dy, wy in ((0, 1 - fy), (1, fy))
            for dx, wx in ((0, 1 - fx), (1, fx))
        )
        assert fast[r, c] == pytest.approx(val, abs=1e-5)


@pytest.mark.timeout(120)
def test_parallel_workers_after_opencv_use_in_parent(tmp_path):
    """Forked workers must not inherit a dead OpenCV thread pool (the generator uses numpy only)."""
    cv2 = pytest.importorskip("cv2")
    cv2.GaussianBlur(np.zeros((600, 600), np.float32), (31, 31), 5)  # spin up OpenCV's threads here
    res = _archive(tmp_path, days=2, frames_per_day=4, size_px=16, workers=2, missing_frame_rate=0.0)
    assert res.n_frames == 8


def test_archive_matches_only_a_finished_archive_with_the_same_settings(tmp_path):
    cfg = SynthConfig(out_dir=tmp_path / "a", days=1, frames_per_day=3, size_px=32, workers=1)
    assert not synth.archive_matches(cfg)
    synth_archive(cfg, progress=False)
    assert synth.archive_matches(cfg)
    assert synth.archive_matches(dataclasses.replace(cfg, workers=2))  # workers do not change the bytes
    assert not synth.archive_matches(dataclasses.replace(cfg, seed=1))
    assert not synth.archive_matches(dataclasses.replace(cfg, size_px=48))
    (tmp_path / "a" / synth.CONFIG_FILE).write_text("{not json")
    assert not synth.archive_matches(cfg)
