"""What the decoder SavedModel serves: init, one step, vocabulary, templates, score, metadata.

Every signature is a tf.function with named TensorSpecs and returns a dict, so the
SignatureDef keeps the contract's input and output names (Keras 3's own export renames
inputs and drops output names). No input is a scalar: TF Serving's batching concatenates
every input along dimension 0.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from memefly import contract as c
from model_export.encoder import Untracked, metadata_table, tracked_variables

TOP_K_CHUNK = 32


def top_k(values: tf.Tensor, k: int) -> tuple[tf.Tensor, tf.Tensor]:
    """tf.math.top_k over the last axis, exact, ~25% faster over a large vocabulary on CPU.

    TopK is most of a batched step's time. Every element of the top k lies in one of the k
    chunks with the highest maxima (a chunk ranked lower has k chunk maxima above all of its
    elements), so: maxima of chunks of 32, top k of those, then top k of their k * 32 values.
    """
    vocabulary = values.shape[-1]
    chunks = -(-vocabulary // TOP_K_CHUNK)
    if chunks < 2 * k:  # a small vocabulary: nothing to gain
        top = tf.math.top_k(values, k=k)
        return top.values, top.indices
    rows = tf.shape(values)[0]
    padded = tf.pad(values, [[0, 0], [0, chunks * TOP_K_CHUNK - vocabulary]], constant_values=float("-inf"))
    blocks = tf.reshape(padded, [rows, chunks, TOP_K_CHUNK])
    best = tf.math.top_k(tf.reduce_max(blocks, axis=2), k=k).indices  # [rows, k] chunk ids
    candidates = tf.reshape(tf.gather(blocks, best, batch_dims=1), [rows, k * TOP_K_CHUNK])
    candidate_ids = tf.reshape(
        best[:, :, None] * TOP_K_CHUNK + tf.range(TOP_K_CHUNK)[None, None, :], [rows, k * TOP_K_CHUNK]
    )
    top = tf.math.top_k(candidates, k=k)
    return top.values, tf.gather(candidate_ids, top.indices, batch_dims=1)


def allowed_box_count_bits(templates: list[dict]) -> list[int]:
    """Per template: bit b set when a caption of b boxes is allowed (0: no rule)."""
    return [sum(1 << n for n in t.get("box_counts") or () if 0 < n < 31) for t in templates]


def fingerprint_rows(fingerprints: np.ndarray | None) -> np.ndarray:
    """Sorted fingerprints in rows of FINGERPRINT_ROW, the last padded with 0 (at least one row)."""
    values = np.zeros(0, np.int64) if fingerprints is None else np.asarray(fingerprints, np.int64)
    rows = max(1, -(-values.size // c.FINGERPRINT_ROW))
    padded = np.zeros(rows * c.FINGERPRINT_ROW, np.int64)
    padded[: values.size] = values
    return padded.reshape(rows, c.FINGERPRINT_ROW)


class DecoderServing(tf.Module):
    def __init__(
        self,
        model,
        tokenizer,
        templates: list[dict],
        metadata: dict[str, str],
        top_k: int,
        training_captions: np.ndarray | None = None,
    ):
        super().__init__(name="memefly_decoder")
        self._model = Untracked(model)
        self.model_variables = tracked_variables(model)
        self.tokenizer = tokenizer
        self.top_k = min(top_k, tokenizer.size)
        self.vocabulary_tokens = tf.constant(tokenizer.vocabulary)
        self.template_names = tf.constant([t["name"] for t in templates])
        self.template_box_counts = tf.constant([int(t["box_count"] or 1) for t in templates], tf.int32)
        self.template_allowed_box_counts = tf.constant(allowed_box_count_bits(templates), tf.int32)
        self.fingerprint_rows = tf.constant(fingerprint_rows(training_captions))
        self.metadata_table = metadata_table(metadata)
        num_templates = len(templates)
        hidden, context = model.hidden_dim, model.context_dim

        probs_spec = tf.TensorSpec([None, num_templates], tf.float32, name=c.TEMPLATE_PROBS)
        self.init = tf.function(self._init, input_signature=[probs_spec])

        def step_specs(dtype):
            return [
                tf.TensorSpec([None], tf.int32, name=c.TOKEN),
                tf.TensorSpec([None, hidden], dtype, name=c.STATE),
                tf.TensorSpec([None, context], dtype, name=c.CONTEXT),
            ]

        self.step = tf.function(self._step, input_signature=step_specs(tf.float32))
        self.step_float16 = tf.function(self._step_float16, input_signature=step_specs(tf.float16))
        ids_spec = tf.TensorSpec([None], tf.int32, name=c.IDS)
        self.vocabulary = tf.function(self._vocabulary, input_signature=[ids_spec])
        self.templates = tf.function(self._templates, input_signature=[ids_spec])
        self.score = tf.function(
            self._score, input_signature=[probs_spec, tf.TensorSpec([None], tf.string, name=c.TEXT)]
        )
        self.metadata = tf.function(self._metadata, input_signature=[tf.TensorSpec([None], tf.string, name=c.KEYS)])
        self.training_captions = tf.function(self._training_captions, input_signature=[ids_spec])

    def signatures(self) -> dict:
        return {
            c.INIT_SIGNATURE: self.init,
            c.STEP_SIGNATURE: self.step,
            c.STEP_FLOAT16_SIGNATURE: self.step_float16,
            c.VOCABULARY_SIGNATURE: self.vocabulary,
            c.TEMPLATES_SIGNATURE: self.templates,
            c.SCORE_SIGNATURE: self.score,
            c.METADATA_SIGNATURE: self.metadata,
            c.TRAINING_CAPTIONS_SIGNATURE: self.training_captions,
        }

    def _init(self, template_probs):
        state, context = self._model.value.init(template_probs)
        return {c.STATE: state, c.CONTEXT: context}

    def _step(self, token, state, context):
        log_probs, state = self._model.value.step(token, state, context)
        top_log_probs, top_ids = top_k(log_probs, self.top_k)
        return {c.TOP_IDS: top_ids, c.TOP_LOG_PROBS: top_log_probs, c.STATE: state}

    def _step_float16(self, token, state, context):
        """The step with half-size state and context on the wire; the GRU still runs in float32."""
        out = self._step(token, tf.cast(state, tf.float32), tf.cast(context, tf.float32))
        return {**out, c.STATE: tf.cast(out[c.STATE], tf.float16)}

    def _vocabulary(self, ids):
        return {c.TOKENS: tf.gather(self.vocabulary_tokens, ids)}

    def _templates(self, ids):
        return {
            c.NAMES: tf.gather(self.template_names, ids),
            c.BOX_COUNTS: tf.gather(self.template_box_counts, ids),
            c.ALLOWED_BOX_COUNTS: tf.gather(self.template_allowed_box_counts, ids),
        }

    def _training_captions(self, ids):
        return {c.FINGERPRINTS: tf.gather(self.fingerprint_rows, ids)}

    def _score(self, template_probs, text):
        """log P(text | template_probs) with the model's true distribution (<unk> included)."""
        ids = self.tokenizer.encode(text)
        rows = tf.shape(text)[0]
        start = tf.RaggedTensor.from_tensor(tf.fill([rows, 1], c.START_ID))
        end = tf.RaggedTensor.from_tensor(tf.fill([rows, 1], c.END_ID))
        inputs = tf.concat([start, ids], axis=1).to_tensor(c.PAD_ID)
        targets = tf.concat([ids, end], axis=1).to_tensor(c.PAD_ID)
        logits = self._model.value({"template_probs": template_probs, "tokens": inputs})
        nll = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
        mask = tf.cast(tf.not_equal(targets, c.PAD_ID), tf.float32)
        return {
            c.LOG_PROB: -tf.reduce_sum(nll * mask, axis=1),
            c.NUM_TOKENS: tf.cast(ids.row_lengths(), tf.int32) + 1,
        }

    def _metadata(self, keys):
        return {c.VALUES: self.metadata_table.lookup(keys)}
