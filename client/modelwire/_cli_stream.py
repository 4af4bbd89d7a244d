"""``modelwire generate`` and ``modelwire chat``: answers streamed to the terminal, and
Ctrl-C that stops the answer (cancelling the gRPC call) instead of the program."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from modelwire._cli_output import Output, Report, error_line, generation_data
from modelwire._cli_tasks import Subparsers, command
from modelwire._client import AsyncClient
from modelwire._errors import APIError
from modelwire._structured import JsonSchema, Regex
from modelwire._types import ChatMessage, GenerationResult

STOPPED = "[stopped]"


async def cancel_on_interrupt(work: Coroutine[Any, Any, Any]) -> bool:
    """Run ``work``; Ctrl-C cancels it rather than the program. True if it was stopped.

    Cancelling the task leaves the stream's ``async with``, which cancels the call on the
    server. Outside this window SIGINT is Python's default again (KeyboardInterrupt).
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    stopped = False

    def stop() -> None:
        nonlocal stopped
        stopped = True
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGINT, stop)
    except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread
        pass
    try:
        await task
    except asyncio.CancelledError:
        if not stopped:
            raise
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGINT)
    return stopped


def generation_params(args: argparse.Namespace) -> dict[str, Any]:
    given = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "seed": args.seed,
        "stop": args.stop or None,
        "ignore_eos": args.ignore_eos or None,
        "priority": args.priority,
    }
    return {k: v for k, v in given.items() if v is not None}


async def _stream_answer(
    client: AsyncClient, output: Output, into: list[str], **call: Any
) -> GenerationResult:
    """Stream sequence 0's deltas to stdout, keeping them in ``into`` as they arrive."""
    async with client.generate_stream(**call) as stream:
        async for chunk in stream:
            if chunk.text and chunk.index == 0:
                into.append(chunk.text)
                output.stream(chunk.text)
        return await stream.final()


def response_format(args: argparse.Namespace) -> JsonSchema | Regex | None:
    """``--json-schema FILE`` (read here, so a bad file is named) or ``--regex``."""
    if args.regex is not None:
        return Regex(args.regex)
    if args.json_schema is None:
        return None
    path = Path(args.json_schema)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a JSON schema: {error}") from None
    return JsonSchema(schema, name=path.stem)


async def generate(client: AsyncClient, args: argparse.Namespace, output: Output) -> Report:
    call = {"prompt": args.prompt, "model": args.model, **generation_params(args)}
    fmt = response_format(args)
    if fmt is not None:
        call["response_format"] = fmt
    if output.as_json:  # scripts want one document, not a stream
        return Report(generation_data(await client.generate(**call)), [])
    parts: list[str] = []
    results: list[GenerationResult] = []

    async def run() -> None:
        results.append(await _stream_answer(client, output, parts, **call))

    stopped = await cancel_on_interrupt(run())
    output.stream("\n")
    if stopped:
        output.note(STOPPED)
        return Report(None, [], exit_code=130)
    return Report(None, [])


async def chat(client: AsyncClient, args: argparse.Namespace, output: Output) -> Report:
    """Read turns from stdin until EOF, ``/quit`` or Ctrl-C at the prompt; ``/reset``
    starts over. The oldest turns are left out once the conversation outgrows the
    model's context (never the system message), so a long chat goes on."""
    # asyncio.run's own SIGINT handler would only cancel this task while input() blocks;
    # the default handler makes Ctrl-C at the prompt raise KeyboardInterrupt right there.
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        signal.signal(signal.SIGINT, signal.default_int_handler)
    start = [ChatMessage("system", args.system)] if args.system else []
    history = list(start)
    params = {"model": args.model, **generation_params(args)}
    while (line := _read_turn()) is not None:
        if not line.strip():
            continue
        if line.strip() == "/reset":
            history = list(start)
            output.note("[the conversation starts over]")
            continue
        history.append(ChatMessage("user", line))
        answer = await _chat_turn(client, output, history, params)
        if answer is None:
            history.pop()  # the turn failed: forget it, so the next one can succeed
        else:
            history.append(ChatMessage("assistant", answer))
    return Report(None, [])


def _read_turn() -> str | None:
    # Blocking input() on the loop's thread is deliberate: nothing else runs between
    # turns, and a thread stuck in input() could not be cancelled at exit. The "> "
    # prompt is for a person at a terminal, not for a pipe's stdout.
    try:
        line = input("> " if sys.stdin.isatty() else "")
    except (EOFError, KeyboardInterrupt):
        return None
    return None if line.strip() in {"/quit", "/exit"} else line


async def _chat_turn(
    client: AsyncClient, output: Output, history: list[ChatMessage], params: dict[str, Any]
) -> str | None:
    """One answer, streamed; the partial text if stopped, None if the call failed.
    ``history`` loses the turns left out to fit the model's context."""
    parts: list[str] = []
    try:
        fit = await client.fit_chat(
            history, model=params["model"], max_new_tokens=params.get("max_new_tokens")
        )
        if fit.dropped:
            output.note(f"[left out the {fit.dropped} oldest turns to fit the model's context]")
            history[:] = fit.messages  # type: ignore[assignment]
        call = {**params, "max_new_tokens": fit.max_new_tokens}
        if fit.truncate_prompt_tokens is not None:
            call["truncate_prompt_tokens"] = fit.truncate_prompt_tokens
        stopped = await cancel_on_interrupt(
            _stream_answer(client, output, parts, messages=list(history), **call)
        )
    except APIError as error:
        output.stream("\n")
        output.note(f"modelwire: error: {error_line(error)}")
        return None
    output.stream("\n")
    if stopped:
        output.note(STOPPED)
    return "".join(parts)


def add_stream_commands(subparsers: Subparsers) -> None:
    p = command(subparsers, "generate", "generate text, streamed as it arrives", generate)
    p.add_argument("prompt")
    _generation_flags(p)
    constrained = p.add_mutually_exclusive_group()
    constrained.add_argument(
        "--json-schema", metavar="FILE", help="answer with JSON valid under this schema file"
    )
    constrained.add_argument("--regex", help="answer with text this regex matches in full")
    p = command(subparsers, "chat", "chat with a model; Ctrl-C stops an answer", chat)
    p.add_argument("--system", help="a system message to start the conversation")
    _generation_flags(p)


def _generation_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--temperature", type=float, help="0 = greedy")
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--stop", action="append", help="a stop string (repeatable)")
    parser.add_argument("--ignore-eos", action="store_true")
    parser.add_argument(
        "--priority", type=int, help="higher is admitted first when the model is busy (default 0)"
    )
