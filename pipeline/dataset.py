"""PyTorch access to the store: a map-style clip Dataset over a :class:`~pipeline.store.Store`, and
each rank's slice of the clips.

Typical use::

    store = Store.open("store.zarr")
    starts_s = rank_slice(store.clip_starts("train", "random"), rank, world_size)
    loader = DataLoader(ClipDataset(store, starts_s), batch_size=4, shuffle=True, num_workers=2,
                        collate_fn=collate_clips)
    for frames, masks in loader:           # (B, S, 1, H, W) each
        frames = frames.transpose(0, 1)    # -> (S, B, 1, H, W)

The dataset reads through the store's per-process reader (``Store.reader()``); the Store pickles as
its path, so DataLoader workers and Ray workers each open their own and never share zarr handles.

Batched fetch: a DataLoader with automatic batching calls ``ClipDataset.__getitems__(indices)``,
which reads the whole batch into one (B, S, 1, H, W) float32 pair; :func:`collate_clips` hands that
pair on without copying. The default collation also works (it stacks the per-item views: same
values, one extra copy). Why: the default collation's ``torch.stack`` into a freshly allocated
92 MB tensor per array and batch of 4 page-faults 4 KiB at a time and cost more than reading and
decoding the clips (benchmarks/bench_dataset.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import get_worker_info

from pipeline.errors import NowcastError
from pipeline.store import Store, StoreReader


def rank_slice(starts_s: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Deterministic disjoint share of ``starts_s`` for ``rank`` of ``world_size``: every
    ``world_size``-th element from ``rank`` (sizes differ by at most one; the union is the input)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise NowcastError(
            f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}", exit_code=2
        )
    return np.asarray(starts_s)[rank::world_size]


class ClipDataset:
    """Map-style dataset: item i -> clip starting at ``starts_s[i]``.

    Returns (frames, masks), both torch float32 (seq_len, 1, H, W): frames are pixel/255 in [0, 1],
    masks 1 for valid pixels; absent slots are zero with mask 0.

    store : the open store (pickles as its path).
    starts_s : (N,) int64 epoch seconds of clip starts.
    seq_len : slots per clip at the store's cadence (``Store.interval_s``).
    """

    def __init__(self, store: Store, starts_s, seq_len: int = 25):
        self.store = store
        self.starts_s = np.asarray(starts_s, dtype=np.int64).ravel()
        if seq_len < 1:
            raise NowcastError(f"seq_len must be >= 1, got {seq_len}", exit_code=2)
        self.seq_len = int(seq_len)
        self._bufs = None
        self._bufs_pid = None

    def __len__(self) -> int:
        return int(self.starts_s.size)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_bufs"], state["_bufs_pid"] = None, None
        return state

    @property
    def reader(self) -> StoreReader:
        """This process's reader (``Store.reader()``: opened on first use, reopened after a fork)."""
        return self.store.reader()

    def slot_times_s(self, i: int) -> np.ndarray:
        """(seq_len,) int64 epoch seconds of item i's slots."""
        return self.store.slot_times_s(self.starts_s[i], self.seq_len)

    def read_numpy(
        self, i: int, frames_out: np.ndarray | None = None, masks_out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Item i as numpy: frames uint8 (seq_len, H, W), masks bool (seq_len, H, W).

        frames_out / masks_out : optional buffers of those shapes to fill (this process's reusable ones
        when called from ``__getitem__``).
        """
        if not -len(self) <= i < len(self):
            raise IndexError(f"clip index {i} out of range for {len(self)} clips")
        return self.reader.read(self.slot_times_s(i), frames_out, masks_out)

    def _buffers(self) -> tuple[np.ndarray, np.ndarray]:
        """This process's reusable uint8 / bool read buffers (seq_len, H, W)."""
        reader = self.reader
        shape = (self.seq_len, reader.height, reader.width)
        if self._bufs is None or self._bufs[0].shape != shape or self._bufs_pid != os.getpid():
            self._bufs = (np.empty(shape, np.uint8), np.empty(shape, bool))
            self._bufs_pid = os.getpid()
        return self._bufs

    def __getitem__(self, i: int):
        """-> (frames, masks), torch float32 (seq_len, 1, H, W): pixel/255 in [0, 1] and 1 = valid.

        One contiguous read per clip into reused buffers, then one numpy pass per output. The outputs
        are numpy allocations wrapped by ``torch.from_numpy``: numpy asks the kernel for huge pages on
        large arrays, while a fresh 23 MB ``torch.empty`` page-faults 4 KiB at a time (measured 2-3x
        slower than the conversion itself; see benchmarks/bench_dataset.py).
        """
        frames_u8, masks_b = self.read_numpy(int(i), *self._buffers())
        shape = (self.seq_len, 1) + frames_u8.shape[1:]
        x = np.empty(shape, dtype=np.float32)
        m = np.empty(shape, dtype=np.float32)
        np.divide(frames_u8, np.float32(255.0), out=x[:, 0], dtype=np.float32)  # == float32(pixel / 255)
        np.copyto(m[:, 0], masks_b.view(np.uint8), casting="unsafe")
        return torch.from_numpy(x), torch.from_numpy(m)

    def __getitems__(self, indices: Sequence[int]) -> ClipBatch:
        """Batched fetch (called by ``DataLoader`` with automatic batching) -> :class:`ClipBatch`.

        Reads clips ``indices`` (B of them) into one frames and one masks tensor, float32
        (B, seq_len, 1, H, W), values identical to ``__getitem__``. Inside a DataLoader worker the
        two tensors are allocated in shared memory, so sending them to the main process copies
        nothing; in the main process they are numpy allocations (huge pages, see ``__getitem__``).
        """
        idx = [int(i) for i in indices]
        for i in idx:
            if not -len(self) <= i < len(self):
                raise IndexError(f"clip index {i} out of range for {len(self)} clips")
        reader = self.reader
        shape = (len(idx), self.seq_len, 1, reader.height, reader.width)
        frames, masks = _batch_tensor(shape), _batch_tensor(shape)
        x, m = frames.numpy(), masks.numpy()
        frames_u8, masks_b = self._buffers()
        for b, i in enumerate(idx):
            reader.read(self.slot_times_s(i), frames_u8, masks_b)
            np.divide(
                frames_u8, np.float32(255.0), out=x[b, :, 0], dtype=np.float32
            )  # == float32(pixel / 255)
            np.copyto(m[b, :, 0], masks_b.view(np.uint8), casting="unsafe")
        return ClipBatch(frames, masks)


def _batch_tensor(shape: tuple):
    """An uninitialised float32 tensor of ``shape``: in shared memory inside a DataLoader worker
    (what the worker would copy it into anyway), else wrapping a numpy allocation."""
    if get_worker_info() is None:
        return torch.from_numpy(np.empty(shape, dtype=np.float32))
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)) * 4)
    return torch.empty(0, dtype=torch.float32).set_(storage).view(shape)


class ClipBatch(list):
    """What ``ClipDataset.__getitems__`` returns: a list of B (frames, masks) items -- views into
    ``.frames`` and ``.masks``, float32 (B, seq_len, 1, H, W) -- so that any collation works;
    :func:`collate_clips` returns ``(.frames, .masks)`` without copying."""

    def __init__(self, frames, masks):
        super().__init__(zip(frames.unbind(0), masks.unbind(0)))
        self.frames, self.masks = frames, masks


def collate_clips(batch):
    """``collate_fn`` for a DataLoader over :class:`ClipDataset` -> (frames, masks) float32 (B, S, 1, H, W).

    batch : a :class:`ClipBatch` (passed on as is: no copy) or a list of (frames, masks) items of
    (S, 1, H, W) each (stacked, as the default collation does).
    """
    if isinstance(batch, ClipBatch):
        return batch.frames, batch.masks
    if not len(batch):
        raise ValueError("collate_clips got an empty batch")
    frames, masks = zip(*batch)
    return torch.stack(frames), torch.stack(masks)


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Symmetry ``k`` (0..7) of the square on the last two axes: ``k >= 4`` flips the columns
    (left-right), then ``k % 4`` quarter turns (``torch.rot90`` on (-2, -1)). k = 0 is the identity."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def augment_clips(frames: torch.Tensor, masks: torch.Tensor, seed: int, rank: int, step: int):
    """Random symmetry of each clip in a training batch, the same for its frames and masks.

    frames, masks : (B, S, 1, H, W). Clip b gets :func:`dihedral` ``k_b``, drawn from ``(seed, rank,
    step)`` alone (a resumed run repeats it): one of all 8 for square frames, one of the 4 that keep
    the shape (identity, half turn, left-right and up-down flips) otherwise. Returns new tensors.
    """
    square = frames.shape[-1] == frames.shape[-2]
    rng = np.random.default_rng([seed, rank, step, 1])
    ks = rng.integers(0, 8, len(frames)) if square else rng.choice([0, 2, 4, 6], len(frames))
    return (
        torch.stack([dihedral(f, int(k)) for f, k in zip(frames, ks)]),
        torch.stack([dihedral(m, int(k)) for m, k in zip(masks, ks)]),
    )
