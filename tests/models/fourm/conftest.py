"""The 4M tests run tiny models: one intra-op thread avoids oversubscribing the shared CPU (10-100x faster)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
