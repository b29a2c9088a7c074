"""The default decoder shipped in the package: small, only the model and its records, the very
weights its metrics were measured on, and it writes memes for a named template."""

from __future__ import annotations

import json

import numpy as np
import pytest

from memefly import contract as c
from memefly import paths
from memefly.captions import tokens_to_boxes
from model_export import run_dir as rd

DEFAULT = paths.shipped_model()
SHIPPED = {
    rd.CONFIG,
    rd.VOCABULARY,
    rd.TEMPLATES,
    rd.FINAL_WEIGHTS,
    rd.METRICS,
    rd.TRAIN_STATS,
    "baseline_metrics.json",
    rd.TRAINING_CAPTIONS,
}


@pytest.fixture(scope="module")
def default_run():
    return rd.load_run(DEFAULT)


def test_ships_only_the_model_and_its_records_within_25_mb():
    assert {p.name for p in DEFAULT.iterdir()} == SHIPPED
    assert sum(p.stat().st_size for p in DEFAULT.iterdir()) <= 25_000_000
    for name in (rd.METRICS, "baseline_metrics.json"):  # generated samples may repeat training captions
        assert "samples" not in json.loads((DEFAULT / name).read_text())


def test_it_is_the_model_its_metrics_were_measured_on(default_run):
    metrics = json.loads((DEFAULT / rd.METRICS).read_text())
    assert rd.weights_fingerprint(default_run.model) == metrics["weights_fingerprint"]
    baseline = json.loads((DEFAULT / "baseline_metrics.json").read_text())
    assert metrics["test_captions"] == baseline["test_captions"] > 10_000  # the same full test split
    assert metrics["perplexity"] < baseline["perplexity"]


def test_first_starts_build_from_it_unless_told_otherwise(monkeypatch, tmp_path):
    from model_export.first_run import BuildSettings

    monkeypatch.delenv("MEMEFLY_DECODER_RUN", raising=False)
    shipped = BuildSettings().run  # what `memefly serve` builds its first models from
    assert {p.name for p in shipped.iterdir()} == SHIPPED  # the model the tests above check
    monkeypatch.setenv("MEMEFLY_DECODER_RUN", str(tmp_path / "mine"))
    assert BuildSettings().run == tmp_path / "mine"


@pytest.mark.slow
def test_it_writes_a_caption_for_a_named_template(default_run):
    import tensorflow as tf

    from memefly.decoding.distinct import CaptionSet
    from model_export.evaluate import DecoderCaptionModel, served_captioner

    names = default_run.template_names
    template = names.index("Drake-Hotline-Bling")
    model = default_run.model
    captioner = served_captioner(default_run, CaptionSet(default_run.training_captions))
    # The served search with POST /memes' defaults: five memes, the best first.
    (captions,) = DecoderCaptionModel(model, len(names), captioner=captioner).generate(np.array([template]), 5)
    assert len(captions) == 5
    best_ids = captions[0]
    boxes = tokens_to_boxes([default_run.vocabulary[i] for i in best_ids])
    assert len(boxes) in default_run.templates[template]["box_counts"] and all(box.strip() for box in boxes)

    # On template: of all 88 templates, Drake's is among the five that find this caption likeliest.
    targets = np.array([list(best_ids) + [c.END_ID]] * len(names), np.int32)
    inputs = np.concatenate([np.full((len(names), 1), c.START_ID, np.int32), targets[:, :-1]], axis=1)
    logits = model({"template_probs": np.eye(len(names), dtype=np.float32), "tokens": inputs})
    log_prob = -tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits).numpy().sum(axis=1)
    assert template in np.argsort(-log_prob)[:5]
