"""`memefly evaluate RUN`: quality of a trained decoder on the test split, as a table and metrics.json.

The data preparation and the metric code are shared with benchmarks/kn_baseline.py, so a
baseline is measured on exactly the same captions, samples and definitions.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memefly.captions import tokens_to_boxes
from memefly.contract import END_ID, START_ID
from model_export import metrics as m
from model_export import run_dir as rd

NUM_GENERATED = 5  # captions per template, as the product returns


@dataclass
class EvaluationData:
    template_names: list[str]
    box_counts: dict[int, int]
    vocabulary: list[str]
    test_sequences: list[np.ndarray]  # ids ending with <end>, no <start>
    test_template_ids: np.ndarray
    training_captions: set[str]  # tokenized training captions, words joined by spaces


def _encode(tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Whole captions + <end>, as the decoder's `score` signature sees them (training cuts
    captions at max_len tokens for speed; the few longer test captions are scored in full)."""
    return [np.append(ids, END_ID).astype(np.int32) for ids in tokenizer.encode_texts(texts)]


def split_sequences(tokenizer, captions, split: str, index: dict[str, int]):
    from model_export.text import join_boxes

    rows = [c for c in captions if c.split == split and c.template in index]
    return _encode(tokenizer, [join_boxes(c.boxes) for c in rows]), np.array(
        [index[c.template] for c in rows], dtype=np.int32
    )


def training_caption_strings(captions, batch_size: int = 8192) -> set[str]:
    import tensorflow as tf

    from model_export.text import join_boxes, split_words

    texts = [join_boxes(c.boxes) for c in captions if c.split == "train"]
    out: set[str] = set()
    for start in range(0, len(texts), batch_size):
        for words in split_words(tf.constant(texts[start : start + batch_size])).numpy():
            out.add(" ".join(w.decode("utf-8") for w in words))
    return out


def load_evaluation_data(run: rd.TrainedRun, prepared: str | Path, max_test: int | None, seed: int):
    from model_export.prepare import load_captions

    captions = load_captions(prepared)
    index = {name: i for i, name in enumerate(run.template_names)}
    seqs, tids = split_sequences(run.tokenizer, captions, "test", index)
    if max_test is not None and max_test < len(seqs):
        keep = np.sort(np.random.default_rng(seed).choice(len(seqs), max_test, replace=False))
        seqs, tids = [seqs[i] for i in keep], tids[keep]
    return EvaluationData(
        template_names=run.template_names,
        box_counts={i: t["box_count"] for i, t in enumerate(run.templates)},
        vocabulary=run.vocabulary,
        test_sequences=seqs,
        test_template_ids=tids,
        training_captions=training_caption_strings(captions),
    ), captions


class DecoderCaptionModel:
    """The trained Keras decoder behind the metrics' CaptionModel interface."""

    def __init__(self, model, num_templates: int, batch_size: int = 256):
        self.model, self.num_templates, self.batch_size = model, num_templates, batch_size

    def score(self, sequences, template_ids) -> np.ndarray:
        import tensorflow as tf

        out = np.zeros(len(sequences))
        order = np.argsort([len(s) for s in sequences], kind="stable")  # little padding per batch
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            width = max(len(sequences[i]) for i in batch)
            targets = np.zeros((len(batch), width), dtype=np.int32)
            for row, i in enumerate(batch):
                targets[row, : len(sequences[i])] = sequences[i]
            inputs = np.concatenate([np.full((len(batch), 1), START_ID, np.int32), targets[:, :-1]], axis=1)
            logits = self.model(
                {"template_probs": tf.one_hot(template_ids[batch], self.num_templates), "tokens": inputs}
            )
            nll = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits).numpy()
            out[batch] = -(nll * (targets != 0)).sum(axis=1)
        return out

    def generate(self, template_ids, n: int) -> list[list[list[int]]]:
        import tensorflow as tf

        from model_export.beam import beam_search

        def step(tokens, states):
            state, context = states
            log_probs, state = self.model.step(tokens, state, context)
            return log_probs.numpy(), (state.numpy(), context)

        state, context = self.model.init(tf.one_hot(template_ids, self.num_templates))
        results = beam_search(step, (state.numpy(), context.numpy()), num_beams=max(8, n), num_return=n)
        return [[ids for ids, _ in beams] for beams in results]


def evaluate_caption_model(model: m.CaptionModel, data: EvaluationData, per_template: int, seed: int) -> dict:
    started = time.perf_counter()
    num_templates = len(data.template_names)
    seqs, tids = data.test_sequences, data.test_template_ids
    ppl = m.perplexity(model, seqs, tids)
    # With a single template there is no wrong one: the gain is undefined.
    ppl_wrong = m.perplexity(model, seqs, m.wrong_templates(tids, num_templates, seed)) if num_templates > 1 else None
    sample = m.sample_per_template(tids, per_template, seed)
    recognition = m.template_recognition(model, [seqs[i] for i in sample], tids[sample], num_templates)
    generated_ids = model.generate(np.arange(num_templates), NUM_GENERATED)
    generated = {t: [[data.vocabulary[i] for i in ids] for ids in c] for t, c in enumerate(generated_ids)}
    return {
        "test_captions": len(seqs),
        "test_tokens": int(sum(len(s) for s in seqs)),
        "perplexity": ppl,
        "unk_rate": m.unk_rate(seqs),
        "perplexity_wrong_template": ppl_wrong,
        "conditioning_gain": ppl_wrong / ppl if ppl_wrong else None,
        "recognition": recognition,
        "generation": m.generation_metrics(generated, data.training_captions, data.box_counts),
        "samples": {
            data.template_names[t]: [" / ".join(tokens_to_boxes(c)) for c in captions]
            for t, captions in generated.items()
        },
        "seconds": round(time.perf_counter() - started, 1),
    }


def evaluate_run(run_path, prepared=None, per_template: int = 20, max_test: int | None = None, seed: int = 0) -> dict:
    run = rd.load_run(run_path)
    data, _ = load_evaluation_data(run, prepared or run.config["prepared"], max_test, seed)
    metrics = evaluate_caption_model(DecoderCaptionModel(run.model, len(run.templates)), data, per_template, seed)
    metrics["run"] = str(run.path)
    metrics["weights_fingerprint"] = rd.weights_fingerprint(run.model)  # which weights these numbers are for
    (run.path / rd.METRICS).write_text(json.dumps(metrics, indent=1, ensure_ascii=False))
    return metrics


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


ROWS = (
    ("perplexity (right template)", lambda x: f"{x['perplexity']:.2f}"),
    ("perplexity (wrong template)", lambda x: _fmt(x["perplexity_wrong_template"], ".2f")),
    ("conditioning gain", lambda x: _fmt(x["conditioning_gain"], ".3f")),
    ("<unk> rate", lambda x: f"{x['unk_rate']:.4f}"),
    ("template recognition top-1", lambda x: f"{x['recognition']['top1']:.3f}"),
    ("template recognition top-5", lambda x: f"{x['recognition']['top5']:.3f}"),
    ("distinct-1 (5 per template)", lambda x: f"{x['generation']['distinct_1']:.3f}"),
    ("distinct-2 (5 per template)", lambda x: f"{x['generation']['distinct_2']:.3f}"),
    ("novelty", lambda x: f"{x['generation']['novelty']:.3f}"),
    ("box-count match", lambda x: f"{x['generation']['box_count_match']:.3f}"),
)


def format_table(columns: dict[str, dict]) -> str:
    """Metrics side by side: {column title: metrics}."""
    names = list(columns)
    width = max(len(r[0]) for r in ROWS) + 2
    lines = ["metric".ljust(width) + "".join(n.rjust(14) for n in names)]
    for label, fmt in ROWS:
        lines.append(label.ljust(width) + "".join(fmt(columns[n]).rjust(14) for n in names))
    first = columns[names[0]]
    lines.append(
        f"({first['test_captions']} test captions, {first['test_tokens']} tokens; recognition on "
        f"{first['recognition']['captions']} captions; {first['generation']['captions']} generated captions)"
    )
    return "\n".join(lines)


def format_metrics(metrics: dict, samples: int = 5) -> str:
    lines = [format_table({"decoder": metrics}), "", "samples (beam search, top caption per template):"]
    for name, captions in list(metrics["samples"].items())[:samples]:
        lines.append(f"  {name}: {captions[0]}")
    lines.append(f"metrics written to {metrics['run']}/{rd.METRICS}")
    return "\n".join(lines)
