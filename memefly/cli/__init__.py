"""The `memefly` command: one module per command (each adds its parser and runs it), one error
type (CommandError, exit code 2). Commands import what they need only when run, so `memefly
--help` starts fast and the light install needs no TensorFlow."""

from __future__ import annotations

import argparse
import sys

from memefly.cli import batch, data, evaluate, export, generate, loopback, serve, train
from memefly.cli.common import CommandError

# In the order `memefly --help` lists them.
COMMANDS = (data, train, evaluate, export, serve, loopback, generate, batch)

# Modules only the [train] extra installs; anything else missing means [serve] is not installed.
_TRAIN_ONLY = {"tensorflow", "tensorflow_serving", "keras", "tensorboard", "py3langid"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memefly", description="Memefly: image in, meme text out.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_to(sub, argparse.RawDescriptionHelpFormatter)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except CommandError as error:  # the one way a command fails for its user: exit code 2
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except ModuleNotFoundError as error:
        import importlib.util

        if (error.name or "").split(".")[0] in _TRAIN_ONLY:
            extra = "train"
        elif importlib.util.find_spec("fastapi") is None:
            extra = "serve"
        else:
            raise
        hint = " (or serve models from TF Serving: MEMEFLY_BACKEND=grpc)" if extra == "train" else ""
        raise CommandError(f"this command needs {error.name}: pip install 'memefly[{extra}]'{hint}") from None
