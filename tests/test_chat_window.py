"""``AsyncClient.fit_chat``: a conversation that outgrows its model's context goes on."""

from __future__ import annotations

import pytest

from modelwire import AsyncClient, BadRequestError, ChatMessage

SYSTEM = ChatMessage("system", "You answer briefly.")


def conversation(turns: int) -> list[ChatMessage]:
    history = [SYSTEM]
    for i in range(turns):
        history.append(ChatMessage("user", f"Question number {i}: what about the weather?"))
        history.append(ChatMessage("assistant", "It is sunny and warm today, " * 6))
    history.append(ChatMessage("user", "And tomorrow?"))
    return history


async def test_a_long_conversation_keeps_its_system_message_and_newest_turns(
    client: AsyncClient,
) -> None:
    history = conversation(12)
    with pytest.raises(BadRequestError) as refused:  # as sent, it does not fit
        await client.generate(messages=history, model="tiny-llama", max_new_tokens=200)
    assert "context" in str(refused.value)

    fit = await client.fit_chat(history, model="tiny-llama", max_new_tokens=200)
    assert fit.dropped > 0 and fit.max_new_tokens == 200 and fit.truncate_prompt_tokens is None
    assert fit.messages[0] == SYSTEM and fit.messages[1].role == "user"  # type: ignore[union-attr]
    assert fit.messages[-1] == history[-1]
    assert fit.messages == [SYSTEM, *history[1 + fit.dropped :]]
    assert fit.prompt_tokens + 200 <= 512
    # One turn fewer left out would not have fitted: it drops no more than it must.
    wider = [SYSTEM, *history[fit.dropped - 1 :]]
    tokens = await client.tokenize(messages=wider, model="tiny-llama", add_generation_prompt=True)
    assert len(tokens.token_ids) + 200 > 512

    result = await client.generate(
        messages=fit.messages,
        model="tiny-llama",
        max_new_tokens=fit.max_new_tokens,
        temperature=0,
        ignore_eos=True,
    )
    assert result.prompt_token_count == fit.prompt_tokens
    assert len(result.sequences[0].tokens) == 200


async def test_a_newest_turn_too_long_for_the_context_is_cut_from_the_left(
    client: AsyncClient,
) -> None:
    huge = [SYSTEM, ChatMessage("user", "tell me more " * 400)]
    fit = await client.fit_chat(huge, model="tiny-llama", max_new_tokens=200)
    assert fit.messages == huge and fit.prompt_tokens > 512
    assert fit.truncate_prompt_tokens is not None
    assert fit.truncate_prompt_tokens + fit.max_new_tokens <= 512
    result = await client.generate(
        messages=fit.messages,
        model="tiny-llama",
        max_new_tokens=fit.max_new_tokens,
        truncate_prompt_tokens=fit.truncate_prompt_tokens,
    )
    assert result.prompt_token_count == fit.truncate_prompt_tokens

    # A shorter newest turn keeps whole and gets the room that is left.
    long = [SYSTEM, ChatMessage("user", "tell me more " * 40)]
    fit = await client.fit_chat(long, model="tiny-llama", max_new_tokens=500)
    assert fit.truncate_prompt_tokens is None and fit.prompt_tokens + fit.max_new_tokens == 512


async def test_the_default_model_is_measured_when_none_is_named(client: AsyncClient) -> None:
    [default] = [m for m in await client.list_models("text-generation") if m.default_for_task]
    fit = await client.fit_chat(conversation(30), max_new_tokens=64)
    assert default.context_length is not None
    assert fit.prompt_tokens + 64 <= default.context_length and fit.dropped > 0
