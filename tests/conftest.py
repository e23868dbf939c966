"""Fixtures shared by every test."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def single_torch_thread():
    """Test problems are tiny: torch's thread pool only adds overhead (≈100× for small
    FFTs on a busy 2-core machine), so every test runs torch on one thread, restored after
    it (the live sessions' thread policy may change it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
