"""`memefly loopback`: exported models over TF Serving's gRPC API, in Python, for a local gRPC setup."""

from __future__ import annotations

from pathlib import Path

from memefly import paths
from memefly.cli.common import CommandError, quiet_tensorflow

EXAMPLES = """examples:
  memefly loopback                               # models/ on localhost:8500
  memefly loopback --models-dir /srv/models --port 9000
  MEMEFLY_BACKEND=grpc MEMEFLY_ENCODER_TARGET=localhost:8500 MEMEFLY_DECODER_TARGET=localhost:8500 memefly serve"""


def add_to(sub, formatter) -> None:
    lb = sub.add_parser(
        "loopback",
        help="serve exported models over TF Serving's gRPC API, in Python (a local TF Serving, no Docker)",
        description="For `memefly serve --backend grpc` without Docker: both models on one port "
        "(point MEMEFLY_ENCODER_TARGET and MEMEFLY_DECODER_TARGET at it). Not for production: no batching.",
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    lb.add_argument("--models-dir", help="exported models (default: $MEMEFLY_MODELS_DIR or models/)")
    lb.add_argument("--host", default="127.0.0.1", help="(default: %(default)s)")
    lb.add_argument("--port", type=int, default=8500, help="0 picks a free port (default: %(default)s)")
    lb.set_defaults(func=run)


def run(args) -> int:
    quiet_tensorflow()
    from model_export.loopback_serving import main as loopback

    models = args.models_dir or str(paths.models_dir())
    if not Path(models).is_dir():
        raise CommandError(f"no exported models in {models}: `memefly export` writes them, `memefly serve` builds some")
    try:
        return loopback(["--models-dir", models, "--host", args.host, "--port", str(args.port)])
    except FileNotFoundError as error:  # a model or version missing in the folder
        raise CommandError(str(error)) from error
