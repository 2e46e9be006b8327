"""A damaged store is an error naming the frames in every reader path (the
training dataset, evaluate, predict) and in ``nowcast info --verify``, never different scores."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import cli
from pipeline import store as st
from pipeline.errors import NowcastError
from pipeline.times import iso_utc

runner = CliRunner()
SIZE = 32


@pytest.fixture(scope="module")
def intact(tmp_path_factory) -> Path:
    """A store of 3 synthetic days (shards of 40 frames, chunks of 5) with test-split clips."""
    from pipeline.ingest import IngestConfig, ingest
    from pipeline.synth import SynthConfig, synth_archive

    root = tmp_path_factory.mktemp("damage")
    synth_archive(
        SynthConfig(
            out_dir=root / "archive",
            days=3,
            frames_per_day=60,
            size_px=SIZE,
            seed=3,
            workers=1,
            missing_frame_rate=0.0,
        ),
        progress=False,
    )
    ingest(
        IngestConfig(archive=root / "archive", store=root / "store.zarr", workers=0, shard_frames=40),
        progress=False,
    )
    return root / "store.zarr"


def _first_test_clip_row(store: Path) -> int:
    handle = st.Store.open(store)
    start = handle.clip_starts("test", "sequent")[0]
    return int(np.searchsorted(handle.time_s, start)) + 7  # a frame inside the first test clip


def damaged_copy(intact: Path, tmp_path: Path, how: str) -> tuple[Path, int]:
    """A copy of the store with the frames shard holding a test-clip row deleted, or 3 bytes of that row's
    chunk flipped -> (store, row)."""
    store = tmp_path / f"{how}.zarr"
    shutil.copytree(intact, store)
    row = _first_test_clip_row(store)
    reader = st.ShardFileReader.for_array(st.open_store(store)[st.FRAMES])
    shard = reader.shard_path(row // reader.shard_frames)
    if how == "deleted":
        shard.unlink()
    else:
        data = bytearray(shard.read_bytes())
        index = np.frombuffer(bytes(data[-(16 * reader.chunks_per_shard + 4) : -4]), "<u8").reshape(-1, 2)
        offset, nbytes = (int(v) for v in index[(row % reader.shard_frames) // reader.chunk_frames])
        for k in (nbytes // 4, nbytes // 2, 3 * nbytes // 4):
            data[offset + k] ^= 0x5A
        shard.write_bytes(bytes(data))
    return store, row


def _evaluate(store: Path, tmp_path: Path) -> dict:
    from pipeline.evaluate import EvaluateConfig, evaluate

    cfg = EvaluateConfig(
        store=store, model_uri="persistence", log_to_mlflow=False, out_json=tmp_path / f"{store.stem}.json"
    )
    return evaluate(cfg)


@pytest.mark.parametrize("how", ["deleted", "flipped"])
def test_damage_is_an_error_naming_the_frames_in_every_reader_path(intact, tmp_path, how):
    from pipeline.dataset import ClipDataset
    from pipeline.predict import PredictConfig, predict

    assert _evaluate(intact, tmp_path).n_clips > 0  # the intact store scores
    store, row = damaged_copy(intact, tmp_path, how)
    handle = st.Store.open(store)
    when = iso_utc(handle.time_s[row - row % (40 if how == "deleted" else 5)])  # the damaged shard / chunk
    problem = "is missing" if how == "deleted" else "checksum does not match"

    def names_the_row(call):
        with pytest.raises(
            NowcastError, match=f"is damaged at frames .*, array frames: .*{problem}.*info --verify"
        ) as e:
            call()
        lo, hi = (int(v) for v in re.search(r"at frames (\d+)-(\d+) ", str(e.value)).groups())
        times = re.search(r"\((\S+Z) to (\S+Z)\)", str(e.value)).groups()
        assert lo <= row <= hi and times == (iso_utc(handle.time_s[lo]), iso_utc(handle.time_s[hi]))

    names_the_row(lambda: _evaluate(store, tmp_path))  # evaluate
    starts = handle.clip_starts("test", "random")
    dataset = ClipDataset(handle, starts[starts <= handle.time_s[row]][-1:], seq_len=25)
    names_the_row(lambda: dataset[0])  # the training dataset
    names_the_row(lambda: dataset.__getitems__([0]))
    names_the_row(
        lambda: predict(
            PredictConfig(
                model_uri="persistence",
                out_dir=tmp_path / "forecast",  # predict
                store=store,
                time=int(handle.time_s[row]),
                gif=False,
            )
        )
    )

    report = handle.verify()  # info --verify
    assert report["checksums"] and len(report["damaged"]) == 1
    damaged = report["damaged"][0]
    assert damaged["array"] == "frames" and damaged["rows"][0] <= row <= damaged["rows"][1]
    assert problem in damaged["problem"] and damaged["times"][0] == when
    result = runner.invoke(cli.app, ["info", str(store), "--verify"])
    assert result.exit_code == 1
    assert "damage(s) found" in result.output and problem in result.output
    result = runner.invoke(cli.app, ["info", str(intact), "--verify"])
    assert result.exit_code == 0 and "no damage" in result.output and "crc32c checksums" in result.output


def test_unsharded_store_damage_is_found_through_zarr_too(hand_archive, tmp_path):
    """The zarr read path (layouts the shard reader does not take): a missing chunk file is an error, not
    zeros; a flipped byte fails zarr's crc32c check."""
    from pipeline.ingest import IngestConfig, ingest

    arch = hand_archive(20)
    store = tmp_path / "u.zarr"
    ingest(IngestConfig(arch.root, store, workers=0, chunk_frames=4, shard_frames=None), progress=False)
    reader = st.Store.open(store).reader()
    assert not reader.uses_fast_path
    t = arch.times_s()
    np.testing.assert_array_equal(reader.read(t[:6])[0], np.stack([arch.frames[x] for x in t[:6]]))
    (store / "frames" / "c" / "1" / "0" / "0").unlink()
    with pytest.raises(
        NowcastError, match=f"damaged at frames 4-7 .{iso_utc(t[4])}.*frames/c/1/0/0 is missing"
    ):
        st.Store.open(store).reader().read(t[:6])
    chunk = store / "masks" / "c" / "2" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    damaged = st.Store.open(store).verify()["damaged"]
    assert [(d["array"], d["rows"]) for d in damaged] == [("frames", [4, 7]), ("masks", [8, 11])]


def _copy(intact: Path, tmp_path: Path, name: str) -> Path:
    store = tmp_path / f"{name}.zarr"
    shutil.copytree(intact, store)
    return store


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _verify_cli(store: Path) -> str:
    result = runner.invoke(cli.app, ["info", str(store), "--verify"])
    assert result.exit_code == 1, result.output
    return result.output


@pytest.mark.parametrize(
    "array", ["time", "present", "catalog/test/sequent_starts_s", "catalog/train/random_starts_s"]
)
def test_verify_finds_a_bit_flip_in_every_1d_array(intact, tmp_path, array):
    """A flipped bit in time, present or a catalog fails that array's crc32c: `info --verify` names the array
    and exits 1, and a stage reading it gets a one-line error naming it (not different counts or scores)."""
    store = _copy(intact, tmp_path, array.replace("/", "_"))
    _flip_byte(store / array / "c" / "0")
    report = st.Store.open(store).verify()
    assert any(line.startswith(f"{array}:") and "checksum" in line for line in report["problems"])
    assert f"{array}: " in _verify_cli(store)
    with pytest.raises(NowcastError, match=f"damaged: array {array} cannot be read"):
        st.read_vector(st.open_store(store), array)


def test_verify_finds_a_shard_copied_over_another(intact, tmp_path):
    """Shard files pass their own checksums wherever they lie; the digest ingest recorded for each position
    finds one copied over another (frames or masks)."""
    store = _copy(intact, tmp_path, "copied")
    for name in ("frames", "masks"):
        shutil.copyfile(store / name / "c" / "0" / "0" / "0", store / name / "c" / "1" / "0" / "0")
    report = st.Store.open(store).verify()
    assert report["damaged"] == []  # every chunk decodes and matches its crc32c
    for name in ("frames", "masks"):
        assert any(
            line.startswith(f"{name}/c/1/0/0: not the content ingest wrote") for line in report["problems"]
        )
    assert "frames/c/1/0/0: not the content ingest wrote at this position" in _verify_cli(store)
    assert st.Store.open(intact).verify()["problems"] == []


def _rewrite(store: Path, name: str, values: np.ndarray) -> None:
    """Rewrite a 1-D array with valid checksums (damage no crc32c can see)."""
    st.write_vector(st.open_store(store, mode="r+"), name, values)


def test_verify_checks_time_against_order_and_cadence(intact, tmp_path):
    """A time axis rewritten with valid checksums is found: rows out of order, a time off the cadence."""
    time_s = st.Store.open(intact).time_s
    swapped = time_s.copy()
    swapped[[3, 4]] = swapped[[4, 3]]
    store = _copy(intact, tmp_path, "swapped")
    _rewrite(store, "time", swapped)
    problems = st.Store.open(store).verify()["problems"]
    assert any(p.startswith("time: not strictly ascending at 1 row(s) (first: rows 3-4") for p in problems)
    shifted = time_s.copy()
    shifted[10] += 60
    store = _copy(intact, tmp_path, "shifted")
    _rewrite(store, "time", shifted)
    problems = st.Store.open(store).verify()["problems"]
    assert any(
        p.startswith("time: 1 time(s) off the store's cadence of 360 s (first: row 10") for p in problems
    )
    assert "off the store's cadence" in _verify_cli(store)


def test_verify_checks_present_against_ingest_and_the_catalog(intact, tmp_path):
    """`present` rewritten with valid checksums (a usable frame inside a test clip marked absent): its count
    differs from ingest's, and the test catalog no longer agrees with time[present] under the clip rule."""
    handle = st.Store.open(intact)
    present = handle.present.copy()
    present[_first_test_clip_row(intact)] = False
    store = _copy(intact, tmp_path, "present")
    _rewrite(store, "present", present)
    problems = st.Store.open(store).verify()["problems"]
    assert (
        f"present: {int(present.sum())} usable frames, but ingest recorded {int(handle.present.sum())}"
        in problems
    )
    assert any(
        p.startswith("catalog/test/random_starts_s: does not agree with time and present") for p in problems
    )
    assert any(p.startswith("present/c/0: not the content ingest wrote") for p in problems), problems


def test_verify_of_a_store_before_version_3_says_what_it_cannot_check(intact, tmp_path):
    """A store of an older ingest (no file digests, 1-D arrays without checksums) still verifies, and the
    report says which checks it cannot make."""
    store = _copy(intact, tmp_path, "old")
    group = st.open_store(store, mode="r+")
    time_s = np.asarray(group["time"][:])
    group.create_array(
        "time", shape=time_s.shape, dtype="int64", chunks=(65536,), fill_value=0, overwrite=True
    )
    group["time"][:] = time_s
    attrs = dict(group.attrs)
    del attrs[st.FILE_DIGESTS]
    group.attrs.put({**attrs, "ingest_version": 2})
    report = st.Store.open(store).verify()
    assert report["problems"] == [] and report["damaged"] == []
    assert any(line.startswith("time carry no checksums") for line in report["unchecked"])
    assert any("a shard file copied over another is not found" in line for line in report["unchecked"])
    result = runner.invoke(cli.app, ["info", str(store), "--verify"])
    assert result.exit_code == 0 and "not checked: no per-file digests recorded" in result.output


def test_stages_take_the_open_store_handle(intact, tmp_path, monkeypatch):
    """evaluate, compare_models and predict use a Store handed to them (as demo does) without opening the
    store again; a Store also stands for its path."""
    from pipeline.evaluate import EvaluateConfig, compare_models, evaluate
    from pipeline.predict import PredictConfig, predict

    handle = st.Store.open(intact)
    assert st.Store.of(handle) is handle and Path(handle) == handle.path == intact.resolve()

    def no_second_open(*args, **kwargs):
        raise AssertionError("the store was opened again")

    monkeypatch.setattr(st.Store, "open", no_second_open)
    scored = evaluate(
        EvaluateConfig(
            store=handle,
            model_uri="persistence",
            log_to_mlflow=False,
            max_clips=2,
            out_json=tmp_path / "e.json",
        )
    )
    assert scored.n_clips == 2
    compared = compare_models(handle, ["persistence"], max_clips=2, log_to_mlflow=False)
    assert compared.n_clips == 2
    forecast = predict(
        PredictConfig(model_uri="persistence", out_dir=tmp_path / "f", store=handle, gif=False)
    )
    assert len(forecast.paths) == 20
