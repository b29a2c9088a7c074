"""`memefly serve`: the HTTP gateway."""

from __future__ import annotations

from pathlib import Path

from memefly.cli.common import CommandError, quiet_tensorflow, with_built_models

EXAMPLES = """examples:
  memefly serve                                  # models/ in-process on http://127.0.0.1:8000
  memefly serve --backend grpc --encoder-target localhost:8500 --decoder-target localhost:8510
  MEMEFLY_BACKEND=grpc memefly serve --host 0.0.0.0   # every flag has a MEMEFLY_* variable (README)
  MEMEFLY_ENCODER_WEIGHTS=random memefly serve   # offline first run: seeded InceptionV3 weights

In-process, with no exported models in the models folder, the first run builds them from
the shipped default model (downloading the template images if they are missing); later
runs reuse them, and rebuild when the default model or MEMEFLY_ENCODER_WEIGHTS changes."""


def add_to(sub, formatter) -> None:
    sv = sub.add_parser("serve", help="run the HTTP gateway (POST /memes)", epilog=EXAMPLES, formatter_class=formatter)
    sv.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    sv.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    sv.add_argument("--backend", choices=["inprocess", "grpc"], help="default: $MEMEFLY_BACKEND or inprocess")
    sv.add_argument(
        "--models-dir", help="in-process backend: exported models (default: $MEMEFLY_MODELS_DIR or models/)"
    )
    sv.add_argument("--model-version", type=int, help="pin this version of both models (default: the newest)")
    sv.add_argument("--encoder-target", help="grpc backend: host:port of the encoder's TF Serving")
    sv.add_argument("--decoder-target", help="grpc backend: host:port of the decoder's TF Serving")
    sv.add_argument("--no-continuous-batching", action="store_true", help="one request's beams per decoder call")
    sv.add_argument("--workers", type=int, help="gateway processes on the port (default: $MEMEFLY_WORKERS or 1)")
    sv.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sv.set_defaults(func=run)


def run(args) -> int:
    quiet_tensorflow()
    from gateway.settings import Settings

    try:
        settings = Settings.from_env(
            backend=args.backend,
            models_dir=Path(args.models_dir) if args.models_dir else None,
            model_version=args.model_version,
            encoder_target=args.encoder_target,
            decoder_target=args.decoder_target,
            continuous_batching=False if args.no_continuous_batching else None,
            workers=args.workers,
        )
    except ValueError as e:
        raise CommandError(str(e)) from e
    from gateway import logs

    logs.configure(args.log_level)
    if settings.backend == "inprocess":
        settings = with_built_models(settings)
    from gateway.errors import WrongTarget
    from gateway.workers import serve

    try:
        return serve(settings, args.host, args.port, args.log_level)
    except WrongTarget as e:  # a swapped or misnamed target: waiting would not mend it
        raise CommandError(e.logged) from e
