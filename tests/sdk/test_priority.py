"""``priority`` in the SDK: an int32 on the wire, refused before sending otherwise."""

from __future__ import annotations

from typing import Any

import pytest

from modelwire import AsyncClient
from tests.sdk.fakes import Fakes


@pytest.mark.parametrize("bad", ["1", 1.5, True, [1], 2**31, -(2**31) - 1])
async def test_a_priority_that_is_not_an_int32_is_refused(
    client: AsyncClient, fakes: Fakes, bad: Any
) -> None:
    with pytest.raises(ValueError, match="`priority`"):
        await client.generate("hi", priority=bad)
    with pytest.raises(ValueError, match="`priority`"):
        client.generate_stream("hi", priority=bad)
    with pytest.raises(ValueError, match="`priority`"):
        await client.generate(messages=[{"role": "user", "content": "hi"}], priority=bad)
    assert fakes.recorder.calls == []


async def test_priority_is_sent_as_given_and_left_unset_otherwise(
    client: AsyncClient, fakes: Fakes
) -> None:
    for priority in (5, -(2**31), 2**31 - 1, 0):
        await client.generate("hi", priority=priority)
    async with client.generate_stream("hi", priority=-2) as stream:
        await stream.final()
    await client.generate("hi")
    sent = fakes.recorder.requests("Generate")
    assert [r.priority for r in sent] == [5, -(2**31), 2**31 - 1, 0, -2, 0]
