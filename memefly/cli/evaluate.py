"""`memefly evaluate`: quality metrics of a run on the test split."""

from __future__ import annotations

import json

from memefly.cli.common import CommandError, quiet_tensorflow

EXAMPLES = """examples:
  memefly evaluate runs/small
  memefly evaluate runs/small --per-template 10 --json"""


def add_to(sub, formatter) -> None:
    ev = sub.add_parser(
        "evaluate", help="quality metrics on the test split", epilog=EXAMPLES, formatter_class=formatter
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
    ev.set_defaults(func=run)


def run(args) -> int:
    quiet_tensorflow()
    from gateway.rendering.layout import Layouts
    from memefly.decoding.options import DecodingOptions
    from model_export.evaluate import evaluate_run, format_metrics

    try:
        options = json.loads(args.options) if args.options else None
        DecodingOptions(**(options or {}))
    except (ValueError, TypeError) as e:
        raise CommandError(f"--options: {e}") from e
    try:
        metrics = evaluate_run(
            args.run,
            prepared=args.prepared,
            per_template=args.per_template,
            max_test=args.max_test,
            seed=args.seed,
            panels=Layouts.shipped().panels,
            options=options,
        )
    except FileNotFoundError as e:  # no trained run there, or its prepared captions are gone
        raise CommandError(str(e)) from e
    print(json.dumps(metrics, indent=1) if args.json else format_metrics(metrics))
    return 0
