"""Clip dataset over the store: contents, absent slots, rank slices, DataLoader workers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from pipeline import ingest as ing
from pipeline.dataset import ClipDataset, rank_slice
from pipeline.errors import NowcastError
from pipeline.store import Store

IV = 360


@pytest.fixture(scope="module")
def store(tmp_path_factory, archive_tools):
    from types import SimpleNamespace

    tmp = tmp_path_factory.mktemp("ds")
    arch = archive_tools.build_archive(tmp / "archive", 60, size=32, missing=[10, 11, 40])
    ing.ingest(
        ing.IngestConfig(
            arch.root,
            tmp / "s.zarr",
            workers=0,
            chunk_frames=1,
            shard_frames=8,
            splits={"train": ("2015-06-01", None)},
        ),
        progress=False,
    )
    return SimpleNamespace(path=tmp / "s.zarr", arch=arch)


def expected_clip(arch, start_s, seq_len):
    frames = np.zeros((seq_len, 1, arch.size, arch.size), np.float32)
    masks = np.zeros_like(frames)
    for k in range(seq_len):
        t = start_s + k * IV
        if t in arch.frames:
            frames[k, 0] = arch.frames[t] / 255.0
            masks[k, 0] = arch.masks[t]
    return frames, masks


def test_items_match_archive(store):
    starts = Store.open(store.path).clip_starts("train", "random")
    assert starts.dtype == np.int64 and starts.size > 0 and np.all(np.diff(starts) > 0)
    ds = ClipDataset(Store.open(store.path), starts, seq_len=25)
    assert len(ds) == starts.size
    for i in (0, len(ds) // 2, len(ds) - 1):
        x, m = ds[i]
        assert (
            x.shape == (25, 1, 32, 32) and str(x.dtype) == "torch.float32" and str(m.dtype) == "torch.float32"
        )
        want_x, want_m = expected_clip(store.arch, int(starts[i]), 25)
        np.testing.assert_allclose(x.numpy(), want_x, rtol=0, atol=1e-7)
        np.testing.assert_array_equal(m.numpy(), want_m)
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # a clip over the gap: absent slots are zero with mask 0
    gap_start = int(store.arch.times_s()[5])
    x, m = ClipDataset(Store.open(store.path), [gap_start])[0]
    assert float(x[5].abs().sum()) == 0 and float(m[5].sum()) == 0 and float(m[4].sum()) > 0
    seq = Store.open(store.path).clip_starts("train", "sequent")
    assert seq.size > 0 and np.isin(seq, starts).sum() >= 1
    with pytest.raises(NowcastError, match="split 'test' is not in the store's catalog"):
        Store.open(store.path).clip_starts("test")


def test_rank_slice_is_disjoint_and_complete():
    starts = np.arange(103, dtype=np.int64) * IV
    for world in (1, 2, 3, 4, 7):
        parts = [rank_slice(starts, r, world) for r in range(world)]
        assert sum(p.size for p in parts) == starts.size
        assert np.array_equal(np.sort(np.concatenate(parts)), starts)
        assert max(p.size for p in parts) - min(p.size for p in parts) <= 1
        assert all(
            np.array_equal(rank_slice(starts, r, world), parts[r]) for r in range(world)
        )  # deterministic
    with pytest.raises(NowcastError, match="need 0 <= rank < world_size"):
        rank_slice(starts, 2, 2)


def test_pickles_without_open_handles(store):
    ds = ClipDataset(Store.open(store.path), Store.open(store.path).clip_starts("train"))
    _ = ds[0]
    assert ds.store._reader is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.store._reader is None and clone._bufs is None
    np.testing.assert_array_equal(clone[1][0].numpy(), ds[1][0].numpy())


@pytest.mark.parametrize("ctx", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_dataloader_workers(store, ctx):
    import torch
    from torch.utils.data import DataLoader

    starts = Store.open(store.path).clip_starts("train")
    ds = ClipDataset(Store.open(store.path), starts, seq_len=25)
    _ = ds[0]  # the parent has a reader open: workers must open their own
    loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context=ctx, shuffle=False)
    got = torch.cat([x for x, _ in loader])
    assert got.shape == (starts.size, 25, 1, 32, 32)
    for i in (0, starts.size - 1):
        np.testing.assert_allclose(
            got[i].numpy(), expected_clip(store.arch, int(starts[i]), 25)[0], atol=1e-7
        )


def _store_with_every_pixel_value(path):
    """A complete 4-frame store of 8x8 frames holding the pixel values 0..255 once each."""
    from pipeline import store as st
    from pipeline.catalog import INTERVAL_S

    g = st.create_store(path, 8, 8, st.StoreLayout(chunk_frames=2, shard_frames=4), {"interval_s": IV})
    frames = np.arange(256, dtype=np.uint8).reshape(4, 8, 8)
    masks = (frames % 3).astype(bool)
    g[st.FRAMES].resize((4, 8, 8))
    g[st.MASKS].resize((4, 8, 8))
    g[st.FRAMES][:] = frames
    g[st.MASKS][:] = masks
    t0 = int(np.datetime64("2015-06-01T00:00:00", "s").astype(np.int64))
    st.write_vector(g, st.TIME, t0 + INTERVAL_S * np.arange(4, dtype=np.int64))
    st.write_vector(g, st.PRESENT, np.ones(4, bool))
    g.attrs["ingest_state"] = st.STATE_COMPLETE
    return t0, frames, masks


def test_float_conversion_is_exact_and_items_do_not_alias(store, tmp_path):
    """frames == float32(pixel / 255) bit for bit for all 256 values, masks exactly 0/1, absent slots
    0; an item keeps its values after later items reuse the per-process read buffers."""
    t0, frames, masks = _store_with_every_pixel_value(tmp_path / "all.zarr")
    ds = ClipDataset(Store.open(tmp_path / "all.zarr"), [t0, t0 + 2 * IV], seq_len=4)
    x, m = ds[0]
    assert x.shape == (4, 1, 8, 8)
    want = np.array([float(v) / 255.0 for v in range(256)], dtype=np.float32).reshape(
        4, 1, 8, 8
    )  # slow reference
    np.testing.assert_array_equal(x.numpy(), want)
    np.testing.assert_array_equal(m.numpy(), masks[:, None].astype(np.float32))
    x2, m2 = ds[1]  # slots 2, 3 present; 4, 5 absent
    np.testing.assert_array_equal(x2[:2].numpy(), want[2:])
    assert not x2[2:].any() and not m2[2:].any()
    keep = x.clone()
    assert bool((x == keep).all()) and not bool((x == x2).all())
    ds2 = ClipDataset(Store.open(store.path), Store.open(store.path).clip_starts("train"))
    a0 = ds2[0][0].clone()
    first = ds2[0][0]
    _ = ds2[len(ds2) - 1]
    assert bool((first == a0).all())


def test_getitems_equals_per_item_stacking(store):
    """The batched fetch gives bit-identical values to stacking __getitem__ items, incl. clips over
    the gaps (absent slots 0, mask 0), negative and repeated indices; items are views of the batch."""
    import torch

    from pipeline.dataset import ClipBatch, collate_clips

    starts = Store.open(store.path).clip_starts("train")
    gap = [int(store.arch.times_s()[k]) for k in (3, 5, 9, 30)]  # clips over slots 10, 11 and/or 40
    ds = ClipDataset(Store.open(store.path), np.concatenate([starts, gap]), seq_len=25)
    idx = [len(ds) - 1, 0, len(ds) - 3, -2, 0, 7]
    batch = ds.__getitems__(idx)
    assert isinstance(batch, ClipBatch) and len(batch) == len(idx)
    frames, masks = collate_clips(batch)
    assert frames.shape == masks.shape == (len(idx), 25, 1, 32, 32)
    assert frames.dtype == masks.dtype == torch.float32
    want_x = torch.stack([ds[i][0] for i in idx])
    want_m = torch.stack([ds[i][1] for i in idx])
    assert torch.equal(frames, want_x) and torch.equal(masks, want_m)
    for b, i in enumerate(idx):  # against the independent expectation from the archive files
        ex, em = expected_clip(store.arch, int(ds.starts_s[i]), 25)
        np.testing.assert_allclose(frames[b].numpy(), ex, rtol=0, atol=1e-7)
        np.testing.assert_array_equal(masks[b].numpy(), em)
    gap_rows = [b for b, i in enumerate(idx) if int(ds.starts_s[i]) in gap]
    assert gap_rows and all(float(masks[b].flatten(1).sum(1).min()) == 0 for b in gap_rows)
    assert batch[1][0].data_ptr() == frames[1].data_ptr()  # items are views, no copy
    with pytest.raises(IndexError, match=f"clip index {len(ds)} out of range for {len(ds)} clips"):
        ds.__getitems__([0, len(ds)])


def test_collate_clips_falls_back_to_stacking(store):
    import torch
    from torch.utils.data import default_collate

    from pipeline.dataset import collate_clips

    ds = ClipDataset(Store.open(store.path), Store.open(store.path).clip_starts("train")[:3], seq_len=5)
    items = [ds[i] for i in range(3)]
    frames, masks = collate_clips(items)
    want = default_collate(items)
    assert torch.equal(frames, want[0]) and torch.equal(masks, want[1]) and frames.shape == (3, 5, 1, 32, 32)
    # the default collation still works on the batched fetch (it stacks the per-item views)
    got = default_collate(ds.__getitems__([2, 0]))
    assert torch.equal(got[0], torch.stack([ds[2][0], ds[0][0]])) and torch.equal(
        got[1], torch.stack([ds[2][1], ds[0][1]])
    )
    with pytest.raises(ValueError, match="empty batch"):
        collate_clips([])


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_collate_clips_matches_default(store, workers):
    """DataLoader with __getitems__ + collate_clips (in-process and in worker processes, where the
    batch is allocated in shared memory) == the default per-item path, batch for batch."""
    import torch
    from torch.utils.data import DataLoader

    from pipeline.dataset import collate_clips

    starts = Store.open(store.path).clip_starts("train")
    ds = ClipDataset(
        Store.open(store.path), np.concatenate([starts[:9], store.arch.times_s()[[5, 31]]]), seq_len=25
    )
    got = list(DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=collate_clips))
    want = [
        (
            torch.stack([ds[i][0] for i in range(b, min(b + 4, len(ds)))]),
            torch.stack([ds[i][1] for i in range(b, min(b + 4, len(ds)))]),
        )
        for b in range(0, len(ds), 4)
    ]
    assert len(got) == len(want) == 3
    for (gx, gm), (wx, wm) in zip(got, want):
        assert torch.equal(gx, wx) and torch.equal(gm, wm)
        assert gx.is_shared() == (workers > 0)


def _dihedral_reference(img: np.ndarray, k: int) -> np.ndarray:
    """Naive loop: symmetry k of a square (H, H) image as an index map (flip columns if k >= 4, then k % 4
    counter-clockwise quarter turns: out[i, j] = in[j, n-1-i] per turn)."""
    n = img.shape[0]
    out = img[:, ::-1].copy() if k >= 4 else img.copy()
    for _ in range(k % 4):
        turned = np.empty_like(out)
        for i in range(n):
            for j in range(n):
                turned[i, j] = out[j, n - 1 - i]
        out = turned
    return out


def test_dihedral_is_the_eight_symmetries_of_the_square():
    from pipeline.dataset import dihedral

    img = np.arange(16, dtype=np.float32).reshape(4, 4)
    seen = set()
    for k in range(8):
        got = dihedral(torch.from_numpy(img)[None, None], k)[0, 0].numpy()
        assert np.array_equal(got, _dihedral_reference(img, k)), k
        seen.add(got.tobytes())
    assert len(seen) == 8


def test_augment_clips_is_deterministic_and_moves_frames_and_masks_together():
    from pipeline.dataset import augment_clips, dihedral

    g = torch.Generator().manual_seed(0)
    frames = torch.rand(6, 5, 1, 8, 8, generator=g)
    masks = frames > 0.5
    f1, m1 = augment_clips(frames, masks, seed=3, rank=1, step=7)
    f2, m2 = augment_clips(frames, masks, seed=3, rank=1, step=7)
    assert torch.equal(f1, f2) and torch.equal(m1, m2)
    assert torch.equal(m1, f1 > 0.5)  # the same symmetry for frames and masks
    ks = np.random.default_rng([3, 1, 7, 1]).integers(0, 8, 6)
    for b, k in enumerate(ks):  # each clip: one symmetry for all its frames
        assert torch.equal(f1[b], dihedral(frames[b], int(k)))
    assert not torch.equal(augment_clips(frames, masks, 3, 1, 8)[0], f1)
    # rectangles keep their shape: only the 4 symmetries of a rectangle
    rect = torch.rand(16, 2, 1, 4, 6, generator=g)
    out, _ = augment_clips(rect, rect > 0.5, 0, 0, 1)
    assert out.shape == rect.shape
