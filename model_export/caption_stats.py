"""What a run's decoder should know about its training captions, beyond the weights: the box
counts each template's real memes use, and the fingerprints of the training captions (so
the gateway can refuse to return one verbatim). Both travel in the exported decoder.

    python -m model_export.caption_stats RUN [--prepared DIR]   # add them to an older run
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from memefly.decoding.distinct import CaptionSet, caption_words
from model_export import run_dir as rd

MIN_SHARE = 0.10  # a box count at least this share of a template's training memes use is allowed


def allowed_box_counts(captions, names: list[str], min_share: float = MIN_SHARE) -> dict[str, list[int]]:
    """Template name -> the box counts (non-empty boxes) that at least MIN_SHARE of its training captions have."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for caption in captions:
        if caption.split == "train":
            counts[caption.template][len(caption_words(caption.boxes))] += 1
    allowed = {}
    for name in names:
        total = sum(counts[name].values())
        allowed[name] = sorted(n for n, k in counts[name].items() if n > 0 and k >= min_share * total) if total else []
    return allowed


def training_fingerprints(captions) -> np.ndarray:
    return CaptionSet.of_captions(c.boxes for c in captions if c.split == "train").fingerprints


def annotate(run: Path, captions) -> None:
    """Write both into RUN: box_counts in templates.json, the fingerprints beside it."""
    templates = json.loads((run / rd.TEMPLATES).read_text())
    allowed = allowed_box_counts(captions, [t["name"] for t in templates])
    for template in templates:
        template["box_counts"] = allowed[template["name"]]
    (run / rd.TEMPLATES).write_text(json.dumps(templates, indent=1, ensure_ascii=False))
    np.save(run / rd.TRAINING_CAPTIONS, training_fingerprints(captions))


def main(argv=None) -> None:
    from memefly import paths
    from model_export.prepare import load_captions

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--prepared", default=str(paths.prepared_dir()))
    args = parser.parse_args(argv)
    annotate(args.run, load_captions(args.prepared))
    print(f"{args.run}: box counts in {rd.TEMPLATES}, fingerprints in {rd.TRAINING_CAPTIONS}")


if __name__ == "__main__":
    main()
