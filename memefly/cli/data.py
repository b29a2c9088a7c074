"""`memefly data prepare` and `memefly data download`."""

from __future__ import annotations

from pathlib import Path

from memefly import paths
from memefly.cli.common import CommandError

PREPARE_EXAMPLES = """examples:
  memefly data prepare                          # ImgFlip575K from $MEMEFLY_DATASET_DIR
  memefly data prepare --dataset my_memes.csv --out data/mine"""
DOWNLOAD_EXAMPLES = """examples:
  memefly data download                         # the template images, into $MEMEFLY_TEMPLATES_DIR
  memefly data download --to ~/memefly/templates
  MEMEFLY_TEMPLATES_URL=https://mirror.example/templates/ memefly data download"""


def add_to(sub, formatter) -> None:
    data = sub.add_parser(
        "data",
        help="prepare caption data; download template images",
        formatter_class=formatter,
        epilog="examples:\n  memefly data prepare --help\n  memefly data download --help",
    )
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser(
        "prepare", help="read, clean and split captions", epilog=PREPARE_EXAMPLES, formatter_class=formatter
    )
    prep.add_argument(
        "--dataset",
        default=str(paths.dataset_dir()),
        help="ImgFlip575K folder, or a .csv/.jsonl caption file (default: $MEMEFLY_DATASET_DIR or %(default)s)",
    )
    prep.add_argument("--out", default=str(paths.prepared_dir()), help="output folder (default: %(default)s)")
    prep.add_argument("--quiet", action="store_true", help="no progress bars")
    prep.set_defaults(func=prepare)
    dl = data_sub.add_parser(
        "download",
        help="fetch the template images (resumable, checksummed)",
        epilog=DOWNLOAD_EXAMPLES,
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
    dl.set_defaults(func=download)


def prepare(args) -> int:
    from model_export.datasets import DataSourceError
    from model_export.prepare import format_report, prepare

    try:
        report = prepare(args.dataset, args.out, progress=not args.quiet)
    except DataSourceError as e:
        raise CommandError(str(e)) from e
    print(format_report(report))
    print(f"wrote {args.out}/captions.jsonl, templates.json, report.json")
    return 0


def download(args) -> int:
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
