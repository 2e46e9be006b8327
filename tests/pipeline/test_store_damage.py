"""Issue 10, item 6: a damaged store is an error naming the frames in every reader path (the
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
    assert "1 damaged range(s)" in result.output and problem in result.output
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
