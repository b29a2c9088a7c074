"""`memefly export`: the two TF Serving SavedModels of a run (or of the shipped default model)."""

from __future__ import annotations

from pathlib import Path

from memefly import contract, paths
from memefly.cli.common import CommandError, quiet_tensorflow

EXAMPLES = """examples:
  memefly export --run runs/small --version 1                     # ImageNet weights (downloads)
  memefly export --run runs/small --version 1 --weights random --seed 0   # offline
  memefly export --run runs/small --version 2 --weights ~/inception_v3_notop.h5 --models-dir /srv/models
  memefly export --default-model --download-templates --templates-dir data/templates --version 1   # a fresh clone"""


def add_to(sub, formatter) -> None:
    ex = sub.add_parser("export", help="write the TF Serving SavedModels", epilog=EXAMPLES, formatter_class=formatter)
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
    ex.set_defaults(func=run)


def run(args) -> int:
    quiet_tensorflow()
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
