"""Fixtures of the engine tests: the tiny models are built once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from engine_helpers import Bundle, tiny_gpt2, tiny_llama
from seq2seq_helpers import tiny_bart, tiny_m2m100, tiny_marian, tiny_t5


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


@pytest.fixture(scope="session")
def t5() -> Bundle:
    return tiny_t5()


@pytest.fixture(scope="session")
def m2m100() -> Bundle:
    return tiny_m2m100()


@pytest.fixture(scope="session")
def bart() -> Bundle:
    return tiny_bart()


@pytest.fixture(scope="session")
def marian() -> Bundle:
    return tiny_marian()


@pytest.fixture(scope="session", params=["t5", "m2m100", "bart"])
def seq2seq(request: pytest.FixtureRequest) -> Bundle:
    """The encoder-decoders whose outputs vary enough for token-parity tests."""
    return request.getfixturevalue(request.param)
