"""What the benchmark scripts share: the server subprocess, the thread count, timing,
interleaved rounds, medians and report rows.

Every script compares the server (a subprocess started from a YAML config, reached
through the SDK) with an in-process transformers reference on the same model, inputs
and torch thread count; contenders run interleaved so that drift hits all alike, and
the report prints the median of the rounds beside the raw numbers.

Imported by the scripts as ``_common`` (``python bench/x.py`` puts ``bench/`` first on
``sys.path``).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READY_LINE = "modelwire-server listening on"

#: ``run(inputs, batch)``: an in-process reference over ``inputs``, ``batch`` at a time.
Reference = Callable[[list[Any], int], None]
#: Times by task, then by contender (``server``, ``batched``, ``one``), one per round.
TaskTimes = dict[str, dict[str, list[float]]]


# --------------------------------------------------------------------------- arguments


def base_parser(doc: str, requests: int | None) -> argparse.ArgumentParser:
    """The flags every comparison takes: ``--requests`` (unless None), ``--threads`` (this
    process's and the server's torch threads) and ``--rounds`` (the median's runs)."""
    parsed = argparse.ArgumentParser(description=doc.splitlines()[0])
    if requests is not None:
        parsed.add_argument("--requests", type=int, default=requests)
    parsed.add_argument("--threads", type=int, default=2)
    parsed.add_argument("--rounds", type=int, default=3)
    return parsed


# ------------------------------------------------------------------------------ inputs


def sentences(words: Sequence[str], n: int, length: tuple[int, int], seed: int = 0) -> list[str]:
    """``n`` texts of ``length`` (inclusive range) words drawn from ``words``, seeded."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(words, k=rng.randint(*length))) for _ in range(n)]


# ------------------------------------------------------------------------------ server


def model_entry(name: str, task: str, source: Path | str, **fields: object) -> str:
    """One ``models:`` item of a server config, as YAML (fields in the order given)."""
    lines = [f"  - name: {name}", f"    task: {task}", f"    source: {source}"]
    lines += [f"    {key}: {value}" for key, value in fields.items()]
    return "\n".join(lines) + "\n"


@dataclass
class Server:
    """A running server subprocess and the address it listens on."""

    proc: subprocess.Popen[str]
    target: str


@contextmanager
def serve(config: Path, entries: Iterable[str], threads: int | None = None) -> Iterator[Server]:
    """Write a server config at ``config`` listing the ``model_entry`` items, start
    ``modelwire_server serve`` on it (port 0), wait for its ``listening on`` line, yield
    the server, and terminate it on the way out.

    ``threads`` sets the subprocess's OMP_NUM_THREADS (its torch thread count); None
    leaves the environment's. Logs go at WARNING so that stdout carries the ready line.
    """
    config.write_text("models:\n" + "".join(entries))
    env = {**os.environ, "MODELWIRE_LOG_LEVEL": "WARNING"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelwire_server", "serve", "--config", str(config), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        target = next(
            (line.split()[-1] for line in proc.stdout if line.startswith(READY_LINE)), None
        )
        if target is None:
            raise RuntimeError("the server exited before listening")
        yield Server(proc, target)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


async def wait_ready(target: str, within_s: float = 300) -> None:
    """Wait until the server at ``target`` has loaded its models."""
    from modelwire import AsyncClient

    async with AsyncClient(target) as client:
        await client.wait_until_ready(timeout=within_s)


def peak_rss_mib(pid: int) -> float:
    """A live process's peak resident set (VmHWM), in MiB; 0 where /proc has none."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    found = next((line for line in status.splitlines() if line.startswith("VmHWM:")), "")
    return int(found.split()[1]) / 1024 if found else 0.0


def set_threads(threads: int) -> None:
    """This process's torch thread count, the same as the server subprocess is given."""
    import torch

    torch.set_num_threads(threads)


def pipeline_reference(task: str, **call_kwargs: Any) -> Callable[[str], Reference]:
    """``make(path)``: transformers' ``pipeline(task)`` on the model at ``path`` (CPU), as
    a reference: a list in one call with ``batch_size``, or one input per call."""

    def make(path: str) -> Reference:
        import transformers

        pipe = transformers.pipeline(task, model=path, device="cpu")

        def run(inputs: list[Any], batch: int) -> None:
            if batch == 1:
                for item in inputs:
                    pipe(item, **call_kwargs)
            else:
                pipe(inputs, batch_size=batch, **call_kwargs)

        return run

    return make


# ------------------------------------------------------------------------------ timing


async def timed_gather(calls: Iterable[Awaitable[Any]]) -> float:
    """Seconds from sending all ``calls`` at once until the last has returned."""
    started = time.perf_counter()
    await asyncio.gather(*calls)
    return time.perf_counter() - started


def timed(run: Reference, inputs: list[Any], batch: int) -> float:
    """Seconds ``run(inputs, batch)`` takes."""
    started = time.perf_counter()
    run(inputs, batch)
    return time.perf_counter() - started


async def interleave(
    rounds: int, contenders: dict[str, Callable[[], float | Awaitable[float]]]
) -> dict[str, list[float]]:
    """Run every contender once per round, in order, ``rounds`` times; their results
    (seconds, or any number) by contender. Interleaving spreads drift over all alike."""
    results: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            value = run()
            results[name].append(await value if inspect.isawaitable(value) else value)
    return results


@dataclass
class TaskBench:
    """One task of a per-task benchmark: its server call and in-process reference.

    ``sent`` and ``local`` are the same inputs in the server's and the reference's form
    (bytes vs decoded images, say)."""

    name: str
    call: Callable[[Any], Awaitable[Any]]  # one input from ``sent`` -> a server call
    reference: Reference
    sent: list[Any]
    local: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.local:
            self.local = self.sent


async def bench_tasks(
    benches: Sequence[TaskBench], rounds: int, batch: int, warm: tuple[int, int, int]
) -> TaskTimes:
    """Per task: all inputs sent to the server at once (``server``), the reference
    batched (``batched``) and one at a time (``one``). Every contender is warmed up first
    on ``warm`` = (server, batched, one) inputs; rounds interleave contenders and tasks."""
    warm_server, warm_batched, warm_one = warm
    for b in benches:
        await timed_gather(b.call(x) for x in b.sent[:warm_server])
        timed(b.reference, b.local[:warm_batched], batch)
        timed(b.reference, b.local[:warm_one], 1)
    contenders: dict[str, Callable[[], float | Awaitable[float]]] = {}
    for b in benches:
        contenders |= {
            f"{b.name}\0server": lambda b=b: timed_gather(b.call(x) for x in b.sent),
            f"{b.name}\0batched": lambda b=b: timed(b.reference, b.local, batch),
            f"{b.name}\0one": lambda b=b: timed(b.reference, b.local, 1),
        }
    times: TaskTimes = {b.name: {} for b in benches}
    for key, values in (await interleave(rounds, contenders)).items():
        task, contender = key.split("\0")
        times[task][contender] = values
    return times


# ----------------------------------------------------------------------------- reports


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    """The median of each contender's runs."""
    return {name: statistics.median(values) for name, values in times.items()}


def contender_row(
    label: str,
    runs: Sequence[float],
    rate: float,
    *,
    label_width: int,
    seconds_width: int = 7,
    raw_width: int | None = None,
    rate_width: int = 9,
) -> str:
    """``label  median  (run, run, ...)  rate``: seconds to two places, rate to one.

    ``raw_width`` pads the runs' column to a width; None follows it with four spaces."""
    raw = "(" + ", ".join(f"{t:.2f}" for t in runs) + ")"
    raw = raw.ljust(raw_width) if raw_width is not None else raw + " " * 4
    seconds = statistics.median(runs)
    return f"{label:<{label_width}}{seconds:<{seconds_width}.2f}{raw}{rate:>{rate_width}.1f}"


def report_contenders(
    times: dict[str, list[float]],
    rows: Sequence[tuple[str, str]],
    work: float,
    *,
    reference: str,
    label_width: int,
) -> None:
    """Rows of a one-task benchmark: ``rows`` are (key, label) of the server, the batched
    and the one-at-a-time reference, in that order; ``work`` is what a run does (inputs,
    tokens), for the rate column; then the server's ratios against ``reference``."""
    median = medians(times)
    for key, label in rows:
        rate = work / median[key]
        print(
            contender_row(
                label, times[key], rate, label_width=label_width, seconds_width=8, rate_width=10
            )
        )
    server, batched, one = (key for key, _ in rows)
    first, second = f"ratio vs {reference} batched:", f"ratio vs {reference} one at a time:"
    print(f"{first:<{len(second) + 1}}{median[batched] / median[server]:.2f}x")
    print(f"{second} {median[one] / median[server]:.2f}x")


def report_tasks(
    times: TaskTimes,
    requests: int,
    *,
    labels: Callable[[str], tuple[str, str, str]],
    widths: tuple[int, int],
    raw_width: int | None,
) -> None:
    """The rows of ``bench_tasks``' times: per task, its three contenders (``labels(task)``
    names them: server, batched, one at a time) in inputs/s, then the server's ratios."""
    task_width, label_width = widths
    for task, runs in times.items():
        median = medians(runs)
        for key, label in zip(("server", "batched", "one"), labels(task), strict=True):
            row = contender_row(
                label, runs[key], requests / median[key], label_width=label_width,
                raw_width=raw_width,
            )  # fmt: skip
            print(f"{task:<{task_width}}{row}")
        print(
            f"{'':<{task_width}}ratio vs batched {median['batched'] / median['server']:.2f}x, "
            f"vs one at a time {median['one'] / median['server']:.2f}x"
        )
