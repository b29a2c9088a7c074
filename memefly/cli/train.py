"""`memefly train`: the caption decoder, with TensorFlow here or from token arrays under another Keras backend."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from memefly import paths
from memefly.cli.common import CommandError, quiet_tensorflow

EXAMPLES = """examples:
  memefly train --run runs/small --max-minutes 30
  memefly train --run runs/small                # again after an interruption: resumes
  memefly train --run runs/tiny --max-train-captions 2000 --epochs 2 --hidden-dim 64"""


def add_to(sub, formatter) -> None:
    tr = sub.add_parser("train", help="train the caption decoder", epilog=EXAMPLES, formatter_class=formatter)
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
    tr.set_defaults(func=run)


def run(args) -> int:
    quiet_tensorflow()
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
