"""Property-based fuzz of every InferenceService and ModelService RPC.

Each request starts from a small valid one for its RPC and gets zero to three
mutations drawn from the request's own descriptor: any field, nested ones included,
set to an edge value of its type (empty and giant strings, NaN and infinities, huge
and negative numbers, unknown enum values, random bytes as media, repeated fields with
a hundred thousand items), or the model swapped for an unknown, empty or wrong-task
name. Raw gRPC stubs send them, so nothing is checked client-side first. Beside the
random ones: every float field of every template at once set to NaN, the infinities
and the float32 extremes, and bytes that are no message at all sent to every method.

Every call must end within its deadline with a deliberate status: never UNKNOWN or
INTERNAL (a handler that crashed), never DEADLINE_EXCEEDED (a hang), never UNIMPLEMENTED
(every RPC and every preset model's task is served). Afterwards the server must still
be healthy, and its memory must not have grown past a bound. Some RPCs have a second
template on another kind of model (image chat on LLaVA, captions on a
vision-encoder-decoder, Whisper transcription), so every engine path gets fuzzed.
"""

from __future__ import annotations

import io
import math
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelwire.v1 import inference_service_pb2 as ipb
from modelwire.v1 import inference_service_pb2_grpc as igrpc
from modelwire.v1 import model_service_pb2 as mpb
from modelwire.v1 import model_service_pb2_grpc as mgrpc
from modelwire_server import preset as preset_models
from tests.processes import kill_if_running, read_port, spawn_server, wait_serving

BATCHES = 100
BATCH = 21  # requests per hypothesis example, sent concurrently
WARMUP_CALLS = 10 * BATCH
MAX_GROWTH = 300 * 2**20  # bytes of RSS the process may gain after the warm-up
DEADLINE_S = 30.0
FORBIDDEN = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED,
}
MODELS = {
    "tiny-sentiment", "tiny-nli", "tiny-fill-mask", "tiny-ner", "tiny-qa", "tiny-embed",
    "tiny-gpt2", "tiny-t5", "tiny-m2m100", "tiny-vit", "tiny-detr", "tiny-blip",
    "tiny-vit-gpt2", "tiny-llava", "tiny-wav2vec2-ctc", "tiny-whisper", "tiny-audio-cls",
    "tiny-vits",
}  # fmt: skip


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _wav() -> bytes:
    import soundfile

    buffer = io.BytesIO()
    samples = np.sin(np.arange(1600) / 5).astype(np.float32) * 0.1
    soundfile.write(buffer, samples, 16000, format="WAV")
    return buffer.getvalue()


# A small valid request per RPC (JSON names), with the model it is meant for; a key
# "Rpc:variant" is a second template of that RPC.
def _templates() -> dict[str, tuple[str, dict[str, Any]]]:
    image = {"data": _png()}
    clip = {"encoded": _wav()}
    short = {"stopping": {"max_new_tokens": 3}}
    return {
        "Generate": ("tiny-gpt2", {"prompt": "Hi", **short}),
        "Generate:image": (
            "tiny-llava",
            {
                "messages": {
                    "messages": [{"role": "user", "content": [{"image": image}, {"text": "What?"}]}]
                },
                **short,
            },
        ),
        "Tokenize": ("tiny-gpt2", {"text": "hello there"}),
        "ClassifyText": ("tiny-sentiment", {"inputs": ["good"]}),
        "ClassifyZeroShot": ("tiny-nli", {"inputs": ["a"], "candidate_labels": ["x", "y"]}),
        "FillMask": ("tiny-fill-mask", {"inputs": ["Paris is the [MASK] of France."]}),
        "RecognizeEntities": ("tiny-ner", {"inputs": ["Ada lives in Paris"]}),
        "AnswerQuestion": ("tiny-qa", {"question": "Who?", "context": "Ada wrote it."}),
        "Summarize": ("tiny-t5", {"inputs": ["a short text"], **short}),
        "Translate": (
            "tiny-m2m100",
            {"inputs": ["hello"], "source_language": "en", "target_language": "de", **short},
        ),
        "Embed": ("tiny-embed", {"inputs": ["hello"]}),
        "ClassifyImage": ("tiny-vit", {"images": [image]}),
        "DetectObjects": ("tiny-detr", {"images": [image]}),
        "CaptionImage": ("tiny-blip", {"images": [image], **short}),
        "CaptionImage:ved": ("tiny-vit-gpt2", {"images": [image], "prompt": "a", **short}),
        "TranscribeAudio": ("tiny-wav2vec2-ctc", {"clips": [clip]}),
        "TranscribeAudio:whisper": ("tiny-whisper", {"clips": [clip], "language": "en"}),
        "ClassifyAudio": ("tiny-audio-cls", {"clips": [clip]}),
        "SynthesizeSpeech": ("tiny-vits", {"text": "hi"}),
        "ListModels": ("", {}),
        "GetModel": ("tiny-sentiment", {}),
        "LoadModel": ("fuzz-new", {"task": "fill-mask", "source": "preset:tiny-fill-mask"}),
        "UnloadModel": ("no-such-model", {}),
    }


def _request_type(rpc: str) -> type[Message]:
    for module, service in ((ipb, "InferenceService"), (mpb, "ModelService")):
        method = module.DESCRIPTOR.services_by_name[service].methods_by_name.get(rpc)
        if method is not None:
            return message_factory.GetMessageClass(method.input_type)
    raise KeyError(rpc)


# -- edge values by field type --------------------------------------------------------

GIANT = "ä" * 200_000
STRINGS = st.one_of(
    st.sampled_from(["", " ", "x", "[MASK]", "<mask>", "\x00", "\ud7ff🙂\u202e", GIANT[:5000]]),
    st.just(GIANT),
    st.just("long text " * 200_000),  # 2 MB
    st.text(max_size=12),
)
INT32 = st.one_of(st.sampled_from([0, 1, -1, 2**31 - 1, -(2**31)]), st.integers(-3, 600))
INT64 = st.one_of(INT32, st.sampled_from([2**63 - 1, -(2**63)]))
UINT32 = st.one_of(st.sampled_from([0, 1, 2**32 - 1]), st.integers(0, 600))
UINT64 = st.one_of(UINT32, st.just(2**64 - 1))
F32_MAX = 3.4028234663852886e38
EXTREME_FLOATS = [math.nan, math.inf, -math.inf, -F32_MAX, F32_MAX, -1e308]
FLOATS = st.one_of(
    st.sampled_from([*EXTREME_FLOATS, 0.0, -0.0, 1e308, -1.0, 1e-45]),
    st.floats(-10, 10),
)
HUGE_COUNT = 100_000  # items in a repeated field
BYTES = st.one_of(
    st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WAVE", b"\xff" * 4]),
    st.binary(max_size=256),
    st.just(bytes(300_000)),
)
_T = FieldDescriptor
SCALARS: dict[int, st.SearchStrategy[Any]] = {
    _T.TYPE_STRING: STRINGS,
    _T.TYPE_BYTES: BYTES,
    _T.TYPE_BOOL: st.booleans(),
    _T.TYPE_FLOAT: FLOATS,
    _T.TYPE_DOUBLE: FLOATS,
    _T.TYPE_INT32: INT32,
    _T.TYPE_SINT32: INT32,
    _T.TYPE_INT64: INT64,
    _T.TYPE_SINT64: INT64,
    _T.TYPE_UINT32: UINT32,
    _T.TYPE_UINT64: UINT64,
    _T.TYPE_ENUM: st.integers(-1, 7),  # proto3 enums are open: unknown values are legal
}


def _mutate(draw: Callable[[st.SearchStrategy[Any]], Any], msg: Message, depth: int = 0) -> None:
    """Set one field somewhere in ``msg`` to an edge value of its type."""
    if not msg.DESCRIPTOR.fields:  # a message with no fields (a format's marker): set it
        msg.SetInParent()
        return
    field = draw(st.sampled_from(list(msg.DESCRIPTOR.fields)))
    target = getattr(msg, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key, value = (
            field.message_type.fields_by_name["key"],
            field.message_type.fields_by_name["value"],
        )
        for _ in range(draw(st.integers(1, 3))):
            target[draw(SCALARS[key.type])] = draw(SCALARS[value.type])
    elif field.message_type is not None and field.is_repeated:
        if draw(st.booleans()):
            del target[:]
        if draw(st.integers(0, 19)) == 0:  # ten thousand empty items
            for _ in range(HUGE_COUNT // 10):
                target.add()
        for _ in range(draw(st.integers(0, 3))):
            item = target.add()
            if depth < 3:
                _mutate(draw, item, depth + 1)
    elif field.message_type is not None:
        if depth < 3:
            _mutate(draw, target, depth + 1)
        else:
            target.SetInParent()
    elif field.is_repeated:
        del target[:]
        if draw(st.integers(0, 9)) == 0:  # a short value a hundred thousand times
            short = {_T.TYPE_STRING: "ab", _T.TYPE_BYTES: b"\x00"}.get(field.type)
            target.extend([short if short is not None else draw(SCALARS[field.type])] * HUGE_COUNT)
        else:
            target.extend(draw(st.lists(SCALARS[field.type], max_size=4)))
    else:
        setattr(msg, field.name, draw(SCALARS[field.type]))


@dataclass(frozen=True)
class Probe:
    rpc: str
    request: Message
    streaming: bool

    def __repr__(self) -> str:  # giant fields make hypothesis' reports unreadable
        return f"Probe({self.rpc}, {str(self.request)[:300]!r})"


@st.composite
def probes(draw: Callable[[st.SearchStrategy[Any]], Any]) -> Probe:
    key = draw(st.sampled_from(sorted(TEMPLATES)))
    rpc = key.split(":")[0]
    model, fields = TEMPLATES[key]
    request = json_format.ParseDict(fields, _request_type(rpc)())
    names = st.sampled_from(
        ["", "nope", "tiny-gpt2", "tiny-sentiment", "tiny-whisper", "tiny-llava", GIANT]
    )
    if rpc == "UnloadModel":  # never the models the rest of the fuzz needs
        names = st.sampled_from(["", "nope", "fuzz-new", GIANT])
    if "model" in request.DESCRIPTOR.fields_by_name:
        # Three in four keep their model: with the mutations, about 40% stay valid.
        request.model = draw(st.one_of(st.just(model), st.just(model), st.just(model), names))
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 1, 1, 2, 3]))):
        _mutate(draw, request)
    return Probe(rpc, request, rpc == "Generate")


TEMPLATES = _templates()


@dataclass
class Outcome:
    code: grpc.StatusCode
    seconds: float
    details: str


class Sender:
    """Sends probes over raw stubs, each with a deadline, and reports how each ended."""

    def __init__(self, target: str) -> None:
        options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
        self.channel = grpc.insecure_channel(target, options=options)
        self.inference = igrpc.InferenceServiceStub(self.channel)
        self.models = mgrpc.ModelServiceStub(self.channel)

    def send(self, probe: Probe) -> Outcome:
        stub = self.models if isinstance(probe.request, _model_messages()) else self.inference
        method = getattr(stub, probe.rpc)
        started = time.monotonic()
        try:
            if probe.streaming:
                for _ in method(probe.request, timeout=DEADLINE_S):
                    pass
            else:
                method(probe.request, timeout=DEADLINE_S)
        except grpc.RpcError as error:
            return Outcome(error.code(), time.monotonic() - started, error.details() or "")
        return Outcome(grpc.StatusCode.OK, time.monotonic() - started, "")


def _model_messages() -> tuple[type[Message], ...]:
    return tuple(_request_type(r) for r in ("ListModels", "GetModel", "LoadModel", "UnloadModel"))


@dataclass
class FuzzServer:
    """The fuzzed server: a subprocess of its own, so that its memory is measured alone
    (in the pytest process, a thousand earlier tests move the RSS as much as a leak)."""

    proc: subprocess.Popen[str]
    target: str

    def rss_bytes(self) -> int:
        """The server's resident memory, from /proc."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no VmRSS for the server (pid {self.proc.pid})")


@pytest.fixture(scope="module")
def fuzz_server(
    preset_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FuzzServer]:
    # Small limits keep giant inputs and long generations cheap: the fuzz is about
    # statuses, not throughput. float32 on the CPU, as every in-process test server.
    small = {"max_new_tokens": 8, "default_max_new_tokens": 4, "max_input_chars": 4000}
    models = [
        {
            "name": m.name,
            "task": m.task,
            "source": str(preset_models.ensure_model(m.name)),
            "device": "cpu",
            "dtype": "float32",
            **m.settings,
            **small,
        }
        for m in preset_models.all_models()
        if m.name in MODELS
    ]
    config = tmp_path_factory.mktemp("fuzz") / "fuzz.yaml"
    config.write_text(
        yaml.safe_dump({"models": models, "load_allow_list": ["preset:tiny-fill-mask"]})
    )
    proc = spawn_server("--config", str(config), "--log-level", "WARNING", cache=preset_cache)
    log: list[str] = []
    try:
        target = f"127.0.0.1:{read_port(proc, log)}"
        wait_serving(target, proc, log)
        yield FuzzServer(proc, target)
    finally:
        kill_if_running(proc)


def test_random_requests_all_end_with_a_deliberate_status(fuzz_server: FuzzServer) -> None:
    sender = Sender(fuzz_server.target)
    rss: dict[str, int] = {}
    listing = sender.models.ListModels(mpb.ListModelsRequest(), timeout=30)
    assert not [(m.name, m.failure_message) for m in listing.models if m.failure_message]
    assert MODELS <= {m.name for m in listing.models}
    codes: Counter[str] = Counter()
    samples: dict[str, str] = {}
    pool = ThreadPoolExecutor(8)

    @settings(
        max_examples=BATCHES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(probes(), min_size=BATCH, max_size=BATCH))
    def batch(batch_probes: list[Probe]) -> None:
        if codes.total() >= WARMUP_CALLS and not rss:  # each path's one-time allocations
            rss["before"] = fuzz_server.rss_bytes()
        for probe, outcome in zip(batch_probes, pool.map(sender.send, batch_probes), strict=True):
            codes[outcome.code.name] += 1
            samples.setdefault(outcome.code.name, f"{probe.rpc}: {outcome.details[:150]}")
            assert outcome.code not in FORBIDDEN, (probe, outcome)
            assert outcome.seconds < DEADLINE_S, (probe, outcome)
            # The status itself must reach the client: no trailers over its metadata cap.
            assert "metadata size exceeds" not in outcome.details, (probe, outcome)

    try:
        batch()
    finally:
        pool.shutdown()
    print("fuzz status codes:", dict(codes), samples)  # shown with -s: what the fuzz exercised
    total = sum(codes.values())
    assert total >= 2000, codes
    assert codes["OK"] >= 0.3 * total, codes
    _still_healthy(sender)
    # The server keeps no garbage from thousands of bad calls: once idle it trims its
    # heaps. Polling: the trim runs on the server's own schedule.
    deadline = time.monotonic() + 30
    grown = fuzz_server.rss_bytes() - rss["before"]
    while grown > MAX_GROWTH and time.monotonic() < deadline:
        time.sleep(0.5)
        grown = fuzz_server.rss_bytes() - rss["before"]
    print(f"fuzz memory growth: {grown / 2**20:.0f} MB")
    assert grown <= MAX_GROWTH, f"RSS grew {grown / 2**20:.0f} MB over {total} calls"


def _still_healthy(sender: Sender) -> None:
    health = health_pb2_grpc.HealthStub(sender.channel)
    request = health_pb2.HealthCheckRequest(service="modelwire.v1.InferenceService")
    assert health.Check(request, timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    reply = sender.inference.ClassifyText(
        ipb.ClassifyTextRequest(model="tiny-sentiment", inputs=["fine"]), timeout=30
    )
    assert len(reply.results) == 1


def _float_fields(msg: Message, value: float, depth: int = 0) -> int:
    """Set every float field reachable from ``msg`` to ``value``; how many were set."""
    count = 0
    for field in msg.DESCRIPTOR.fields:
        target = getattr(msg, field.name)
        if field.type in (_T.TYPE_FLOAT, _T.TYPE_DOUBLE):
            if field.is_repeated:
                del target[:]
                target.extend([value] * 3)
            else:
                setattr(msg, field.name, value)
            count += 1
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].type in (_T.TYPE_FLOAT, _T.TYPE_DOUBLE):
                target[0] = value
                count += 1
        elif field.message_type is not None and depth < 4:
            containing = field.containing_oneof
            if containing is not None and msg.WhichOneof(containing.name) not in (None, field.name):
                continue  # keep the template's choice of a oneof
            items = list(target) if field.is_repeated else [target]
            for item in items:
                count += _float_fields(item, value, depth + 1)
    return count


def test_extreme_floats_in_every_float_field(fuzz_server: FuzzServer) -> None:
    sender = Sender(fuzz_server.target)
    probes, fields = [], 0
    for key, (model, values) in sorted(TEMPLATES.items()):
        rpc = key.split(":")[0]
        for value in EXTREME_FLOATS:
            request = json_format.ParseDict(values, _request_type(rpc)())
            if "model" in request.DESCRIPTOR.fields_by_name:
                request.model = model
            # Generation options live in messages the templates leave unset: fill them.
            for name in ("sampling", "stopping", "options"):
                if name in request.DESCRIPTOR.fields_by_name:
                    getattr(request, name).SetInParent()
            fields += _float_fields(request, value)
            probes.append(Probe(rpc, request, rpc == "Generate"))
    assert fields >= 20 * len(EXTREME_FLOATS), fields  # sampling, thresholds, audio, ...
    with ThreadPoolExecutor(8) as pool:
        for probe, outcome in zip(probes, pool.map(sender.send, probes), strict=True):
            assert outcome.code not in FORBIDDEN, (probe, outcome)
    _still_healthy(sender)


GARBAGE = st.one_of(
    st.binary(min_size=1, max_size=64),
    st.sampled_from(
        [b"\x0a\x02\xff\xfe", b"\x0f", b"\x0a\xff\xff\xff\xff\x0f", b"\x08" + b"\xff" * 11]
    ),
)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.lists(GARBAGE, min_size=len(TEMPLATES), max_size=len(TEMPLATES)))
def test_garbage_bytes_at_every_method(fuzz_server: FuzzServer, bodies: list[bytes]) -> None:
    """Bytes that may or may not parse, at every method: a parse failure is
    INVALID_ARGUMENT, and whatever parses gets a deliberate status like any request."""
    methods = [
        (service.full_name, method)
        for module, name in ((ipb, "InferenceService"), (mpb, "ModelService"))
        for service in [module.DESCRIPTOR.services_by_name[name]]
        for method in service.methods
        if method.name != "UnloadModel"  # garbage might name a model the fuzz needs
    ]
    with grpc.insecure_channel(fuzz_server.target) as channel:
        for (service, method), body in zip(methods * 2, bodies, strict=False):
            path = f"/{service}/{method.name}"
            send = channel.unary_stream if method.server_streaming else channel.unary_unary
            try:
                reply = send(path)(body, timeout=DEADLINE_S)
                if method.server_streaming:
                    list(reply)
            except grpc.RpcError as error:
                assert error.code() not in FORBIDDEN, (path, body, error)
                assert dict(error.trailing_metadata() or ())["x-request-id"], (path, body)
