"""What makes five memes good beyond the search itself: distinct captions, box structure,
no training captions, the default strategy and its seeding (memefly.decoding)."""

from __future__ import annotations

import numpy as np
import pytest

from memefly.contract import END_ID, SEP_ID, SPECIAL_TOKENS
from memefly.decoding.captioner import Captioner, input_seed, run_searches, template_input_key
from memefly.decoding.constraints import Constraints
from memefly.decoding.distinct import CaptionSet, caption_words, fingerprint, near_duplicate, repeats_a_box
from memefly.decoding.options import DEFAULT_CANDIDATES, DecodingOptions
from memefly.decoding.search import Hypothesis, pick_distinct


def words(*boxes):
    return caption_words(list(boxes))


def test_captions_are_compared_by_their_words():
    assert words("Play  Minecraft!", "") == (("play", "minecraft"),)
    assert near_duplicate(words("when you see it", "boom"), words("When you SEE it,", "boom!"))
    assert near_duplicate(words("when you see it boom"), words("when you see it", "boom"))  # box breaks aside
    # All boxes but one the same: one meme told twice.
    assert near_duplicate(words("fortnite", "minecraft"), words("fortnite", "fortnite chapter 2"))
    assert near_duplicate(words("a", "b", "c"), words("a", "x", "c"))
    assert not near_duplicate(words("a", "b", "c"), words("a", "x", "y"))
    assert not near_duplicate(words("fortnite"), words("minecraft"))
    assert not near_duplicate(words("a", "b"), words("a", "b", "c"))
    assert repeats_a_box(["play minecraft", "Play Minecraft!"]) and not repeats_a_box(["a", "b"])


def test_the_training_caption_set_matches_by_words_and_is_compact():
    training = CaptionSet.of_captions([["One does not simply", "walk into Mordor"], ["y u no", "upvote"]])
    assert ["one does not simply!", "WALK into mordor"] in training
    assert ["one does not simply walk into mordor"] not in training  # other boxes, other meme
    assert ["y u no"] not in training
    assert training.fingerprints.dtype == np.int64 and len(training) == 2
    assert fingerprint(["a b"]) == fingerprint(["A,  b!"]) != fingerprint(["a", "b"])
    assert ["anything"] not in CaptionSet()


def hypothesis(ids, score):
    return Hypothesis(tuple(ids), score, score, True)


def test_pick_distinct_skips_near_duplicates_and_fills_only_when_it_must():
    names = {1: ("fortnite", "minecraft"), 2: ("fortnite", "roblox"), 3: ("school", "homework"), 4: ("a", "b")}
    to_words = lambda ids: tuple((w,) for w in names[ids[0]])  # noqa: E731
    ranked = [hypothesis([i], -i) for i in (1, 2, 3, 4)]
    assert [h.ids[0] for h in pick_distinct(ranked, 3, to_words)] == [1, 3, 4]
    # Only two distinct memes for three places: the best near-duplicate fills the last one.
    assert [h.ids[0] for h in pick_distinct(ranked[:3], 3, to_words)] == [1, 3, 2]
    assert [h.ids[0] for h in pick_distinct(ranked, 2, None)] == [1, 2]


def test_the_default_strategy_and_how_to_leave_it():
    default = DecodingOptions()
    assert default.default_strategy and default.do_sample
    assert default.rows == default.num_candidates == DEFAULT_CANDIDATES
    assert default.model_dump(exclude_unset=True) == {}  # a client passing it on still means "the defaults"
    beam = DecodingOptions(num_beams=8)
    assert not beam.do_sample and not beam.default_strategy and beam.rows == 8
    assert not DecodingOptions(do_sample=False).do_sample
    plain = DecodingOptions(do_sample=True, num_return_sequences=3)
    assert not plain.default_strategy and plain.num_candidates == 3 and plain.temperature == 1.0
    with pytest.raises(ValueError, match="num_candidates"):
        DecodingOptions(num_candidates=2)
    assert DecodingOptions(num_return_sequences=20).num_candidates == 20  # never fewer than asked for


def test_box_rules_allow_sep_and_end_only_where_they_fit():
    word_ids = np.array([False] * len(SPECIAL_TOKENS) + [True, True, False])  # id 7 is punctuation
    constraints = Constraints(8, box_counts={2}, word_ids=word_ids)
    top = np.array([[SEP_ID, END_ID, 5]] * 5)
    histories = [(), (5,), (5, 7), (5, SEP_ID, 6), (5, SEP_ID, 5)]
    forbidden = constraints.forbidden(histories, top)
    assert forbidden[0, :2].all()  # nothing to close yet
    assert list(forbidden[1]) == [False, True, False]  # one box: <sep> yes, <end> not (two boxes needed)
    assert list(forbidden[2]) == [False, True, False]  # "5 ," is the same box: punctuation is not a word
    assert list(forbidden[3]) == [True, False, False]  # two boxes: <end> yes, a third box not
    assert list(forbidden[4]) == [True, True, False]  # the open box repeats the first: it may not close


class Bigram:
    """A deterministic step over a 9-token vocabulary: next-token log-probs depend on the last token."""

    vocabulary = list(SPECIAL_TOKENS) + ["fortnite", "minecraft", "school", "!"]

    def __init__(self, seed=0):
        logits = np.random.default_rng(seed).normal(size=(9, 9)) * 1.5
        self.table = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)

    def step(self, tokens, state, context):
        log_probs = self.table[tokens]
        order = np.argsort(-log_probs, axis=1, kind="stable")
        return order.astype(np.int32), np.take_along_axis(log_probs, order, 1), state


def generate(captioner, probs, options, key, model=None):
    model = model or Bigram()
    search = captioner.search(np.zeros(1, np.float32), np.zeros(1, np.float32), probs, options, key)
    run_searches([search], model.step)
    return [captioner.boxes(h.ids) for h in search.results()]


def test_the_captioner_keeps_box_counts_refuses_training_captions_and_seeds_by_input():
    vocabulary = Bigram.vocabulary
    captioner = Captioner(vocabulary, [frozenset({2}), frozenset({1})])
    options = DecodingOptions(num_return_sequences=3, num_candidates=12, max_length=8)
    two_boxes = generate(captioner, np.array([1.0, 0.0]), options, template_input_key(0))
    assert two_boxes and all(len(caption_words(boxes)) == 2 for boxes in two_boxes)
    one_box = generate(captioner, np.array([0.0, 1.0]), options, template_input_key(1))
    assert one_box and all(len(caption_words(boxes)) == 1 for boxes in one_box)
    # A mixture lends the counts of every template with a real share of the probability.
    assert captioner.allowed_box_counts(np.array([0.45, 0.45])) == {1, 2}
    assert captioner.allowed_box_counts(np.array([0.45, 0.55])) == {1}  # a likely template decides alone
    assert captioner.allowed_box_counts(np.array([0.05, 0.95])) == {1}
    # The same input, the same memes; another input (or a given seed), other memes.
    assert generate(captioner, np.array([1.0, 0.0]), options, template_input_key(0)) == two_boxes
    assert input_seed("a") != input_seed("b")
    # A training caption is never returned, unless the request allows it.
    training = Captioner(vocabulary, [frozenset({2}), frozenset({1})], CaptionSet.of_captions([two_boxes[0]]))
    assert two_boxes[0] not in generate(training, np.array([1.0, 0.0]), options, template_input_key(0))
    allowed = options.model_copy(update={"allow_training_captions": True})
    assert two_boxes[0] in generate(training, np.array([1.0, 0.0]), allowed, template_input_key(0))
