"""`memefly generate`: memes for local images or template names, printed or as JSON."""

from __future__ import annotations

import json
from pathlib import Path

from memefly.cli.common import CommandError, quiet_tensorflow, with_built_models
from memefly.cli.decoding_flags import add_decoding_flags, decoding_options

EXAMPLES = """examples:
  memefly generate cat.jpg                       # five memes for the template the image shows
  memefly generate shots/*.png --n 3 --json      # JSON, one object per image
  memefly generate --template "Drake Hotline Bling" --template Grumpy-Cat
  memefly generate cat.jpg --sample --temperature 0.9 --seed 7

With no exported models, the first run builds them from the shipped default model
(like `memefly serve`); offline: MEMEFLY_ENCODER_WEIGHTS=random."""


def add_to(sub, formatter) -> None:
    gen = sub.add_parser(
        "generate",
        help="memes for local images, no server needed",
        epilog=EXAMPLES,
        formatter_class=formatter,
        description="Memes for each --template, then for each image, in the order given. "
        "Exit code 1 if any input failed (its error is printed in its place).",
    )
    gen.add_argument("images", nargs="*", help="image files (JPEG, PNG, GIF, BMP, WebP)")
    gen.add_argument("--template", action="append", default=[], help="a template name instead of an image (repeatable)")
    add_decoding_flags(gen)
    gen.add_argument("--models-dir", type=Path, help="exported models (default: $MEMEFLY_MODELS_DIR or models/)")
    gen.add_argument("--json", action="store_true", help="JSON: one object per input, as POST /memes answers")
    gen.set_defaults(func=run)


def run(args) -> int:
    quiet_tensorflow()
    import asyncio

    from gateway.api.schemas import BatchItemError
    from gateway.errors import GatewayError
    from gateway.pipeline import Item, ItemResult, MemePipeline
    from gateway.settings import Settings

    if not args.images and not args.template:
        raise CommandError("give one or more images, or --template NAME")
    # One slot per input, in order: an Item to generate for, or already an error (unreadable file).
    slots: list[Item | ItemResult] = [Item(name, template=name) for name in args.template]
    for path in args.images:
        try:
            slots.append(Item(path, image=Path(path).read_bytes()))
        except OSError as e:  # this input's error; the others still get memes
            slots.append(ItemResult(path, error=BatchItemError(status=400, detail=f"cannot read it: {e.strerror}")))
    items = [slot for slot in slots if isinstance(slot, Item)]
    try:
        options = decoding_options(args)
        if not items:  # nothing readable: no models needed to say so
            return _print_results(slots, args.json)
        settings = with_built_models(Settings.from_env(backend="inprocess", models_dir=args.models_dir))
    except ValueError as e:  # bad options (pydantic's message) or bad settings; a failed build says so itself
        raise CommandError(str(e)) from e

    async def run():
        async with MemePipeline(settings=settings) as client:
            return await client.generate(items, options)

    try:
        generated = iter(asyncio.run(run()))
    except GatewayError as e:
        raise CommandError(e.logged) from e
    return _print_results([next(generated) if isinstance(slot, Item) else slot for slot in slots], args.json)


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
