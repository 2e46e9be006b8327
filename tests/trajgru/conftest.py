"""Shared fixtures of the model-library tests."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seeded; one intra-op thread: these tensors are tiny, and on a shared 2-core runner
    two OpenMP threads fighting other processes make each op 10x slower."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
