"""`memefly batch`: memes for many images into a resumable JSON Lines file."""

from __future__ import annotations

import sys
from pathlib import Path

from memefly.cli.common import CommandError, quiet_tensorflow, with_built_models
from memefly.cli.decoding_flags import add_decoding_flags, decoding_options

EXAMPLES = """examples:
  memefly batch photos/ --out results.jsonl                       # in-process models (models/)
  memefly batch 'shots/**/*.png' --list more.txt --out results.jsonl --render memes/
  memefly batch photos/ --out results.jsonl --encoder tfs:8500 --decoder tfs:8510 --concurrency 256
  memefly batch photos/ --out results.jsonl                       # again: carries on, skips the done

One JSON line per image: path, sha256, memes and template guesses, or the image's error.
Ctrl-C stops cleanly; the same command carries on. Exit code 1 if any image failed."""


def add_to(sub, formatter) -> None:
    bt = sub.add_parser(
        "batch",
        help="memes for many images into a resumable JSONL file",
        epilog=EXAMPLES,
        formatter_class=formatter,
        description="Memes for every image given, straight from the models (TF Serving over gRPC, "
        "or in-process): images batched into encoder calls, beams into decoder calls.",
    )
    bt.add_argument("inputs", nargs="*", help="image files, folders (recursive) or globs ('**' works)")
    bt.add_argument(
        "--list",
        action="append",
        default=[],
        metavar="FILE",
        help="a text file of paths (or folders, globs), one per line (repeatable)",
    )
    bt.add_argument("--out", required=True, help="the results file (JSON Lines); appended to, and resumed from")
    bt.add_argument(
        "--ext",
        default="jpg,jpeg,png,gif,bmp,webp",
        help="image extensions looked for in folders and globs (default: %(default)s)",
    )
    bt.add_argument("--encoder", metavar="HOST:PORT", help="the encoder's TF Serving (gRPC)")
    bt.add_argument("--decoder", metavar="HOST:PORT", help="the decoder's TF Serving (gRPC)")
    bt.add_argument(
        "--models-dir",
        "--models",  # its first name, still taken
        type=Path,
        metavar="DIR",
        help="in-process: exported models (default: $MEMEFLY_MODELS_DIR or models/)",
    )
    bt.add_argument("--model-version", type=int, help="pin this version of both models (default: the newest)")
    bt.add_argument("--concurrency", type=int, default=64, help="images in flight (default: %(default)s)")
    bt.add_argument("--batch-size", type=int, default=32, help="most images per encoder call (default: %(default)s)")
    add_decoding_flags(bt)
    bt.add_argument("--render", metavar="DIR", help="also write the memes drawn on the images into DIR")
    bt.add_argument("--render-format", choices=["png", "jpeg", "webp"], default="png", help="(default: %(default)s)")
    bt.add_argument("--render-count", type=int, default=1, help="the best N memes of each image (default: %(default)s)")
    bt.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it is off anyway when not on a terminal)"
    )
    bt.set_defaults(func=run)


def run(args) -> int:
    quiet_tensorflow()
    import asyncio

    from tqdm import tqdm

    from gateway.errors import GatewayError
    from gateway.pipeline import MemePipeline, client_settings
    from gateway.rendering.renderer import Renderer
    from gateway.settings import Settings
    from memefly.cli.batch_inputs import InputError, expand
    from memefly.cli.batch_results import ResultsFile
    from memefly.cli.batch_run import BatchSummary, RenderTo, run_batch

    if not args.inputs and not args.list:
        raise CommandError("give images, folders or globs, or --list FILE")
    if bool(args.encoder) != bool(args.decoder):
        raise CommandError("TF Serving needs both --encoder HOST:PORT and --decoder HOST:PORT")
    if args.concurrency < 1 or args.batch_size < 1 or args.render_count < 1:
        raise CommandError("--concurrency, --batch-size and --render-count must be at least 1")
    try:
        paths = list(expand(args.inputs, args.list, args.ext.split(",")))
        options = decoding_options(args)
        settings = client_settings(
            args.encoder,
            args.decoder,
            models_dir=args.models_dir,
            settings=Settings.from_env(),
            model_version=args.model_version,
            encoder_max_batch=args.batch_size,
        )
    except (InputError, ValueError) as e:
        raise CommandError(str(e)) from e
    if settings.backend == "inprocess":  # (over gRPC nothing here imports TensorFlow)
        settings = with_built_models(settings)
    render = None
    if args.render:
        render = RenderTo(
            Path(args.render),
            Renderer(cache_bytes=0, templates_dir=settings.templates_dir),
            args.render_format,
            args.render_count,
            settings.render_max_side,
            settings.render_jpeg_quality,
        )
    summary = BatchSummary(total=len(paths))

    async def run(results, progress):
        async with MemePipeline(settings=settings, max_in_flight=args.concurrency) as client:
            await run_batch(
                paths, results, client, options, summary, concurrency=args.concurrency, render=render, progress=progress
            )

    try:
        with (
            ResultsFile(Path(args.out)) as results,
            tqdm(
                total=len(paths),
                unit="img",
                disable=True if args.no_progress else None,
                dynamic_ncols=True,
                file=sys.stderr,
            ) as progress,
        ):
            if results.repaired_bytes:
                print(
                    f"{args.out}: dropped a cut-off last line ({results.repaired_bytes} bytes); "
                    "that image is done again",
                    file=sys.stderr,
                )
            asyncio.run(run(results, progress))
    except KeyboardInterrupt:
        print(
            f"interrupted: {summary.line()}; {args.out} holds whole lines only, and the same command carries on",
            file=sys.stderr,
        )
        return 130
    except ValueError as e:  # --out is some other file
        raise CommandError(str(e)) from e
    except GatewayError as e:  # the models never became ready (items' own errors are results)
        raise CommandError(e.logged) from e
    for path, why in summary.failed[:10]:
        print(f"failed: {path}: {why}", file=sys.stderr)
    print(summary.line(), file=sys.stderr)
    return 1 if summary.errors or summary.failed or summary.render_errors else 0
