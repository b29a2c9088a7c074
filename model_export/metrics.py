"""Quality metrics over any caption model that can score and generate (the decoder, baselines).

A model here is anything with
  score(sequences, template_ids) -> float64 [N]   total log-prob of each id sequence (ends
                                                  with <end>, no <start>) given a one-hot template
  generate(template_ids, n) -> list of n id lists per template (no <start>/<end>)
so the decoder and the n-gram baseline are measured by the very same code.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from memefly.captions import tokens_to_boxes
from memefly.contract import END_ID, SPECIAL_TOKENS, UNK_ID
from memefly.decoding.distinct import CaptionSet, caption_words, near_duplicate, repeats_a_box


class CaptionModel(Protocol):
    def score(self, sequences: list[np.ndarray], template_ids: np.ndarray) -> np.ndarray: ...

    def generate(self, template_ids: np.ndarray, n: int) -> list[list[list[int]]]: ...


def perplexity(model: CaptionModel, sequences, template_ids) -> float:
    total = model.score(sequences, np.asarray(template_ids))
    return float(np.exp(-total.sum() / sum(len(s) for s in sequences)))


def unk_rate(sequences) -> float:
    """Share of caption tokens (words, punctuation, <sep>; not <end>) the vocabulary lacks."""
    tokens = np.concatenate(sequences)
    tokens = tokens[tokens != END_ID]
    return float(np.mean(tokens == UNK_ID)) if tokens.size else 0.0


def wrong_templates(template_ids, num_templates: int, seed: int) -> np.ndarray:
    """A different template for every caption, chosen uniformly among the others."""
    if num_templates < 2:
        raise ValueError("a wrong template needs at least two templates")
    rng = np.random.default_rng(seed)
    offset = rng.integers(1, num_templates, size=len(template_ids))
    return (np.asarray(template_ids) + offset) % num_templates


def sample_per_template(template_ids, per_template: int, seed: int) -> np.ndarray:
    """Indices of at most `per_template` captions of each template (seeded)."""
    rng = np.random.default_rng(seed)
    template_ids = np.asarray(template_ids)
    chosen = []
    for t in np.unique(template_ids):
        idx = np.flatnonzero(template_ids == t)
        chosen.append(rng.choice(idx, min(per_template, len(idx)), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=int)


def template_recognition(model: CaptionModel, sequences, template_ids, num_templates: int) -> dict:
    """Is a caption's own template the argmax of log P(caption | template) over all templates?"""
    n = len(sequences)
    scores = np.empty((n, num_templates))
    for t in range(num_templates):
        scores[:, t] = model.score(sequences, np.full(n, t))
    truth = np.asarray(template_ids)
    own = scores[np.arange(n), truth]
    # Templates explaining the caption at least as well count against it: a model that
    # ignores the template (all scores equal) must not get credit.
    rank = (scores >= own[:, None]).sum(axis=1) - 1
    return {"top1": float(np.mean(rank < 1)), "top5": float(np.mean(rank < 5)), "captions": n}


def distinct_n(captions: list[list[str]], n: int) -> float:
    ngrams = [tuple(c[i : i + n]) for c in captions for i in range(len(c) - n + 1)]
    return len(set(ngrams)) / len(ngrams) if ngrams else 0.0


def generation_metrics(
    generated: dict[int, list[list[str]]],
    training_captions: CaptionSet,
    box_counts: dict[int, int],
    allowed_box_counts: dict[int, list[int]] | None = None,
) -> dict:
    """Over the captions generated per template (tokens, as the decoder writes them):
    distinct-1/2 within each template's set, near-duplicate pairs within it (same words, or
    all boxes but one the same: memefly.decoding.distinct), novelty (not a training caption),
    box counts (the typical one; one that at least 10% of the template's real memes use),
    captions with a box repeated, and the share of templates whose top caption is also
    another template's top caption."""
    d1, d2, novel, match, allowed, repeated, total = [], [], 0, 0, 0, 0, 0
    pairs, near = 0, 0
    tops: dict[tuple, int] = {}
    for t, captions in generated.items():
        words = [[w for w in c if w not in SPECIAL_TOKENS] for c in captions]
        d1.append(distinct_n(words, 1))
        d2.append(distinct_n(words, 2))
        keys = [caption_words(tokens_to_boxes(c)) for c in captions]
        for a in range(len(keys)):
            for b in range(a + 1, len(keys)):
                pairs += 1
                near += near_duplicate(keys[a], keys[b])
        if keys:
            tops[keys[0]] = tops.get(keys[0], 0) + 1
        for c, key in zip(captions, keys, strict=True):
            boxes = tokens_to_boxes(c)
            total += 1
            novel += boxes not in training_captions
            match += len(key) == box_counts.get(t)
            allowed += allowed_box_counts is not None and len(key) in allowed_box_counts.get(t, ())
            repeated += repeats_a_box(boxes)
    shared = sum(n for n in tops.values() if n > 1)
    return {
        "distinct_1": float(np.mean(d1)) if d1 else 0.0,
        "distinct_2": float(np.mean(d2)) if d2 else 0.0,
        "novelty": novel / total if total else 0.0,
        "box_count_match": match / total if total else 0.0,
        "box_count_allowed": allowed / total if total and allowed_box_counts is not None else None,
        "repeated_box": repeated / total if total else 0.0,
        "near_duplicate_pairs": near / pairs if pairs else 0.0,
        "shared_top_caption": shared / len(generated) if generated else 0.0,
        "captions": total,
    }
