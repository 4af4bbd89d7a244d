"""Fuzz soak: many malformed requests over every RPC; statuses and server memory.

Starts a server subprocess on the tiny preset's models (small generation and input
limits, as tests/test_fuzz.py uses, so giant inputs stay cheap) or uses ``--target``.
Then sends ``--requests`` calls from ``--concurrency`` workers over raw gRPC (nothing
is checked client-side), each one of:

- a small valid request for its RPC with zero to three random mutations: any field,
  nested ones included, set to an edge value of its type (empty, 200 000-character and
  2 MB strings, NaN, the infinities and float32 extremes, huge and negative integers,
  unknown enum values, random bytes as media, a hundred thousand items in a repeated
  field);
- the same template with every float field set to one extreme value;
- bytes that are no request message at all.

Prints the calls by status code, every UNKNOWN / INTERNAL / DEADLINE_EXCEEDED (a crash
or a hang) with what caused it, and the server's RSS after a warm-up, at the end, and
after it has been idle for a few seconds. A baseline for the memory: the warm-up's RSS,
measured in the same run.

    python bench/fuzz_soak.py [--requests 10000] [--concurrency 16] [--target host:port]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from _common import model_entry
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from soak import rss_mb

from modelwire.v1 import inference_service_pb2, model_service_pb2

READY_LINE = "modelwire-server listening on"
DEADLINE_S = 60.0
BAD = ("UNKNOWN", "INTERNAL", "DEADLINE_EXCEEDED", "UNIMPLEMENTED")
F32_MAX = 3.4028234663852886e38
EXTREME_FLOATS = [math.nan, math.inf, -math.inf, -F32_MAX, F32_MAX]
HUGE_COUNT = 100_000
GIANT = "ä" * 200_000
LONG = "long text " * 200_000
STRINGS = ["", " ", "x", "[MASK]", "<mask>", "\x00", "\ud7ff🙂\u202e", GIANT, LONG, "ab" * 9]
INTS = [0, 1, -1, 2**31 - 1, -(2**31), 3, 600]
FLOATS = [*EXTREME_FLOATS, 0.0, -0.0, 1e308, -1.0, 1e-45, 0.5]
GARBAGE = [b"\x0a\x02\xff\xfe", b"\x0f", b"\x0a\xff\xff\xff\xff\x0f", b"\x08" + b"\xff" * 11]
_T = FieldDescriptor
METHODS: dict[str, MethodDescriptor] = {
    method.name: method
    for module, service in (
        (inference_service_pb2, "InferenceService"),
        (model_service_pb2, "ModelService"),
    )
    for method in module.DESCRIPTOR.services_by_name[service].methods
}
# Models as in tests/test_fuzz.py: one per task, with the templates' names.
MODELS = {
    "tiny-sentiment": "sentiment-analysis",
    "tiny-nli": "zero-shot-classification",
    "tiny-fill-mask": "fill-mask",
    "tiny-ner": "ner",
    "tiny-qa": "question-answering",
    "tiny-embed": "feature-extraction",
    "tiny-gpt2": "text-generation",
    "tiny-t5": "summarization",
    "tiny-m2m100": "translation",
    "tiny-vit": "image-classification",
    "tiny-detr": "object-detection",
    "tiny-blip": "image-to-text",
    "tiny-vit-gpt2": "image-to-text",
    "tiny-llava": "image-text-to-text",
    "tiny-wav2vec2-ctc": "automatic-speech-recognition",
    "tiny-whisper": "automatic-speech-recognition",
    "tiny-audio-cls": "audio-classification",
    "tiny-vits": "text-to-speech",
}


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _wav() -> bytes:
    import numpy as np
    import soundfile

    buffer = io.BytesIO()
    samples = np.sin(np.arange(1600) / 5).astype(np.float32) * 0.1
    soundfile.write(buffer, samples, 16000, format="WAV")
    return buffer.getvalue()


def templates() -> list[tuple[str, str, dict[str, Any]]]:
    """(rpc, model, request as JSON) for a small valid request of every RPC."""
    image, clip, short = {"data": _png()}, {"encoded": _wav()}, {"stopping": {"max_new_tokens": 3}}
    chat = {"messages": [{"role": "user", "content": [{"image": image}, {"text": "What?"}]}]}
    return [
        ("Generate", "tiny-gpt2", {"prompt": "Hi", **short}),
        ("Generate", "tiny-llava", {"messages": chat, **short}),
        ("Tokenize", "tiny-gpt2", {"text": "hello there"}),
        ("ClassifyText", "tiny-sentiment", {"inputs": ["good"]}),
        ("ClassifyZeroShot", "tiny-nli", {"inputs": ["a"], "candidate_labels": ["x", "y"]}),
        ("FillMask", "tiny-fill-mask", {"inputs": ["Paris is the [MASK] of France."]}),
        ("RecognizeEntities", "tiny-ner", {"inputs": ["Ada lives in Paris"]}),
        ("AnswerQuestion", "tiny-qa", {"question": "Who?", "context": "Ada wrote it."}),
        ("Summarize", "tiny-t5", {"inputs": ["a short text"], **short}),
        ("Translate", "tiny-m2m100", {"inputs": ["hi"], "target_language": "de", **short}),
        ("Embed", "tiny-embed", {"inputs": ["hello"]}),
        ("ClassifyImage", "tiny-vit", {"images": [image]}),
        ("DetectObjects", "tiny-detr", {"images": [image]}),
        ("CaptionImage", "tiny-blip", {"images": [image], **short}),
        ("CaptionImage", "tiny-vit-gpt2", {"images": [image], "prompt": "a", **short}),
        ("TranscribeAudio", "tiny-wav2vec2-ctc", {"clips": [clip]}),
        ("TranscribeAudio", "tiny-whisper", {"clips": [clip], "language": "en"}),
        ("ClassifyAudio", "tiny-audio-cls", {"clips": [clip]}),
        ("SynthesizeSpeech", "tiny-vits", {"text": "hi"}),
        ("ListModels", "", {}),
        ("GetModel", "tiny-sentiment", {}),
        ("LoadModel", "fuzz-new", {"task": "fill-mask", "source": "preset:tiny-fill-mask"}),
        ("UnloadModel", "no-such-model", {}),
    ]


def _scalar(rng: random.Random, kind: int) -> Any:
    if kind == _T.TYPE_STRING:
        return rng.choice(STRINGS)
    if kind == _T.TYPE_BYTES:
        return rng.choice([b"", b"\x89PNG\r\n\x1a\n", rng.randbytes(64), bytes(300_000)])
    if kind == _T.TYPE_BOOL:
        return rng.random() < 0.5
    if kind in (_T.TYPE_FLOAT, _T.TYPE_DOUBLE):
        return rng.choice(FLOATS)
    if kind == _T.TYPE_ENUM:
        return rng.randint(-1, 7)
    if kind in (_T.TYPE_UINT32, _T.TYPE_UINT64):
        return rng.choice([0, 1, 2**32 - 1, 600])
    if kind in (_T.TYPE_INT64, _T.TYPE_SINT64):
        return rng.choice([*INTS, 2**63 - 1, -(2**63)])
    return rng.choice(INTS)


def mutate(rng: random.Random, msg: Message, depth: int = 0) -> None:
    """Set one field somewhere in ``msg`` to an edge value of its type."""
    if not msg.DESCRIPTOR.fields:  # a message with no fields (a format's marker): set it
        msg.SetInParent()
        return
    field = rng.choice(list(msg.DESCRIPTOR.fields))
    target = getattr(msg, field.name)
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
        for _ in range(rng.choice([1, 3, HUGE_COUNT // 10])):
            target[_scalar(rng, key.type)] = _scalar(rng, value.type)
    elif entry is not None and field.is_repeated:
        for _ in range(rng.choice([0, 1, 3, HUGE_COUNT // 10])):
            item = target.add()
            if depth < 3 and rng.random() < 0.01:
                mutate(rng, item, depth + 1)
    elif entry is not None:
        if depth < 3:
            mutate(rng, target, depth + 1)
        else:
            target.SetInParent()
    elif field.is_repeated:
        del target[:]
        if rng.random() < 0.1:  # a short value a hundred thousand times
            short = {_T.TYPE_STRING: "ab", _T.TYPE_BYTES: b"\x00"}.get(field.type)
            target.extend([short if short is not None else _scalar(rng, field.type)] * HUGE_COUNT)
        else:
            target.extend(_scalar(rng, field.type) for _ in range(rng.randint(0, 4)))
    else:
        setattr(msg, field.name, _scalar(rng, field.type))


def every_float(msg: Message, value: float, depth: int = 0) -> None:
    """Every float field reachable from ``msg`` (sub-messages filled in) set to ``value``."""
    for field in msg.DESCRIPTOR.fields:
        target = getattr(msg, field.name)
        if field.type in (_T.TYPE_FLOAT, _T.TYPE_DOUBLE):
            if field.is_repeated:
                target.extend([value] * 3)
            else:
                setattr(msg, field.name, value)
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].type in (_T.TYPE_FLOAT, _T.TYPE_DOUBLE):
                target[0] = value
        elif field.message_type is not None and not field.is_repeated and depth < 3:
            oneof = field.containing_oneof
            if oneof is None or msg.WhichOneof(oneof.name) in (None, field.name):
                every_float(target, value, depth + 1)
        elif field.message_type is not None and depth < 3:
            for item in target:
                every_float(item, value, depth + 1)


Probe = tuple[str, bytes, str]  # rpc, body, what it is (for the report)


def make_probe(rng: random.Random, shapes: list[tuple[str, str, dict[str, Any]]]) -> Probe:
    rpc, model, fields = rng.choice(shapes)
    if rpc == "UnloadModel":  # never the models the rest of the run needs
        model = rng.choice(["", "nope", "fuzz-new", GIANT])
    method = METHODS[rpc]
    if rng.random() < 0.1:
        return method.name, rng.choice([*GARBAGE, rng.randbytes(rng.randint(1, 64))]), "garbage"
    request = json_format.ParseDict(fields, message_factory.GetMessageClass(method.input_type)())
    if "model" in request.DESCRIPTOR.fields_by_name and rpc != "UnloadModel":
        names = ["", "nope", "tiny-gpt2", "tiny-whisper", GIANT]
        request.model = model if rng.random() < 0.75 else rng.choice(names)
    elif rpc == "UnloadModel":
        request.model = model
    if rng.random() < 0.1:
        value = rng.choice(EXTREME_FLOATS)
        every_float(request, value)
        return rpc, request.SerializeToString(), f"every float {value}: {str(request)[:200]!r}"
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        mutate(rng, request)
    return rpc, request.SerializeToString(), repr(str(request)[:300])


async def send(channel: grpc.aio.Channel, probe: Probe) -> tuple[str, str]:
    """The call's status code and details."""
    rpc, body, _ = probe
    method = METHODS[rpc]
    path = f"/{method.containing_service.full_name}/{method.name}"
    try:
        if method.server_streaming:
            async for _ in channel.unary_stream(path)(body, timeout=DEADLINE_S):
                pass
        else:
            await channel.unary_unary(path)(body, timeout=DEADLINE_S)
    except grpc.aio.AioRpcError as error:
        return error.code().name, error.details() or ""
    return "OK", ""


async def soak(target: str, requests: int, concurrency: int, pid: int | None, seed: int) -> None:
    rng = random.Random(seed)
    shapes = templates()
    codes: Counter[str] = Counter()
    by_rpc: Counter[str] = Counter()
    samples: dict[str, str] = {}  # one status message per RPC and code
    bad: list[str] = []
    options = [("grpc.max_send_message_length", 256 * 1024 * 1024)]
    rss: Callable[[], float] = (lambda: rss_mb(pid)) if pid else (lambda: math.nan)
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        queue: asyncio.Queue[Probe | None] = asyncio.Queue(maxsize=concurrency * 2)

        async def worker() -> None:
            while (probe := await queue.get()) is not None:
                code, details = await send(channel, probe)
                codes[code] += 1
                by_rpc[f"{probe[0]}:{code}"] += 1
                samples.setdefault(f"{probe[0]}:{code}", details[:120])
                if code in BAD:
                    bad.append(f"{probe[0]} {code}: {details[:200]} <- {probe[2][:300]}")

        async def feed(count: int) -> None:
            workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
            for _ in range(count):
                await queue.put(make_probe(rng, shapes))
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)

        warmup = min(500, requests // 10)
        await feed(warmup)  # every path's one-time allocations: the memory baseline
        before, started = rss(), time.monotonic()
        await feed(requests - warmup)
        elapsed, after = time.monotonic() - started, rss()
        await asyncio.sleep(8)  # idle: the server trims its heaps after 5 s
        idle = rss()
    total = sum(codes.values())
    print(f"{total} calls ({requests - warmup} after a warm-up of {warmup}) in {elapsed:.0f} s")
    print("by status code:")
    for code, count in codes.most_common():
        print(f"  {code:<20} {count:>7}  {100 * count / total:5.1f}%")
    print("by RPC and code:")
    for key, count in sorted(by_rpc.items()):
        print(f"  {key:<40} {count:>6}  {samples[key]!r}")
    print(f"UNKNOWN / INTERNAL / DEADLINE_EXCEEDED / UNIMPLEMENTED: {len(bad)}")
    for line in bad[:30]:
        print("  " + line)
    print(
        f"server RSS: {before:.0f} MiB after the warm-up (baseline), {after:.0f} MiB at the end "
        f"({after - before:+.0f}), {idle:.0f} MiB after 8 s idle ({idle - before:+.0f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", help="an already running server (RSS is then not read)")
    args = parser.parse_args()
    if args.target:
        asyncio.run(soak(args.target, args.requests, args.concurrency, None, args.seed))
        return
    from modelwire_server import preset

    small = {"max_new_tokens": 8, "default_max_new_tokens": 4, "max_input_chars": 4000}
    entries = [
        model_entry(name, task, preset.ensure_model(name), device="cpu", **small)
        for name, task in MODELS.items()
    ]
    with tempfile.TemporaryDirectory() as root:
        config = Path(root) / "fuzz.yaml"
        config.write_text(
            "load_allow_list: ['preset:tiny-fill-mask']\nmodels:\n" + "".join(entries)
        )
        command = [sys.executable, "-m", "modelwire_server", "serve", "--config", str(config)]
        proc = subprocess.Popen(
            [*command, "--port", "0", "--log-level", "ERROR"], text=True, stdout=subprocess.PIPE
        )
        try:
            assert proc.stdout is not None
            line = next((line for line in proc.stdout if line.startswith(READY_LINE)), "")
            if not line:
                raise SystemExit("the server exited before listening")
            target = line.split()[-1]
            _wait_serving(target)
            asyncio.run(soak(target, args.requests, args.concurrency, proc.pid, args.seed))
        finally:
            proc.terminate()
            print(f"server exit code after SIGTERM: {proc.wait(timeout=120)}")


def _wait_serving(target: str) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    request = health_pb2.HealthCheckRequest(service="modelwire.v1.InferenceService")
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while stub.Check(request, timeout=10).status != health_pb2.HealthCheckResponse.SERVING:
            time.sleep(0.5)  # polling a subprocess: no event to wait on


if __name__ == "__main__":
    main()
