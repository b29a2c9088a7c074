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
from memefly.contract import END_ID, START_ID, TOP_K
from memefly.decoding.distinct import CaptionSet
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
    training_captions: CaptionSet  # fingerprints of the training captions
    allowed_box_counts: dict[int, list[int]] | None = None  # counts >= 10% of a template's memes use


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


def load_evaluation_data(run: rd.TrainedRun, prepared: str | Path, max_test: int | None, seed: int):
    from model_export.prepare import load_captions

    captions = load_captions(prepared)
    index = {name: i for i, name in enumerate(run.template_names)}
    seqs, tids = split_sequences(run.tokenizer, captions, "test", index)
    if max_test is not None and max_test < len(seqs):
        keep = np.sort(np.random.default_rng(seed).choice(len(seqs), max_test, replace=False))
        seqs, tids = [seqs[i] for i in keep], tids[keep]
    from model_export.caption_stats import allowed_box_counts, training_fingerprints

    fingerprints = run.training_captions if len(run.training_captions) else training_fingerprints(captions)
    allowed = allowed_box_counts(captions, run.template_names)
    return EvaluationData(
        template_names=run.template_names,
        box_counts={i: t["box_count"] for i, t in enumerate(run.templates)},
        vocabulary=run.vocabulary,
        test_sequences=seqs,
        test_template_ids=tids,
        training_captions=CaptionSet(fingerprints),
        allowed_box_counts={i: allowed[name] for i, name in enumerate(run.template_names)},
    ), captions


class DecoderCaptionModel:
    """The trained Keras decoder behind the metrics' CaptionModel interface. It generates with
    the served search (memefly.decoding.captioner, what the gateway runs) and the served
    step (the top-K candidates per row), with the default options of POST /memes."""

    def __init__(self, model, num_templates: int, batch_size: int = 256, captioner=None, options: dict | None = None):
        self.model, self.num_templates, self.batch_size = model, num_templates, batch_size
        self.captioner, self.options = captioner, options

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

        k = min(TOP_K, self.model.vocab_size)

        def step(tokens, state, context):
            log_probs, state = self.model.step(tf.constant(tokens), tf.constant(state), tf.constant(context))
            top = tf.math.top_k(log_probs, k=k)
            return top.indices.numpy(), top.values.numpy(), state.numpy()

        template_ids = np.asarray(template_ids)
        probs = np.eye(self.num_templates, dtype=np.float32)[template_ids]
        state, context = (x.numpy() for x in self.model.init(probs))
        return generate_served(self.captioner, step, state, context, template_ids, self.num_templates, n, self.options)


def generate_served(
    captioner, step, state, context, template_ids, num_templates: int, n: int, options: dict | None = None
) -> list[list[list[int]]]:
    """N captions per template with the served search: CAPTIONER's rules, OPTIONS as a request
    gives them (default: POST /memes' defaults), seeded as the gateway seeds a named template.
    STEP(tokens, state, context) -> (top_ids, top_log_probs, state) like the decoder's serving step."""
    from memefly.decoding.captioner import run_searches, template_input_key
    from memefly.decoding.options import DecodingOptions

    request = DecodingOptions(**{**(options or {}), "num_return_sequences": n})
    probs = np.eye(num_templates, dtype=np.float32)
    searches = [
        captioner.search(state[i], context[i], probs[t], request, template_input_key(int(t)))
        for i, t in enumerate(template_ids)
    ]
    run_searches(searches, step)
    return [[list(h.ids) for h in search.results()] for search in searches]


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
        "generation": m.generation_metrics(generated, data.training_captions, data.box_counts, data.allowed_box_counts),
        "samples": {
            data.template_names[t]: [" / ".join(tokens_to_boxes(c)) for c in captions]
            for t, captions in generated.items()
        },
        "seconds": round(time.perf_counter() - started, 1),
    }


def served_captioner(run: rd.TrainedRun, training_captions: CaptionSet, panels=lambda name: None):
    """The Captioner the gateway builds for this decoder: box counts per template (PANELS(name)
    when a multi-panel layout fixes them), training captions, the offensive-word list."""
    from memefly.decoding.captioner import Captioner, template_box_counts
    from memefly.decoding.safety import offensive_token_ids

    counts = [template_box_counts(t.get("box_counts"), panels(t["name"])) for t in run.templates]
    return Captioner(run.vocabulary, counts, training_captions, offensive_token_ids(run.vocabulary))


def evaluate_run(
    run_path,
    prepared=None,
    per_template: int = 20,
    max_test: int | None = None,
    seed: int = 0,
    panels=lambda name: None,
    options=None,
) -> dict:
    """PANELS(template name) -> the panel count of its multi-panel layout, or None (the
    gateway's layouts; the caller passes them, model code does not read the gateway's files).
    OPTIONS: decoding options as a request gives them (default: POST /memes' defaults)."""
    run = rd.load_run(run_path)
    data, _ = load_evaluation_data(run, prepared or run.config["prepared"], max_test, seed)
    captioner = served_captioner(run, data.training_captions, panels)
    model = DecoderCaptionModel(run.model, len(run.templates), captioner=captioner, options=options)
    metrics = evaluate_caption_model(model, data, per_template, seed)
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
    ("novelty (not a training caption)", lambda x: f"{x['generation']['novelty']:.3f}"),
    ("box-count match (typical count)", lambda x: f"{x['generation']['box_count_match']:.3f}"),
    ("box count used by >=10% of real", lambda x: _fmt(x["generation"].get("box_count_allowed"), ".3f")),
    ("captions with a box repeated", lambda x: _fmt(x["generation"].get("repeated_box"), ".3f")),
    ("near-duplicate pairs among 5", lambda x: _fmt(x["generation"].get("near_duplicate_pairs"), ".3f")),
    ("templates sharing a top caption", lambda x: _fmt(x["generation"].get("shared_top_caption"), ".3f")),
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
    """The table, with the n-gram baseline beside it when benchmarks/kn_baseline.py measured this run."""
    columns = {"decoder": metrics}
    baseline = Path(metrics["run"]) / "baseline_metrics.json"
    if baseline.exists():
        columns["KN bigram"] = json.loads(baseline.read_text())
    lines = [format_table(columns), "", "samples (default options, top caption per template):"]
    for name, captions in list(metrics["samples"].items())[:samples]:
        lines.append(f"  {name}: {captions[0]}")
    lines.append(f"metrics written to {metrics['run']}/{rd.METRICS}")
    return "\n".join(lines)
