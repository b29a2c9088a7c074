"""Per-template interpolated Kneser-Ney bigram: the anchor the decoder must beat.

Measured with the decoder's own metric code on the same test captions, vocabulary and samples:

    python benchmarks/kn_baseline.py runs/small

prints the run's metrics.json (from `memefly evaluate`) and the baseline side by side, and
writes RUN/baseline_metrics.json.

Model, per template t (d: the absolute discount, n1 / (n1 + 2 n2) over all bigram counts):
  P_t(w | v)   = max(c_t(v,w) - d, 0) / c_t(v) + d * N1+_t(v .) / c_t(v) * Pc_t(w)
  Pc_t(w)      = max(N1+_t(. w) - d, 0) / N1+_t(. .) + d * |{w: N1+_t(. w) > 0}| / N1+_t(. .) * Pg(w)
  Pg(w)        = (N1+(. w) + 1) / (N1+(. .) + V)      continuation counts over all templates
A context v never seen with template t falls back to Pc_t.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import TYPE_CHECKING

import numpy as np

from memefly.contract import START_ID

if TYPE_CHECKING:
    from memefly.decoding.captioner import Captioner

ANCHOR = {  # the measurement on held-out ImgFlip575K captions, for reference
    "recognition top-1": 0.46,
    "recognition top-5": 0.65,
    "conditioning gain": 1.84,
}


class KneserNeyBigram:
    captioner: Captioner  # the served search's rules, for `generate`: set by the caller (see `compare`)

    def __init__(self, sequences, template_ids, num_templates: int, vocab_size: int):
        self.num_templates, self.vocab_size = num_templates, vocab_size
        bigrams: Counter = Counter()
        for seq, t in zip(sequences, template_ids, strict=True):
            prev = START_ID
            for w in seq:
                bigrams[(int(t), prev, int(w))] += 1
                prev = int(w)
        count_of_counts = Counter(bigrams.values())
        n1, n2 = count_of_counts[1], count_of_counts[2]
        self.d = n1 / (n1 + 2 * n2) if n1 + n2 else 0.75

        self.successors: dict[tuple[int, int], dict[int, int]] = defaultdict(dict)
        continuation = np.zeros((num_templates, vocab_size))  # N1+_t(. w)
        global_continuation: dict[tuple[int, int], int] = {}
        for (t, v, w), c in bigrams.items():
            self.successors[(t, v)][w] = c
            continuation[t, w] += 1
            global_continuation[(v, w)] = 1
        g = np.ones(vocab_size)
        for _, w in global_continuation:
            g[w] += 1
        self.global_probs = g / g.sum()
        types = continuation.sum(axis=1, keepdims=True)
        seen = (continuation > 0).sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            pc = np.maximum(continuation - self.d, 0) / types + self.d * seen / types * self.global_probs
        self.continuation_probs = np.where(types > 0, pc, self.global_probs)  # [T, V]
        self.context_totals = {key: (sum(s.values()), len(s)) for key, s in self.successors.items()}

    def distribution(self, t: int, v: int) -> np.ndarray:
        pc = self.continuation_probs[t]
        successors = self.successors.get((t, v))
        if not successors:
            return pc.copy()
        total, kinds = self.context_totals[(t, v)]
        probs = pc * (self.d * kinds / total)
        words = np.fromiter(successors, dtype=np.int64)
        probs[words] += np.maximum(np.fromiter(successors.values(), dtype=float) - self.d, 0) / total
        return probs

    def prob(self, t: int, v: int, w: int) -> float:
        pc = self.continuation_probs[t, w]
        successors = self.successors.get((t, v))
        if not successors:
            return pc
        total, kinds = self.context_totals[(t, v)]
        return max(successors.get(w, 0) - self.d, 0) / total + self.d * kinds / total * pc

    # The metrics' CaptionModel interface.
    def score(self, sequences, template_ids) -> np.ndarray:
        out = np.empty(len(sequences))
        for i, (seq, t) in enumerate(zip(sequences, template_ids, strict=True)):
            prev, total = START_ID, 0.0
            for w in seq:
                total += np.log(self.prob(int(t), prev, int(w)))
                prev = int(w)
            out[i] = total
        return out

    def generate(self, template_ids, n: int) -> list[list[list[int]]]:
        """With the served search and its rules, as the decoder is measured: the row's template
        travels as its context, the bigram needs no other state."""
        from memefly.contract import TOP_K
        from model_export.evaluate import generate_served

        def step(tokens, state, context):
            pairs = zip(context[:, 0], tokens, strict=True)
            log_probs = np.log(np.stack([self.distribution(int(t), int(v)) for t, v in pairs]))
            top = np.argsort(-log_probs, axis=1, kind="stable")[:, :TOP_K]
            return top.astype(np.int32), np.take_along_axis(log_probs, top, 1), state

        template_ids = np.asarray(template_ids)
        rows = len(template_ids)
        return generate_served(
            self.captioner,
            step,
            np.zeros((rows, 1), np.float32),
            template_ids[:, None].astype(np.float32),
            template_ids,
            self.num_templates,
            n,
        )


def compare(run_path, panels: dict, prepared=None, per_template: int = 20, max_test=None, seed: int = 0) -> str:
    """The baseline's metrics beside the run's (RUN/metrics.json), as a table with samples;
    writes RUN/baseline_metrics.json. PANELS: the templates' box counts (the served layouts')."""
    from model_export import run_dir as rd
    from model_export.evaluate import (
        evaluate_caption_model,
        format_table,
        load_evaluation_data,
        served_captioner,
        split_sequences,
    )

    run = rd.load_run(run_path)
    prepared = prepared or run.config["prepared"]
    data, captions = load_evaluation_data(run, prepared, max_test, seed)
    index = {name: i for i, name in enumerate(run.template_names)}
    train_seqs, train_tids = split_sequences(run.tokenizer, captions, "train", index)
    baseline = KneserNeyBigram(train_seqs, train_tids, len(index), len(run.vocabulary))
    baseline.captioner = served_captioner(run, data.training_captions, panels)
    metrics = evaluate_caption_model(baseline, data, per_template, seed)
    metrics["discount"] = baseline.d
    (run.path / "baseline_metrics.json").write_text(json.dumps(metrics, indent=1, ensure_ascii=False))

    columns = {}
    if (run.path / rd.METRICS).exists():
        columns["decoder"] = json.loads((run.path / rd.METRICS).read_text())
    columns["KN bigram"] = metrics
    lines = [
        format_table(columns),
        "anchor from the issue (KN bigram on held-out ImgFlip575K): "
        + ", ".join(f"{k} {v}" for k, v in ANCHOR.items()),
        "KN bigram samples:",
    ]
    lines += [f"  {name}: {caps[0]}" for name, caps in list(metrics["samples"].items())[:5]]
    return "\n".join(lines)
