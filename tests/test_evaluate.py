"""Evaluation: metric definitions on hand-made models, and `memefly evaluate` on a tiny run."""

import json
import math

import numpy as np
import pytest

from memefly.cli import main
from model_export import metrics as m


class UniformModel:
    def __init__(self, vocab_size):
        self.vocab_size = vocab_size

    def score(self, sequences, template_ids):
        return np.array([-len(s) * math.log(self.vocab_size) for s in sequences])


class TemplateKnower:
    """Scores a caption high only under template `caption[0] % T`: recognition must be perfect."""

    def __init__(self, num_templates):
        self.num_templates = num_templates

    def score(self, sequences, template_ids):
        return np.array(
            [0.0 if s[0] % self.num_templates == t else -5.0 for s, t in zip(sequences, template_ids, strict=True)]
        )


def test_uniform_model_has_vocabulary_sized_perplexity_and_no_gain():
    seqs = [np.array([5, 6, 2]), np.array([7, 2])]
    assert m.perplexity(UniformModel(50), seqs, [0, 1]) == pytest.approx(50)
    wrong = m.wrong_templates([0, 1, 2, 3] * 10, 4, seed=0)
    assert np.all(wrong != np.array([0, 1, 2, 3] * 10)) and set(wrong) <= {0, 1, 2, 3}


def test_recognition_of_a_model_that_knows_templates():
    seqs = [np.array([t, 2]) for t in range(6)]
    result = m.template_recognition(TemplateKnower(6), seqs, np.arange(6), 6)
    assert result == {"top1": 1.0, "top5": 1.0, "captions": 6}
    result = m.template_recognition(UniformModel(10), seqs, np.arange(6), 6)
    assert result["top1"] == 0.0 and result["top5"] == 0.0  # a template-blind model gets no credit


def test_unk_rate_and_sampling():
    assert m.unk_rate([np.array([3, 5, 2]), np.array([3, 2])]) == pytest.approx(2 / 3)  # <end> (2) not counted
    tids = np.array([0] * 50 + [1] * 3)
    chosen = m.sample_per_template(tids, 10, seed=0)
    assert list(np.bincount(tids[chosen])) == [10, 3]


def test_generation_metrics():
    from memefly.decoding.distinct import CaptionSet

    generated = {
        0: [["a", "b", "<sep>", "c"], ["a", "b", "<sep>", "d"], ["e", "<sep>", "E", "!"]],
        1: [["x"], ["x"]],
        2: [["x", "!"]],
    }
    result = m.generation_metrics(
        generated,
        training_captions=CaptionSet.of_captions([["X"]]),
        box_counts={0: 2, 1: 2, 2: 1},
        allowed_box_counts={0: [2], 1: [1, 2], 2: [2]},
    )
    assert result["distinct_1"] == pytest.approx((7 / 9 + 1 / 2 + 1) / 3)
    assert result["distinct_2"] == pytest.approx((5 / 6 + 0 + 1) / 3)
    assert result["novelty"] == pytest.approx(3 / 6)  # "x" three times, whatever its punctuation
    assert result["box_count_match"] == pytest.approx(4 / 6)
    assert result["box_count_allowed"] == pytest.approx(5 / 6)
    assert result["repeated_box"] == pytest.approx(1 / 6)  # "e / E!"
    # Template 0: "a b / c" and "a b / d" differ in one box of two; template 1: the same words.
    assert result["near_duplicate_pairs"] == pytest.approx(2 / 4)
    assert result["shared_top_caption"] == pytest.approx(2 / 3)  # templates 1 and 2 both open with "x"
    assert result["captions"] == 6


def test_evaluate_command_on_a_tiny_run(tiny_run, capsys):
    assert main(["evaluate", str(tiny_run), "--per-template", "5"]) == 0
    out = capsys.readouterr().out
    assert "conditioning gain" in out and "template recognition top-1" in out
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    num_templates = len(json.loads((tiny_run / "templates.json").read_text()))
    assert 1 < metrics["perplexity"] < len((tiny_run / "vocabulary.txt").read_text().split("\n"))
    assert metrics["conditioning_gain"] > 1.0  # the template carries information, even in a tiny run
    assert 0 <= metrics["unk_rate"] < 0.5
    assert 0 <= metrics["recognition"]["top1"] <= metrics["recognition"]["top5"] <= 1
    assert metrics["recognition"]["captions"] <= 5 * num_templates
    assert metrics["generation"]["captions"] == 5 * num_templates
    assert len(metrics["samples"]) == num_templates
    generation = metrics["generation"]
    assert all(
        0 <= generation[k] <= 1
        for k in (
            "distinct_1",
            "distinct_2",
            "novelty",
            "box_count_match",
            "box_count_allowed",
            "repeated_box",
            "near_duplicate_pairs",
        )
    )
    # The served search's rules hold for the generated captions: no training caption, no box
    # twice, and box counts that the template's real memes use.
    assert generation["novelty"] == 1.0 and generation["repeated_box"] == 0.0
    assert generation["box_count_allowed"] >= 0.95


def test_a_single_template_has_no_conditioning_gain():
    from memefly.decoding.distinct import CaptionSet
    from model_export.evaluate import EvaluationData, evaluate_caption_model

    class OneWordModel(UniformModel):
        def generate(self, template_ids, n):
            return [[[5]] * n for _ in template_ids]

    data = EvaluationData(
        template_names=["only"],
        box_counts={0: 1},
        vocabulary=["<pad>", "<start>", "<end>", "<unk>", "<sep>", "word"],
        test_sequences=[np.array([5, 2])] * 3,
        test_template_ids=np.zeros(3, dtype=int),
        training_captions=CaptionSet(),
    )
    metrics = evaluate_caption_model(OneWordModel(6), data, per_template=2, seed=0)
    assert metrics["conditioning_gain"] is None and metrics["perplexity"] == pytest.approx(6)
    with pytest.raises(ValueError):
        m.wrong_templates([0, 0], 1, seed=0)
