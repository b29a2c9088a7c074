"""The Kneser-Ney bigram baseline: a proper distribution, and the benchmark script end to end."""

import json

import numpy as np
import pytest

from model_export.kn_baseline import KneserNeyBigram, compare

VOCAB = 12


@pytest.fixture
def model():
    seqs = [np.array([5, 6, 2]), np.array([5, 7, 2]), np.array([8, 2]), np.array([5, 6, 9, 2])]
    return KneserNeyBigram(seqs, [0, 0, 1, 1], num_templates=3, vocab_size=VOCAB)


@pytest.mark.parametrize("template", [0, 1, 2])
@pytest.mark.parametrize("context", [1, 5, 6, 11])
def test_every_context_gives_a_distribution(model, template, context):
    dist = model.distribution(template, context)
    assert dist.sum() == pytest.approx(1.0)
    assert np.all(dist > 0)  # nothing is impossible under interpolation
    assert all(model.prob(template, context, w) == pytest.approx(dist[w]) for w in range(VOCAB))


def test_seen_bigrams_are_likelier_under_their_template(model):
    assert model.prob(0, 5, 6) > model.prob(2, 5, 6)  # template 2 has no captions at all
    assert model.score([np.array([5, 6, 2])], [0])[0] > model.score([np.array([5, 6, 2])], [2])[0]


def test_the_comparison_shows_both_columns(tiny_run):
    from gateway.rendering.layout import Layouts
    from model_export.evaluate import evaluate_run

    evaluate_run(tiny_run, per_template=5)
    out = compare(tiny_run, Layouts.shipped().panels, per_template=5)
    assert "decoder" in out and "KN bigram" in out and "anchor" in out
    metrics = json.loads((tiny_run / "baseline_metrics.json").read_text())
    assert metrics["conditioning_gain"] > 1.0 and 0 < metrics["discount"] < 1
