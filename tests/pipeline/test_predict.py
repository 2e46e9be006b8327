"""Tests for pipeline.predict: inputs from a store or from PNGs, PNG/zarr/GIF outputs, errors.

Persistence repeats the last input frame, and the HKO-7 encoding round-trips exactly
(u8 -> u8/255 -> round(255 p)), so every forecast PNG must equal the last input frame (0 outside its mask)
bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import NowcastError
from pipeline.sources import hko7
from pipeline.times import iso_utc

SIZE = 48


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from pipeline.ingest import IngestConfig, ingest
    from pipeline.synth import SynthConfig, synth_archive

    root = tmp_path_factory.mktemp("pred")
    synth_archive(
        SynthConfig(
            out_dir=root / "archive",
            days=1,
            frames_per_day=40,
            size_px=SIZE,
            seed=5,
            workers=1,
            missing_frame_rate=0.0,
        ),
        progress=False,
    )
    ingest(IngestConfig(archive=root / "archive", store=root / "store.zarr", workers=0), progress=False)
    return root / "store.zarr"


def _store_arrays(store: Path):
    """(time, frames) of the store, frames 0 outside their masks (as predict writes forecasts)."""
    import zarr

    g = zarr.open_group(str(store), mode="r")
    return np.asarray(g["time"][:], np.int64), np.where(g["masks"][:], g["frames"][:], 0).astype(np.uint8)


def _cfg(model="persistence", **kw):
    from pipeline.predict import PredictConfig

    return PredictConfig(model_uri=model, **kw)


def _gif_n_frames(path: Path) -> int:
    with Image.open(path) as img:
        return img.n_frames


def test_predict_from_store_at_time(store, tmp_path):
    from pipeline.predict import predict

    times, frames = _store_arrays(store)
    k = 10
    t = int(times[k])
    iso = str(np.datetime64(t, "s"))  # e.g. 2015-06-01T01:00:00
    res = predict(_cfg(out_dir=tmp_path / "out", store=store, time=iso))
    assert res.input_times_s == [int(x) for x in times[k - 4 : k + 1]]
    assert res.forecast_times_s == [t + 360 * (j + 1) for j in range(20)]
    assert [p.name for p in res.paths] == [hko7.file_stem(x) + ".png" for x in res.forecast_times_s]
    for p in res.paths:
        assert np.array_equal(hko7.decode_frame(p.read_bytes()), frames[k])
    # the store holds the forecast period -> GIF shows truth beside the forecast: 5 + 20 frames
    assert res.gif_path.exists() and _gif_n_frames(res.gif_path) == 25


def test_time_off_the_cadence_is_refused_naming_the_times_on_it(store, tmp_path):
    """--time 3 min after a frame of a 6-min store is an error naming the frame before and after (not a
    forecast silently made from the frame before), raised before the model loads."""
    from pipeline.predict import predict

    times, _ = _store_arrays(store)
    t = int(times[7]) + 180
    with pytest.raises(NowcastError, match="not on the store's cadence") as exc:
        predict(_cfg("models:/not-loaded@champion", out_dir=tmp_path, store=store, time=t))
    assert f"use {iso_utc(times[7])} or {iso_utc(times[8])}" in str(exc.value) and exc.value.exit_code == 2
    assert not tmp_path.joinpath("forecast_01.png").exists() and list(tmp_path.iterdir()) == []


def test_out_of_range_time_hints_name_the_usable_range(store, tmp_path):
    """The store's own first frame is not called "outside the store": it is too early for the model's 5
    input frames, and the hint names the first usable time; a time after the store is outside it."""
    from pipeline.predict import predict

    times, _ = _store_arrays(store)
    with pytest.raises(NowcastError, match=r"is too early: the model takes the 5 frames up to it") as exc:
        predict(_cfg(out_dir=tmp_path, store=store, time=int(times[0])))
    assert f"pick a time from {iso_utc(times[4])} to {iso_utc(times[-1])}" in str(exc.value)
    assert "outside" not in str(exc.value)
    with pytest.raises(NowcastError, match=r"is outside the store \(the store covers") as exc:
        predict(_cfg(out_dir=tmp_path, store=store, time=int(times[-1]) + 360))
    assert f"pick a time from {iso_utc(times[0])} to {iso_utc(times[-1])}" in str(exc.value)
    res = predict(_cfg(out_dir=tmp_path, store=store, time=int(times[4]), gif=False))
    assert res.input_times_s == [int(x) for x in times[:5]]


def test_default_time_is_the_last_frame(store, tmp_path):
    from pipeline.predict import predict

    times, _ = _store_arrays(store)
    res = predict(_cfg(out_dir=tmp_path, store=store, format="zarr", gif=False))
    assert res.input_times_s[-1] == int(times[-1])


def _write_pngs(folder: Path, frames: np.ndarray, times=None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, f in enumerate(frames):
        name = hko7.file_stem(times[i]) if times is not None else f"input_{i}"
        p = folder / f"{name}.png"
        p.write_bytes(hko7.encode_frame(f))
        paths.append(p)
    return paths


def test_predict_from_hko7_named_pngs(tmp_path):
    from pipeline.predict import predict

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 32, 40), dtype=np.uint8)
    t0 = int(np.datetime64("2015-07-01T10:00", "s").astype(np.int64))
    pngs = _write_pngs(tmp_path / "in", frames, [t0 + 360 * i for i in range(5)])
    res = predict(_cfg(out_dir=tmp_path / "out", input_pngs=pngs))
    assert res.forecast_times_s[0] == t0 + 5 * 360
    assert res.paths[0].name == "RAD150701103000.png"
    assert len(res.paths) == 20
    assert all(np.array_equal(hko7.decode_frame(p.read_bytes()), frames[-1]) for p in res.paths)
    assert _gif_n_frames(res.gif_path) == 25


def test_predict_from_unnamed_pngs(tmp_path):
    from pipeline.predict import predict

    frames = np.full((5, 16, 16), 77, np.uint8)
    res = predict(_cfg(out_dir=tmp_path / "out", input_pngs=_write_pngs(tmp_path / "in", frames)))
    assert res.forecast_times_s is None
    assert [p.name for p in res.paths][:2] == ["forecast_01.png", "forecast_02.png"]


def test_zarr_output(store, tmp_path):
    import zarr

    from pipeline.predict import predict

    times, frames = _store_arrays(store)
    res = predict(_cfg(out_dir=tmp_path, store=store, time=int(times[12]), format="zarr"))
    (path,) = res.paths
    g = zarr.open_group(str(path), mode="r")
    assert g.metadata.zarr_format == 3
    fc = g["forecast"][:]
    assert fc.dtype == np.uint8 and fc.shape == (20, SIZE, SIZE)
    assert np.array_equal(fc, np.repeat(frames[12][None], 20, axis=0))
    assert g["time"].dtype == np.int64 and g["time"][:].tolist() == res.forecast_times_s
    assert g["lead_time_s"][:].tolist() == [360 * (j + 1) for j in range(20)]
    assert g.attrs["model_uri"] == "persistence"
    assert res.gif_path.exists()


def test_optical_flow_forecast_is_written(store, tmp_path):
    from pipeline.predict import predict

    res = predict(
        _cfg("optical-flow", out_dir=tmp_path, store=store, time=int(_store_arrays(store)[0][20]), gif=False)
    )
    assert len(res.paths) == 20 and res.forecast.shape == (20, SIZE, SIZE)
    assert 0.0 <= res.forecast.min() and res.forecast.max() <= 1.0


def test_bad_inputs_raise(store, tmp_path):
    from pipeline.predict import predict

    times, _ = _store_arrays(store)
    frames = np.zeros((5, 16, 16), np.uint8)
    pngs = _write_pngs(tmp_path / "in", frames)
    both = "give the inputs either as a store"
    cases = [  # the config's own checks fail on construction, the others in predict
        (dict(out_dir=tmp_path), both),  # no inputs
        (dict(out_dir=tmp_path, store=store, input_pngs=pngs), both),
        (dict(out_dir=tmp_path, input_pngs=pngs[:3]), "takes 5 input frames but 3 PNG"),
        (dict(out_dir=tmp_path, input_pngs=pngs[:4] + [tmp_path / "x.png"]), "x.png does not exist"),
        (dict(out_dir=tmp_path, store=store, time=int(times[2])), "is too early"),  # not 5 frames before it
        (dict(out_dir=tmp_path, store=store, time="2016-01-01T00:00"), "is outside the store"),
        (dict(out_dir=tmp_path, store=tmp_path / "nope.zarr"), "no store at"),
        (dict(out_dir=tmp_path, store=store, format="tiff"), "unknown format 'tiff'"),
        (
            dict(out_dir=tmp_path, input_pngs=pngs, time="2015-06-01T00:00"),
            "--time applies to --store inputs",
        ),
    ]
    for kw, message in cases:
        with pytest.raises(NowcastError, match=message):
            predict(_cfg(**kw))


def test_bad_pngs_raise(tmp_path):
    from pipeline.predict import predict

    frames = np.zeros((5, 16, 16), np.uint8)
    pngs = _write_pngs(tmp_path / "a", frames)
    pngs[2].write_bytes(b"not a png")
    with pytest.raises(NowcastError, match="HKO-7 encoding"):
        predict(_cfg(out_dir=tmp_path, input_pngs=pngs))
    # an RGB image is not an HKO-7 frame
    rgb = _write_pngs(tmp_path / "b", frames)
    Image.new("RGB", (16, 16)).save(rgb[0])
    with pytest.raises(NowcastError, match="cannot use input frame .*HKO-7 encoding"):
        predict(_cfg(out_dir=tmp_path, input_pngs=rgb))
    # sizes differ
    mixed = _write_pngs(tmp_path / "c", frames)
    mixed[1].write_bytes(hko7.encode_frame(np.zeros((8, 8), np.uint8)))
    with pytest.raises(NowcastError, match="differ in size"):
        predict(_cfg(out_dir=tmp_path, input_pngs=mixed))
    # HKO-7 names out of order
    t0 = int(np.datetime64("2015-07-01T10:00", "s").astype(np.int64))
    shuffled = _write_pngs(tmp_path / "d", frames, [t0 + 360 * i for i in (0, 2, 1, 3, 4)])
    with pytest.raises(NowcastError, match="consecutive"):
        predict(_cfg(out_dir=tmp_path, input_pngs=shuffled))


def test_missing_input_frame_raises(tmp_path, hand_archive):
    from pipeline.ingest import IngestConfig, ingest
    from pipeline.predict import predict

    arch = hand_archive(12, size=16, missing=(8,), day_lists={"test": ["2015-06-01"]})
    ingest(IngestConfig(archive=arch.root, store=tmp_path / "s.zarr", workers=0), progress=False)
    t_last = int(np.datetime64("2015-06-01T00:00", "s").astype(np.int64)) + 10 * 360
    with pytest.raises(NowcastError, match="missing"):
        predict(_cfg(out_dir=tmp_path / "o", store=tmp_path / "s.zarr", time=t_last))
    # the time of the missing frame: no frame in the 6 min up to it
    with pytest.raises(NowcastError, match="no frame"):
        predict(_cfg(out_dir=tmp_path / "o", store=tmp_path / "s.zarr", time=t_last - 2 * 360))
    # frames 2..6 exist: fine
    res = predict(_cfg(out_dir=tmp_path / "o", store=tmp_path / "s.zarr", time=t_last - 4 * 360, gif=False))
    assert len(res.paths) == 20


def test_checkpoint_size_must_match_inputs(tmp_path):
    from pipeline.checkpoints import save_model_files
    from pipeline.predict import predict
    from trajgru import build_model

    ckpt = tmp_path / "ckpt"
    save_model_files(build_model("tiny", height=32, width=32), ckpt)
    pngs = _write_pngs(tmp_path / "in", np.zeros((5, 16, 16), np.uint8))
    with pytest.raises(NowcastError, match="32x32"):
        predict(_cfg(str(ckpt), out_dir=tmp_path / "o", input_pngs=pngs))
    ok = _write_pngs(tmp_path / "in32", np.full((5, 32, 32), 40, np.uint8))
    res = predict(_cfg(str(ckpt), out_dir=tmp_path / "o", input_pngs=ok, gif=False))
    assert len(res.paths) == 20 and json.loads((ckpt / "model_config.json").read_text())["height"] == 32


# ---------------------------------------------------------------- safe outputs, masks, early checks
def test_symlinks_in_out_dir_are_never_written_through(store, tmp_path):
    from pipeline.predict import predict

    times, _ = _store_arrays(store)
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    victim.write_text("keep me")
    out.mkdir()
    name = hko7.file_stem(int(times[10]) + 360) + ".png"  # the first forecast frame's name
    (out / name).symlink_to(victim)
    (out / "forecast.gif").symlink_to(victim)
    with pytest.raises(NowcastError, match="--overwrite"):
        predict(_cfg(out_dir=out, store=store, time=int(times[10])))
    assert victim.read_text() == "keep me" and (out / name).is_symlink()
    assert sorted(p.name for p in out.iterdir()) == sorted([name, "forecast.gif"])  # nothing written
    res = predict(_cfg(out_dir=out, store=store, time=int(times[10]), overwrite=True))
    assert victim.read_text() == "keep me"
    assert not (out / name).is_symlink() and not res.gif_path.is_symlink()
    assert hko7.decode_frame((out / name).read_bytes()).shape == (SIZE, SIZE)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_existing_forecast_zarr_is_kept_unless_predict_wrote_it(store, tmp_path):
    from pipeline.predict import predict

    out = tmp_path / "out"
    (out / "forecast.zarr").mkdir(parents=True)
    (out / "forecast.zarr" / "notes.txt").write_text("user data")
    for overwrite in (False, True):
        with pytest.raises(NowcastError, match="forecast.zarr"):
            predict(_cfg(out_dir=out, store=store, format="zarr", gif=False, overwrite=overwrite))
        assert (out / "forecast.zarr" / "notes.txt").read_text() == "user data"
    other = tmp_path / "other"
    predict(_cfg(out_dir=other, store=store, format="zarr", gif=False))
    with pytest.raises(NowcastError, match="--overwrite"):
        predict(_cfg(out_dir=other, store=store, format="zarr", gif=False))
    res = predict(_cfg(out_dir=other, store=store, format="zarr", gif=False, overwrite=True))
    assert res.paths == [other / "forecast.zarr"] and sorted(p.name for p in other.iterdir()) == [
        "forecast.zarr"
    ]


def test_forecast_outside_radar_coverage_is_zero(tmp_path, hand_archive):
    import zarr

    from pipeline.ingest import IngestConfig, ingest
    from pipeline.predict import predict

    arch = hand_archive(12, size=16, day_lists={"test": ["2015-06-01"]})  # masks: a disc, noise everywhere
    ingest(IngestConfig(archive=arch.root, store=tmp_path / "s.zarr", workers=0), progress=False)
    t = int(arch.times_s()[8])
    outside = ~arch.masks[t]
    assert arch.frames[t][outside].max() > 0
    res = predict(_cfg(out_dir=tmp_path / "png", store=tmp_path / "s.zarr", time=t, gif=False))
    for p in res.paths:
        frame = hko7.decode_frame(p.read_bytes())
        assert frame[outside].max() == 0 and np.array_equal(frame[~outside], arch.frames[t][~outside])
    res = predict(_cfg(out_dir=tmp_path / "z", store=tmp_path / "s.zarr", time=t, format="zarr", gif=False))
    assert zarr.open_group(str(res.paths[0]), mode="r")["forecast"][:][:, outside].max() == 0


def test_time_is_checked_before_the_model_loads(store, tmp_path, monkeypatch):
    from pipeline import predict as pred

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the time was checked")

    monkeypatch.setattr(pred, "load_forecaster", no_loading)
    with pytest.raises(NowcastError, match="cannot read the time") as exc:
        pred.PredictConfig(model_uri="models:/m@champion", out_dir=tmp_path, store=store, time="yesterday")
    assert exc.value.exit_code == 2
    with pytest.raises(NowcastError, match="outside the store"):
        pred.predict(_cfg("models:/m@champion", out_dir=tmp_path, store=store, time="2016-01-01T00:00"))


def _naive_neighbourhood_probability(rain_mm_h: np.ndarray, threshold: float, size: int):
    """Fraction of pixels >= threshold in the size x size square around each pixel, inside the frame."""
    h, w = rain_mm_h.shape
    half = size // 2
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            box = rain_mm_h[max(0, y - half) : y + half + 1, max(0, x - half) : x + half + 1]
            out[y, x] = np.mean(box >= threshold)
    return out


def test_predict_writes_exceedance_probabilities_into_zarr(store, tmp_path):
    """--probabilities 1,5 with persistence: the Zarr holds P(rain >= t) per lead time as a CF variable that
    xarray reads, equal to a naive-loop neighbourhood probability of the last input frame (HKO-7 Z-R), and
    missing outside the last input's radar coverage; PNG output cannot hold probabilities."""
    import xarray as xr

    from pipeline.predict import predict
    from trajgru import units

    res = predict(
        _cfg(
            store=store,
            out_dir=tmp_path / "z",
            format="zarr",
            probabilities_mm_h=(1.0, 5.0),
            neighbourhood_px=5,
        )
    )
    import zarr

    g = zarr.open_group(str(store), mode="r")
    frames, masks = g["frames"][-1] / 255.0, np.asarray(g["masks"][-1], bool)
    rain = np.where(frames == 0, 0.0, units.pixel_to_rainfall(np.where(masks, frames, 0.0)))
    with xr.open_zarr(res.paths[0], consolidated=False, decode_times=False) as ds:
        prob = ds["probability_of_rainfall_rate_above_threshold"]
        assert prob.dims == ("time", "threshold", "y", "x") and prob.shape == (20, 2, SIZE, SIZE)
        assert prob.attrs["units"] == "1"
        assert ds["threshold"].attrs["spp__relative_to_threshold"] == "greater_than_or_equal_to"
        np.testing.assert_array_equal(ds["threshold"].values, [1.0, 5.0])
        values = prob.values
    for k, threshold in enumerate((1.0, 5.0)):
        expected = _naive_neighbourhood_probability(rain, threshold, 5)
        np.testing.assert_allclose(values[7, k][masks], expected[masks], atol=1e-6)
        assert np.isnan(values[7, k][~masks]).all()
    with pytest.raises(NowcastError, match="PNG frames cannot hold them"):
        _cfg(store=store, out_dir=tmp_path / "p", format="png", probabilities_mm_h=(1.0,))
