"""The ``modelwire`` command: every task of a Modelwire server from the shell.

    modelwire classify "I love this!"
    modelwire classify - < reviews.txt      # "-": standard input, one input per line
    modelwire generate "Once upon a time" --max-new-tokens 40
    modelwire --json embed "a small red fox" | jq '.results[0].values | length'
    modelwire chat --system "You are terse."

The target and API key come from ``--target`` / ``--api-key`` or ``MODELWIRE_TARGET`` /
``MODELWIRE_API_KEY``. Errors are one line on stderr with the call's request id; the exit
code is 1 for a failed call and 2 for a usage error. Built on argparse and the SDK only.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from modelwire import __version__
from modelwire._cli_output import Output, Report
from modelwire._cli_stream import add_stream_commands
from modelwire._cli_tasks import (
    add_admin_commands,
    add_media_commands,
    add_text_commands,
    connection_flags,
    read_stdin,
)
from modelwire._client import AsyncClient
from modelwire._errors import ModelwireError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelwire", description="Call a Modelwire server's tasks from the command line."
    )
    parser.add_argument("--version", action="version", version=f"modelwire {__version__}")
    connection_flags(parser, defaults=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_stream_commands(subparsers)
    add_text_commands(subparsers)
    add_media_commands(subparsers)
    add_admin_commands(subparsers)
    return parser


async def _run(args: argparse.Namespace, output: Output) -> Report:
    async with AsyncClient(args.target, api_key=args.api_key, timeout=args.timeout) as client:
        return await args.handler(client, args, output)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits 2 on usage errors, 0 on --help
        return int(exit_.code or 0)
    output = Output(as_json=args.json)
    try:
        read_stdin(args, sys.stdin)
        report = asyncio.run(_run(args, output))
    except ValueError as error:  # the SDK checks arguments before sending anything
        output.error(error)
        return EXIT_USAGE
    except (ModelwireError, OSError) as error:
        output.error(error)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    output.report(report)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
