"""Shared fixtures of the model-library tests."""

import os

import pytest
import torch

# Without CUDA, the Triton kernels' tests run through Triton's CPU interpreter. Triton reads
# this when it is imported (trajgru imports it lazily, at the first kernel use), so set it
# before any test module runs.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seeded; one intra-op thread: these tensors are tiny, and on a shared 2-core runner
    two OpenMP threads fighting other processes make each op 10x slower."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
