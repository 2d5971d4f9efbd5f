"""The command line: one module per subcommand, each mapping flags onto the library and calling it.

A mistake of the user's (a missing file, a bad flag, a broken dataset line) prints one line,
``lorakit: error: ...``, and exits with code 2; ``--debug`` shows the traceback instead.

This layer, and only this layer, may change the process: it seeds the global RNG where a command samples, and tunes
glibc's allocator around a training run (``lorakit.cli.process``; ``LORAKIT_TUNE_MALLOC=0`` turns that off).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lorakit._version import __version__
from lorakit.cli import chat, combine, compare, demo, export, merge, plan, serve, train
from lorakit.cli import eval as eval_command
from lorakit.cli import generate as generate_command
from lorakit.cli.common import Parser, explain_defaults
from lorakit.errors import LorakitError

EXIT_USER_ERROR = 2
SUBCOMMANDS = (train, eval_command, generate_command, chat, merge, export, plan, compare, combine, demo, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lorakit", description="LoRA fine-tuning with peft-format adapters.")
    parser.add_argument("--version", action="version", version=f"lorakit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    for command in sub.choices.values():  # --debug also after the subcommand
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        explain_defaults(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except LorakitError as err:
        if debug:
            raise
        print(f"lorakit: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("lorakit: interrupted", file=sys.stderr)
        return 130
