"""Fixtures of the engine tests: the tiny models are built once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from engine_helpers import Bundle, tiny_gpt2, tiny_llama


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; on a busy 2-core box, OpenMP workers
    spinning for a second core made each forward pass 10-20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def gpt2() -> Bundle:
    return tiny_gpt2()


@pytest.fixture(scope="session")
def llama() -> Bundle:
    return tiny_llama()


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def bundle(request: pytest.FixtureRequest) -> Bundle:
    return request.getfixturevalue(request.param)
