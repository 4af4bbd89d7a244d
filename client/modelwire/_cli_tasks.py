"""The ``modelwire`` subcommands that make one unary call: their arguments and handlers.

Each ``add_*`` registers a subcommand whose handler takes the client and the parsed
arguments and returns a ``Report``; the CLI prints it and handles errors in one place.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

from modelwire._cli_output import Output, Report, label_lines, labelled, results_data
from modelwire._client import AsyncClient

Handler = Callable[[AsyncClient, argparse.Namespace, Output], Awaitable[Report]]
Subparsers = Any  # argparse's _SubParsersAction is private


def connection_flags(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """--target, --api-key, --timeout, --json: on the main parser with their defaults, and
    on each subcommand without (SUPPRESS) so they may follow the subcommand too."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--target",
        default=default(os.environ.get("MODELWIRE_TARGET", "127.0.0.1:50051")),
        help="server address (env MODELWIRE_TARGET; default 127.0.0.1:50051)",
    )
    parser.add_argument(
        "--api-key",
        default=default(os.environ.get("MODELWIRE_API_KEY")),
        help="API key sent as a bearer token (env MODELWIRE_API_KEY)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=default(60.0),
        help="each call's deadline in seconds (default 60)",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="print JSON for scripts"
    )


def add_parser(subparsers: Subparsers, name: str, help: str) -> Any:
    parser = subparsers.add_parser(name, help=help, description=help)
    connection_flags(parser, defaults=False)
    return parser


def command(subparsers: Subparsers, name: str, help: str, handler: Handler) -> Any:
    parser = add_parser(subparsers, name, help)
    parser.add_argument("--model", help="a loaded model's name (default: the task's default)")
    parser.set_defaults(handler=handler)
    return parser


STDIN = "-"
LIST_ARGUMENTS = ("texts",)  # one input per line of standard input
TEXT_ARGUMENTS = ("prompt", "text", "question", "context")  # all of standard input


def read_stdin(args: argparse.Namespace, stdin: TextIO) -> None:
    """Replace a ``-`` argument with standard input, as Unix tools do: in a list of
    inputs, one input per non-blank line; as a single text (a prompt, a context), all of
    it but its final line break. Standard input can stand for one argument only."""
    lists = [n for n in LIST_ARGUMENTS if STDIN in (getattr(args, n, None) or ())]
    texts = [n for n in TEXT_ARGUMENTS if getattr(args, n, None) == STDIN]
    uses = sum(getattr(args, n).count(STDIN) for n in lists) + len(texts)
    if uses > 1:
        raise ValueError("standard input ('-') can stand for one argument only")
    if lists:
        values = getattr(args, lists[0])
        lines = [line for line in stdin.read().splitlines() if line.strip()]
        if not lines:
            raise ValueError("standard input ('-') held no inputs: give one per line")
        at = values.index(STDIN)
        setattr(args, lists[0], [*values[:at], *lines, *values[at + 1 :]])
    elif texts:
        setattr(args, texts[0], stdin.read().removesuffix("\n"))


# --- text ------------------------------------------------------------------------


async def classify(client: AsyncClient, args: argparse.Namespace, _: Output) -> Report:
    results = await client.classify_text(args.texts, model=args.model, top_k=args.top_k)
    return Report(results_data(results), labelled(args.texts, map(label_lines, results)))


async def zero_shot(client: AsyncClient, args: argparse.Namespace, _: Output) -> Report:
    results = await client.classify_zero_shot(
        args.texts,
        args.labels,
        multi_label=args.multi_label or None,
        hypothesis_template=args.template,
        model=args.model,
    )
    return Report(results_data(results), labelled(args.texts, map(label_lines, results)))


async def fill_mask(client: AsyncClient, args: argparse.Namespace, _: Output) -> Report:
    results = await client.fill_mask(
        args.texts, top_k=args.top_k, targets=args.targets, model=args.model
    )
    blocks = (
        [f"{c.score:.4f}  {c.sequence}" for mask in r.masks for c in mask.candidates]
        for r in results
    )
    return Report(results_data(results), labelled(args.texts, blocks))


async def ner(client: AsyncClient, args: argparse.Namespace, _: Output) -> Report:
    results = await client.recognize_entities(
        args.texts, aggregation_strategy=args.aggregation, model=args.model
    )
    blocks = (
        [f"{e.label:<8} {e.score:.4f}  {e.start}:{e.end}  {e.word}" for e in entities]
        or ["(no entities)"]
        for entities in results
    )
    return Report(results_data(results), labelled(args.texts, blocks))


async def qa(client: AsyncClient, args: argparse.Namespace, _: Output) -> Report:
    answers = await client.answer_question(
        args.question,
        args.context,
        top_k=args.top_k,
        max_answer_length=args.max_answer_length,
        handle_impossible_answer=args.handle_impossible_answer or None,
        doc_stride=args.doc_stride,
        model=args.model,
    )
    lines = [
        f"{a.score:.4f}  {'(no answer)' if a.is_impossible else a.text}  [{a.start}:{a.end}]"
        for a in answers
    ]
    return Report(results_data(answers), lines)


async def summarize(client: AsyncClient, args: argparse.Namespace, _: Output) -> Report:
    results = await client.summarize(args.texts, model=args.model, **_limit(args.max_new_tokens))
    return Report(results_data(results), labelled(args.texts, ([r.text] for r in results)))


async def translate(client: AsyncClient, args: argparse.Namespace, _: Output) -> Report:
    results = await client.translate(
        args.texts,
        target_language=args.to,
        source_language=args.source,
        model=args.model,
        **_limit(args.max_new_tokens),
    )
    return Report(results_data(results), labelled(args.texts, ([r.text] for r in results)))


async def embed(client: AsyncClient, args: argparse.Namespace, _: Output) -> Report:
    results = await client.embed(
        args.texts,
        pooling=args.pooling,
        normalize=args.normalize or None,
        truncate=args.truncate or None,
        model=args.model,
    )
    blocks = ([_vector_line(e.values, e.token_vectors)] for e in results)
    return Report(results_data(results), labelled(args.texts, blocks))


def _vector_line(values: list[float], token_vectors: list[list[float]]) -> str:
    if not values:
        width = len(token_vectors[0]) if token_vectors else 0
        return f"{len(token_vectors)} token vectors of {width} dims"
    head = ", ".join(f"{v:.4f}" for v in values[:4])
    return f"{len(values)} dims: [{head}{', ...' if len(values) > 4 else ''}]"


def _limit(max_new_tokens: int | None) -> dict[str, Any]:
    return {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}


def add_text_commands(subparsers: Subparsers) -> None:
    p = command(subparsers, "classify", "classify texts (sentiment-analysis)", classify)
    _texts_argument(p)
    p.add_argument("--top-k", type=int, help="labels per text (default 1)")

    p = command(subparsers, "zero-shot", "score texts against labels you choose", zero_shot)
    _texts_argument(p)
    p.add_argument("--labels", required=True, type=_comma_list, help="comma-separated labels")
    p.add_argument("--multi-label", action="store_true", help="score each label on its own")
    p.add_argument("--template", help='hypothesis template (default "This example is {}.")')

    p = command(subparsers, "fill-mask", "fill the mask token of texts", fill_mask)
    _texts_argument(p)
    p.add_argument("--top-k", type=int, help="candidates per mask (default 5)")
    p.add_argument("--targets", type=_comma_list, help="comma-separated words the mask may only be")

    p = command(subparsers, "ner", "find named entities", ner)
    _texts_argument(p)
    p.add_argument(
        "--aggregation", choices=["none", "simple", "first", "average", "max"], default=None
    )

    p = command(subparsers, "qa", "answer a question from a context", qa)
    p.add_argument("--question", "-q", required=True)
    p.add_argument("--context", "-c", required=True, help='the text ("-": standard input)')
    p.add_argument("--top-k", type=int, help="answers (default 1)")
    p.add_argument("--max-answer-length", type=int, help="in tokens (default 15)")
    p.add_argument(
        "--doc-stride", type=int, help="tokens of overlap between windows of a long context"
    )
    p.add_argument(
        "--handle-impossible-answer",
        action="store_true",
        help='let "(no answer)" compete with the spans',
    )

    p = command(subparsers, "summarize", "summarize texts", summarize)
    _texts_argument(p)
    p.add_argument("--max-new-tokens", type=int)

    p = command(subparsers, "translate", "translate texts", translate)
    _texts_argument(p)
    p.add_argument("--to", required=True, help="target language code, e.g. fr")
    p.add_argument("--from", dest="source", help="source language code (multilingual models)")
    p.add_argument("--max-new-tokens", type=int)

    p = command(subparsers, "embed", "embed texts (feature-extraction)", embed)
    _texts_argument(p)
    p.add_argument("--pooling", choices=["mean", "cls", "none"])
    p.add_argument("--normalize", action="store_true", help="unit-length vectors")
    p.add_argument(
        "--truncate",
        action="store_true",
        help="cut texts longer than the model takes instead of refusing them",
    )


def _texts_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "texts", nargs="+", metavar="TEXT", help='"-" reads standard input, one text per line'
    )


def _comma_list(value: str) -> list[str]:
    labels = [part.strip() for part in value.split(",") if part.strip()]
    if not labels:
        raise argparse.ArgumentTypeError("give at least one label")
    return labels


# --- images and audio ------------------------------------------------------------


async def classify_image(client: AsyncClient, args: argparse.Namespace, _: Output) -> Report:
    results = await client.classify_image(_files(args), top_k=args.top_k, model=args.model)
    return Report(results_data(results), labelled(args.files, map(label_lines, results)))


async def detect(client: AsyncClient, args: argparse.Namespace, _: Output) -> Report:
    results = await client.detect_objects(_files(args), threshold=args.threshold, model=args.model)
    blocks = (
        [
            f"{o.label:<12} {o.score:.4f}  box {_px(o.box.xmin)},{_px(o.box.ymin)}"
            f" {_px(o.box.xmax)},{_px(o.box.ymax)}"
            for o in found.objects
        ]
        or ["(nothing above the threshold)"]
        for found in results
    )
    return Report(results_data(results), labelled(args.files, blocks))


def _px(coordinate: float) -> int:
    # A whole pixel: round() gives an int, so -0.3 prints "0" where f"{-0.3:.0f}" is "-0".
    return round(coordinate)


async def caption(client: AsyncClient, args: argparse.Namespace, _: Output) -> Report:
    params: dict[str, Any] = _limit(args.max_new_tokens)
    if args.num_beams is not None:
        params["num_beams"] = args.num_beams
    if args.temperature is not None:
        params["temperature"] = args.temperature
    if args.seed is not None:
        params["seed"] = args.seed
    results = await client.caption_image(
        _files(args), prompt=args.prompt, model=args.model, **params
    )
    return Report(results_data(results), labelled(args.files, ([r.text] for r in results)))


async def transcribe(client: AsyncClient, args: argparse.Namespace, _: Output) -> Report:
    results = await client.transcribe_audio(
        _files(args),
        return_timestamps=args.timestamps,
        chunk_length_s=args.chunk_length_s,
        language=args.language,
        model=args.model,
    )
    blocks = (
        [r.text]
        + [
            f"  [{c.start_s:.2f}-{'' if c.end_s is None else f'{c.end_s:.2f}'}] {c.text}"
            for c in r.chunks
        ]
        for r in results
    )
    return Report(results_data(results), labelled(args.files, blocks))


async def classify_audio(client: AsyncClient, args: argparse.Namespace, _: Output) -> Report:
    results = await client.classify_audio(_files(args), top_k=args.top_k, model=args.model)
    return Report(results_data(results), labelled(args.files, map(label_lines, results)))


async def speak(client: AsyncClient, args: argparse.Namespace, _: Output) -> Report:
    speech = await client.synthesize_speech(
        args.text, voice=args.voice, seed=args.seed, model=args.model
    )
    args.output.write_bytes(speech.audio)
    written = {
        "path": str(args.output),
        "sample_rate": speech.sample_rate,
        "num_samples": speech.num_samples,
        "duration_s": speech.duration_s,
        "format": speech.format,
    }
    line = f"wrote {args.output} ({speech.duration_s:.2f} s at {speech.sample_rate} Hz)"
    return Report(results_data([written], speech.request_id), [line])


def _files(args: argparse.Namespace) -> list[Path]:
    # Paths go to the SDK, which reads them off the event loop; a missing one is
    # refused here first so the message names the file, not an argument index.
    for path in args.files:
        if not path.is_file():
            raise ValueError(f"no such file: {path}")
    return list(args.files)


def add_media_commands(subparsers: Subparsers) -> None:
    p = command(subparsers, "classify-image", "classify image files", classify_image)
    p.add_argument("files", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument("--top-k", type=int)

    p = command(subparsers, "detect", "detect objects in image files", detect)
    p.add_argument("files", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument("--threshold", type=float, help="minimum score (default 0.5)")

    p = command(subparsers, "caption", "caption image files (image-to-text)", caption)
    p.add_argument("files", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument("--prompt", help="text the captions start from (conditional captioning)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--num-beams", type=int, help="beam search with this many beams")
    p.add_argument("--temperature", type=float, help="sample at this temperature (0: greedy)")
    p.add_argument("--seed", type=int, help="sampling seed, for reproducible captions")

    p = command(subparsers, "transcribe", "transcribe audio files", transcribe)
    p.add_argument("files", nargs="+", type=Path, metavar="AUDIO")
    p.add_argument("--timestamps", choices=["segment", "word", "char"])
    p.add_argument("--language")
    p.add_argument(
        "--chunk-length-s",
        type=float,
        metavar="SECONDS",
        help="transcribe long clips in chunks of this length (default: the model's window)",
    )

    p = command(subparsers, "classify-audio", "classify audio files", classify_audio)
    p.add_argument("files", nargs="+", type=Path, metavar="AUDIO")
    p.add_argument("--top-k", type=int)

    p = command(subparsers, "speak", "synthesize speech into a WAV file", speak)
    p.add_argument("text", help='what to say ("-": standard input)')
    p.add_argument("--output", "-o", type=Path, required=True, help="the WAV file to write")
    p.add_argument("--voice", help="a speaker id of a multi-speaker model")
    p.add_argument("--seed", type=int)


# --- models and health -----------------------------------------------------------


async def models(client: AsyncClient, args: argparse.Namespace, _: Output) -> Report:
    found = await client.list_models(args.task)
    header = ["NAME", "TASK", "STATE", "DEFAULT"]
    rows = [[m.name, m.task, m.state, "yes" if m.default_for_task else ""] for m in found]
    if any(m.failure_message for m in found):
        header.append("FAILURE")
        for row, m in zip(rows, found, strict=True):
            row.append(" ".join(m.failure_message.split()))
    return Report(results_data(found), table(header, rows))


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned columns under a header row, as ``docker ps`` prints them."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


async def health(client: AsyncClient, args: argparse.Namespace, _: Output) -> Report:
    status = await client.health(args.service)
    # Scripts test the exit code: only SERVING is healthy.
    data = results_data([{"service": args.service, "status": status}])  # no request id
    return Report(data, [status], exit_code=0 if status == "SERVING" else 1)


def add_admin_commands(subparsers: Subparsers) -> None:
    p = add_parser(subparsers, "models", "list the server's models")
    p.add_argument("--task", help="only this task's models")
    p.set_defaults(handler=models)

    p = add_parser(subparsers, "health", "the server's health (exit 1 unless SERVING)")
    p.add_argument(
        "--service",
        default="modelwire.v1.InferenceService",
        help='the health service to check ("" = the process is live)',
    )
    p.set_defaults(handler=health)
