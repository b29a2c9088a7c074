"""The `memefly` command. Subcommands import their modules only when run, so the CLI starts fast."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from memefly import contract, paths

EXAMPLES = {
    "data prepare": """examples:
  memefly data prepare                          # ImgFlip575K from $MEMEFLY_DATASET_DIR
  memefly data prepare --dataset my_memes.csv --out data/mine""",
    "train": """examples:
  memefly train --run runs/small --max-minutes 30
  memefly train --run runs/small                # again after an interruption: resumes
  memefly train --run runs/tiny --max-train-captions 2000 --epochs 2 --hidden-dim 64""",
    "evaluate": """examples:
  memefly evaluate runs/small
  memefly evaluate runs/small --per-template 10 --json""",
    "export": """examples:
  memefly export --run runs/small --version 1                     # ImageNet weights (downloads)
  memefly export --run runs/small --version 1 --weights random --seed 0   # offline
  memefly export --run runs/small --version 2 --weights ~/inception_v3_notop.h5 --models-dir /srv/models
  memefly export --default-model --download-templates --templates-dir data/templates --version 1   # a fresh clone""",
    "data download": """examples:
  memefly data download                         # the template images, into $MEMEFLY_TEMPLATES_DIR
  memefly data download --to ~/memefly/templates
  MEMEFLY_TEMPLATES_URL=https://mirror.example/templates/ memefly data download""",
    "generate": """examples:
  memefly generate cat.jpg                       # five memes for the template the image shows
  memefly generate shots/*.png --n 3 --json      # JSON, one object per image
  memefly generate --template "Drake Hotline Bling" --template Grumpy-Cat
  memefly generate cat.jpg --sample --temperature 0.9 --seed 7

With no exported models, the first run builds them from the shipped default model
(like `memefly serve`); offline: MEMEFLY_ENCODER_WEIGHTS=random.""",
    "batch": """examples:
  memefly batch photos/ --out results.jsonl                       # in-process models (models/)
  memefly batch 'shots/**/*.png' --list more.txt --out results.jsonl --render memes/
  memefly batch photos/ --out results.jsonl --encoder tfs:8500 --decoder tfs:8510 --concurrency 256
  memefly batch photos/ --out results.jsonl                       # again: carries on, skips the done

One JSON line per image: path, sha256, memes and template guesses, or the image's error.
Ctrl-C stops cleanly; the same command carries on. Exit code 1 if any image failed.""",
    "serve": """examples:
  memefly serve                                  # models/ in-process on http://127.0.0.1:8000
  memefly serve --backend grpc --encoder-target localhost:8500 --decoder-target localhost:8510
  MEMEFLY_BACKEND=grpc memefly serve --host 0.0.0.0   # every flag has a MEMEFLY_* variable (README)
  MEMEFLY_ENCODER_WEIGHTS=random memefly serve   # offline first run: seeded InceptionV3 weights

In-process, with no exported models in the models folder, the first run builds them from
the shipped default model (downloading the template images if they are missing); later
runs reuse them, and rebuild when the default model or MEMEFLY_ENCODER_WEIGHTS changes.""",
}


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _cmd_data_prepare(args) -> int:
    from model_export.datasets import DataSourceError
    from model_export.prepare import format_report, prepare

    try:
        report = prepare(args.dataset, args.out, progress=not args.quiet)
    except DataSourceError as e:
        raise CommandError(str(e)) from e
    print(format_report(report))
    print(f"wrote {args.out}/captions.jsonl, templates.json, report.json")
    return 0


def _cmd_data_download(args) -> int:
    from model_export.download import DownloadError, download_templates

    try:
        report = download_templates(Path(args.to), args.url, progress=not args.quiet)
    except (DownloadError, OSError) as e:  # unreachable, a bad checksum, or a folder we cannot write
        raise CommandError(str(e)) from e
    print(
        f"template images in {report.folder}: {len(report.fetched)} downloaded "
        f"({report.bytes_fetched / 1e6:.1f} MB), {len(report.present)} already there and intact"
    )
    return 0


def _cmd_train(args) -> int:
    _quiet_tensorflow()
    from model_export.train import ModelConfig, RunCompleteError, TrainConfig, train

    prepared = Path(args.prepared)
    if not (prepared / "captions.jsonl").exists():
        raise CommandError(f"no prepared captions in {prepared}: run `memefly data prepare` first")
    config = TrainConfig(
        prepared=str(prepared),
        run=args.run,
        model=ModelConfig(args.embed_dim, args.context_dim, args.hidden_dim, args.dropout),
        vocab_min_count=args.vocab_min_count,
        vocab_max_size=args.vocab_max_size,
        max_len=args.max_len,
        batch_size=args.batch_size,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        validation_steps=args.validation_steps,
        learning_rate=args.learning_rate,
        patience=args.patience,
        mix_share=args.mix_share,
        exclude_offensive=args.exclude_offensive,
        max_train_captions=args.max_train_captions,
        max_minutes=args.max_minutes,
        lr_decay_patience=args.lr_decay_patience,
        init_from=args.init_from,
        seed=args.seed,
    )
    try:
        if args.tokenize_only or args.backend != "tensorflow":
            return _train_on_arrays(config, args.backend, args.tokenize_only)
        run = train(config, verbose=1 if sys.stdout.isatty() else 2)
    except (RunCompleteError, ValueError) as e:
        raise CommandError(str(e)) from e
    print(json.dumps(json.loads((run / "train_stats.json").read_text()), indent=1))
    print(f"run directory: {run}")
    return 0


def _train_on_arrays(config, backend: str, tokenize_only: bool) -> int:
    """Tokenize into RUN/tokens.npz here, then (unless tokenize_only) train with model_export.train_arrays
    under BACKEND in a fresh process: Keras picks its backend once, at import."""
    import os
    import subprocess

    from model_export.token_arrays import write_token_arrays

    path = write_token_arrays(config)
    print(f"wrote {path}")
    if tokenize_only:
        print(f"train it where the GPU is: KERAS_BACKEND=jax python -m model_export.train_arrays {config.run}")
        return 0
    env = {**os.environ, "KERAS_BACKEND": backend}
    return subprocess.call([sys.executable, "-m", "model_export.train_arrays", str(config.run)], env=env)


def _cmd_evaluate(args) -> int:
    _quiet_tensorflow()
    from gateway.rendering.layout import Layouts
    from memefly.decoding.options import DecodingOptions
    from model_export.evaluate import evaluate_run, format_metrics

    try:
        options = json.loads(args.options) if args.options else None
        DecodingOptions(**(options or {}))
    except (ValueError, TypeError) as e:
        raise CommandError(f"--options: {e}") from e
    metrics = evaluate_run(
        args.run,
        prepared=args.prepared,
        per_template=args.per_template,
        max_test=args.max_test,
        seed=args.seed,
        panels=Layouts.shipped().panels,
        options=options,
    )
    print(json.dumps(metrics, indent=1) if args.json else format_metrics(metrics))
    return 0


def _cmd_export(args) -> int:
    _quiet_tensorflow()
    from model_export.export import ExportConfig, ExportError, export

    run = paths.shipped_model() if args.default_model else Path(args.run)
    if args.download_templates:
        from model_export.download import DownloadError, download_templates
        from model_export.run_dir import read_template_names

        try:
            download_templates(Path(args.templates_dir), paths.templates_url(), read_template_names(run), progress=True)
        except (DownloadError, OSError, ValueError) as e:  # unreachable, bad checksum, no run, unwritable
            raise CommandError(f"template images for {run}: {e}") from e
    config = ExportConfig(
        run=run,
        models_dir=args.models_dir,
        version=args.version,
        weights=args.weights,
        seed=args.seed,
        templates_dir=args.templates_dir,
        overwrite=args.overwrite,
        fit_views=args.fit_views,
        non_template_views=args.non_template_views,
        top_k=args.top_k,
    )
    try:
        summary = export(config)
    except (ExportError, FileNotFoundError, RuntimeError) as e:
        raise CommandError(str(e)) from e
    print(f"export log: {summary['log']}")
    return 0


def _cmd_serve(args) -> int:
    _quiet_tensorflow()
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
        from model_export.first_run import BuildError

        try:
            settings = _with_built_models(settings)
        except BuildError as e:  # it says which setting to point where
            raise CommandError(str(e)) from e
    from gateway.errors import WrongTarget
    from gateway.workers import serve

    try:
        return serve(settings, args.host, args.port, args.log_level)
    except WrongTarget as e:  # a swapped or misnamed target: waiting would not mend it
        raise CommandError(e.logged) from e


def _cmd_loopback(args) -> int:
    _quiet_tensorflow()
    from model_export.loopback_serving import main as loopback

    models = args.models_dir or str(paths.models_dir())
    return loopback(["--models-dir", models, "--host", args.host, "--port", str(args.port)])


def _with_built_models(settings):
    """In-process settings pinned to a served pair: the exported one, or one built now from
    the default model (model_export.first_run). Raises first_run.BuildError."""
    from dataclasses import replace

    from model_export.first_run import BuildSettings, ensure_models

    version = ensure_models(BuildSettings(models_dir=Path(settings.models_dir)))
    return settings if settings.model_version is not None else replace(settings, model_version=version)


def _cmd_generate(args) -> int:
    _quiet_tensorflow()
    import asyncio

    from gateway.api.schemas import BatchItemError
    from gateway.errors import GatewayError
    from gateway.pipeline import Item, ItemResult, MemePipeline
    from gateway.settings import Settings
    from model_export.first_run import BuildError

    if not args.images and not args.template:
        raise CommandError("give one or more images, or --template NAME")
    # One slot per input, in order: an Item to generate for, or already an error (unreadable file).
    slots = [Item(name, template=name) for name in args.template]
    for path in args.images:
        try:
            slots.append(Item(path, image=Path(path).read_bytes()))
        except OSError as e:  # this input's error; the others still get memes
            slots.append(ItemResult(path, error=BatchItemError(status=400, detail=f"cannot read it: {e.strerror}")))
    items = [slot for slot in slots if isinstance(slot, Item)]
    try:
        options = _decoding_options(args)
        if not items:  # nothing readable: no models needed to say so
            return _print_results(slots, args.json)
        settings = _with_built_models(Settings.from_env(backend="inprocess", models_dir=args.models_dir))
    except (ValueError, BuildError) as e:  # bad options (pydantic's message), bad settings, or a failed build
        raise CommandError(str(e)) from e

    async def run():
        async with MemePipeline(settings=settings) as client:
            return await client.generate(items, options)

    try:
        generated = iter(asyncio.run(run()))
    except GatewayError as e:
        raise CommandError(e.logged) from e
    return _print_results([next(generated) if isinstance(slot, Item) else slot for slot in slots], args.json)


def _cmd_batch(args) -> int:
    _quiet_tensorflow()
    import asyncio

    from tqdm import tqdm

    from gateway.errors import GatewayError
    from gateway.pipeline import MemePipeline, client_settings
    from gateway.rendering.renderer import Renderer
    from gateway.settings import Settings
    from memefly.batch import BatchSummary, RenderTo, run_batch
    from memefly.batch_inputs import InputError, expand
    from memefly.batch_results import ResultsFile

    if not args.inputs and not args.list:
        raise CommandError("give images, folders or globs, or --list FILE")
    if bool(args.encoder) != bool(args.decoder):
        raise CommandError("TF Serving needs both --encoder HOST:PORT and --decoder HOST:PORT")
    if args.concurrency < 1 or args.batch_size < 1 or args.render_count < 1:
        raise CommandError("--concurrency, --batch-size and --render-count must be at least 1")
    try:
        paths = list(expand(args.inputs, args.list, args.ext.split(",")))
        options = _decoding_options(args)
        settings = client_settings(
            args.encoder,
            args.decoder,
            models_dir=args.models,
            settings=Settings.from_env(),
            model_version=args.model_version,
            encoder_max_batch=args.batch_size,
        )
    except (InputError, ValueError) as e:
        raise CommandError(str(e)) from e
    if settings.backend == "inprocess":  # (over gRPC nothing here imports TensorFlow)
        from model_export.first_run import BuildError

        try:
            settings = _with_built_models(settings)
        except BuildError as e:
            raise CommandError(str(e)) from e
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


def _decoding_options(args):
    """--n, --beams, --sample, --temperature, --seed, --unsafe, --allow-training-captions as DecodingOptions,
    the API's defaults where no flag says otherwise (ValueError if inconsistent)."""
    from memefly.decoding.options import DecodingOptions

    if args.beams is not None and (args.sample or args.temperature is not None or args.seed is not None):
        raise ValueError("--beams is beam search: --sample, --temperature and --seed are for sampling")
    fields = {
        "num_return_sequences": args.n,
        "safe": not args.unsafe,
        "allow_training_captions": args.allow_training_captions,
    }
    if args.beams is not None:
        fields["num_beams"] = max(args.beams, args.n)
    if args.sample:
        fields["do_sample"] = True
    fields |= {name: getattr(args, name) for name in ("temperature", "seed") if getattr(args, name) is not None}
    return DecodingOptions(**fields)


def _add_decoding_flags(parser) -> None:
    parser.add_argument("--n", type=int, default=5, help="memes per image (default: %(default)s)")
    parser.add_argument(
        "--beams",
        type=int,
        help="beam search with this width, at least --n (default: the API's "
        "default strategy: sampled candidates, the best distinct ones kept)",
    )
    parser.add_argument(
        "--sample", action="store_true", help="plain sampling: --n samples, no candidates to choose from"
    )
    parser.add_argument("--temperature", type=float, help="sampling creativity (default: 0.8; 1.0 with --sample)")
    parser.add_argument(
        "--seed", type=int, help="the same seed, the same memes (default: seeded by the image; random with --sample)"
    )
    parser.add_argument("--unsafe", action="store_true", help="allow words the offensive-word list flags")
    parser.add_argument(
        "--allow-training-captions", action="store_true", help="may return a caption of the training data verbatim"
    )


def _print_results(results, as_json: bool) -> int:
    if as_json:
        print(json.dumps([r.to_json() for r in results], indent=1, ensure_ascii=False))
    else:
        print("\n\n".join(_pretty(r) for r in results))
    return 1 if any(r.error for r in results) else 0


def _pretty(result) -> str:
    if result.error is not None:
        return f"{result.label}: error {result.error.status}: {result.error.detail}"
    guesses = ", ".join(f"{t.name} {t.probability:.0%}" for t in result.response.templates)
    unknown = "not a known template; in the style of: " if result.response.template.known is False else ""
    lines = [f"{result.label}  ({unknown}{guesses})"]
    for meme in result.response.memes:
        lines.append(f"  {meme.rank}. " + " / ".join(box.upper() for box in meme.boxes))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="memefly", description="Memefly: image in, meme text out.")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser(
        "data",
        help="prepare caption data; download template images",
        formatter_class=formatter,
        epilog="examples:\n  memefly data prepare --help\n  memefly data download --help",
    )
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser(
        "prepare", help="read, clean and split captions", epilog=EXAMPLES["data prepare"], formatter_class=formatter
    )
    prep.add_argument(
        "--dataset",
        default=str(paths.dataset_dir()),
        help="ImgFlip575K folder, or a .csv/.jsonl caption file (default: $MEMEFLY_DATASET_DIR or %(default)s)",
    )
    prep.add_argument("--out", default=str(paths.prepared_dir()), help="output folder (default: %(default)s)")
    prep.add_argument("--quiet", action="store_true", help="no progress bars")
    prep.set_defaults(func=_cmd_data_prepare)
    dl = data_sub.add_parser(
        "download",
        help="fetch the template images (resumable, checksummed)",
        epilog=EXAMPLES["data download"],
        formatter_class=formatter,
    )
    dl.add_argument(
        "--to",
        default=str(paths.templates_download_dir()),
        help="folder for <Name>.jpg|png (default: $MEMEFLY_TEMPLATES_DIR or %(default)s)",
    )
    dl.add_argument(
        "--url",
        default=paths.templates_url(),
        help="where the images are (default: $MEMEFLY_TEMPLATES_URL or %(default)s)",
    )
    dl.add_argument("--quiet", action="store_true", help="no progress bar")
    dl.set_defaults(func=_cmd_data_download)

    tr = sub.add_parser("train", help="train the caption decoder", epilog=EXAMPLES["train"], formatter_class=formatter)
    tr.add_argument("--run", default=str(paths.runs_dir() / "default"), help="run directory (default: %(default)s)")
    tr.add_argument("--prepared", default=str(paths.prepared_dir()), help="prepared captions (default: %(default)s)")
    tr.add_argument("--embed-dim", type=int, default=128)
    tr.add_argument("--context-dim", type=int, default=64)
    tr.add_argument("--hidden-dim", type=int, default=256)
    tr.add_argument("--dropout", type=float, default=0.1)
    tr.add_argument("--vocab-min-count", type=int, default=5)
    tr.add_argument("--vocab-max-size", type=int, default=12000)
    tr.add_argument("--max-len", type=int, default=40, help="caption tokens kept (default: %(default)s)")
    tr.add_argument("--batch-size", type=int, default=128)
    tr.add_argument("--epochs", type=int, default=20)
    tr.add_argument("--steps-per-epoch", type=int, help="default: one pass over the training split")
    tr.add_argument("--validation-steps", type=int, help="default: the whole validation split")
    tr.add_argument("--learning-rate", type=float, default=2e-3)
    tr.add_argument("--patience", type=int, default=3, help="early stopping on validation loss")
    tr.add_argument("--mix-share", type=float, default=0.3, help="share of soft template mixtures")
    tr.add_argument("--exclude-offensive", action="store_true", help="train without flagged captions")
    tr.add_argument("--max-train-captions", type=int, help="a seeded subset, for quick runs")
    tr.add_argument("--max-minutes", type=float, help="stop training after this many minutes")
    tr.add_argument(
        "--lr-decay-patience",
        type=int,
        default=1,
        help="halve the learning rate after this many epochs without a better validation loss (0: off)",
    )
    tr.add_argument(
        "--backend",
        choices=["tensorflow", "jax", "torch"],
        default="tensorflow",
        help="Keras backend to train with; jax/torch tokenize into RUN/tokens.npz first, then train from "
        "the arrays (model_export.train_arrays) (default: %(default)s)",
    )
    tr.add_argument(
        "--tokenize-only",
        action="store_true",
        help="only write RUN/tokens.npz, to train on another machine (docs/training.md: the GPU path)",
    )
    tr.add_argument(
        "--init-from",
        metavar="RUN",
        help="start from this trained run's weights (same vocabulary and templates), e.g. the shipped default",
    )
    tr.add_argument("--seed", type=int, default=0)
    tr.set_defaults(func=_cmd_train)

    ev = sub.add_parser(
        "evaluate", help="quality metrics on the test split", epilog=EXAMPLES["evaluate"], formatter_class=formatter
    )
    ev.add_argument("run", help="run directory")
    ev.add_argument("--prepared", help="prepared captions (default: the run's own)")
    ev.add_argument("--per-template", type=int, default=20, help="captions per template for recognition")
    ev.add_argument("--max-test", type=int, help="cap on test captions for perplexity (default: all)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--json", action="store_true", help="print metrics as JSON")
    ev.add_argument(
        "--options",
        metavar="JSON",
        help="decoding options for the generated captions, as POST /memes "
        "takes them (default: its defaults), e.g. '{\"num_beams\": 5}'",
    )
    ev.set_defaults(func=_cmd_evaluate)

    ex = sub.add_parser(
        "export", help="write the TF Serving SavedModels", epilog=EXAMPLES["export"], formatter_class=formatter
    )
    which = ex.add_mutually_exclusive_group()
    which.add_argument("--run", default=str(paths.runs_dir() / "default"), help="training run (default: %(default)s)")
    which.add_argument(
        "--default-model",
        action="store_true",
        help="the default model shipped with memefly (what `memefly serve` builds from) instead of a run",
    )
    ex.add_argument("--models-dir", default=str(paths.models_dir()), help="model root (default: %(default)s)")
    ex.add_argument("--version", type=int, required=True, help="version number of both models")
    ex.add_argument(
        "--weights", default="imagenet", help="InceptionV3 weights: imagenet, a no-top weights file, or random"
    )
    ex.add_argument("--seed", type=int, default=0, help="seed for random weights and the augmented views")
    ex.add_argument(
        "--templates-dir",
        default=str(paths.templates_dir()),
        help="template images, <Name>.jpg|png (default: $MEMEFLY_TEMPLATES_DIR or %(default)s)",
    )
    ex.add_argument(
        "--download-templates",
        action="store_true",
        help="first fetch the template images that --templates-dir lacks (checked against their checksums; "
        "from $MEMEFLY_TEMPLATES_URL or the public ImgFlip575K repository)",
    )
    ex.add_argument("--fit-views", type=int, default=20, help="views per template to fit the template head")
    ex.add_argument(
        "--non-template-views",
        type=int,
        default=120,
        help="generated images that are no template, to choose the known-template threshold on "
        "(as many again to check it)",
    )
    ex.add_argument(
        "--top-k", type=int, default=contract.TOP_K, help="candidates per decoder step (default: %(default)s)"
    )
    ex.add_argument("--overwrite", action="store_true", help="replace an existing version")
    ex.set_defaults(func=_cmd_export)

    sv = sub.add_parser(
        "serve", help="run the HTTP gateway (POST /memes)", epilog=EXAMPLES["serve"], formatter_class=formatter
    )
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
    sv.set_defaults(func=_cmd_serve)

    lb = sub.add_parser(
        "loopback",
        help="serve exported models over TF Serving's gRPC API, in Python (a local TF Serving, no Docker)",
        description="For `memefly serve --backend grpc` without Docker: both models on one port "
        "(point MEMEFLY_ENCODER_TARGET and MEMEFLY_DECODER_TARGET at it). Not for production: no batching.",
        formatter_class=formatter,
    )
    lb.add_argument("--models-dir", help="exported models (default: $MEMEFLY_MODELS_DIR or models/)")
    lb.add_argument("--host", default="127.0.0.1", help="(default: %(default)s)")
    lb.add_argument("--port", type=int, default=8500, help="0 picks a free port (default: %(default)s)")
    lb.set_defaults(func=_cmd_loopback)

    gen = sub.add_parser(
        "generate",
        help="memes for local images, no server needed",
        epilog=EXAMPLES["generate"],
        formatter_class=formatter,
        description="Memes for each --template, then for each image, in the order given. "
        "Exit code 1 if any input failed (its error is printed in its place).",
    )
    gen.add_argument("images", nargs="*", help="image files (JPEG, PNG, GIF, BMP, WebP)")
    gen.add_argument("--template", action="append", default=[], help="a template name instead of an image (repeatable)")
    _add_decoding_flags(gen)
    gen.add_argument("--models-dir", type=Path, help="exported models (default: $MEMEFLY_MODELS_DIR or models/)")
    gen.add_argument("--json", action="store_true", help="JSON: one object per input, as POST /memes answers")
    gen.set_defaults(func=_cmd_generate)

    bt = sub.add_parser(
        "batch",
        help="memes for many images into a resumable JSONL file",
        epilog=EXAMPLES["batch"],
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
        "--models",
        type=Path,
        metavar="DIR",
        help="in-process: exported models (default: $MEMEFLY_MODELS_DIR or models/)",
    )
    bt.add_argument("--model-version", type=int, help="pin this version of both models (default: the newest)")
    bt.add_argument("--concurrency", type=int, default=64, help="images in flight (default: %(default)s)")
    bt.add_argument("--batch-size", type=int, default=32, help="most images per encoder call (default: %(default)s)")
    _add_decoding_flags(bt)
    bt.add_argument("--render", metavar="DIR", help="also write the memes drawn on the images into DIR")
    bt.add_argument("--render-format", choices=["png", "jpeg", "webp"], default="png", help="(default: %(default)s)")
    bt.add_argument("--render-count", type=int, default=1, help="the best N memes of each image (default: %(default)s)")
    bt.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it is off anyway when not on a terminal)"
    )
    bt.set_defaults(func=_cmd_batch)
    return parser


class CommandError(Exception):
    """What a command says when it cannot do its job (bad arguments, missing data, models not
    found): `memefly` prints it after "error: " and exits with 2, never a traceback."""


# Modules only the [train] extra installs; anything else missing means [serve] is not installed.
_TRAIN_ONLY = {"tensorflow", "tensorflow_serving", "keras", "tensorboard", "py3langid"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except CommandError as error:  # the one way a command fails for its user: exit code 2
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run(args) -> int:
    try:
        return args.func(args)
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


if __name__ == "__main__":
    sys.exit(main())
