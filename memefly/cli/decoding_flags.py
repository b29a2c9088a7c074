"""The decoding flags of `memefly generate` and `memefly batch`, as the API's DecodingOptions."""

from __future__ import annotations


def add_decoding_flags(parser) -> None:
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


def decoding_options(args):
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
