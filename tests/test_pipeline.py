"""The tf.data pipeline: shifted targets, padding, and one-hot vs soft template mixtures."""

import numpy as np
import tensorflow as tf

from memefly.contract import END_ID, PAD_ID, START_ID
from model_export.pipeline import caption_dataset, template_mixture
from model_export.text import Tokenizer, build_vocabulary


def test_mixtures_follow_the_recipe():
    num_templates = 10
    probs = np.stack(
        [
            template_mixture(tf.constant(3), tf.constant(seed, tf.int64), num_templates, 0.5).numpy()
            for seed in range(400)
        ]
    )
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    mixed = probs[probs[:, 3] < 1.0]
    assert 0.35 < len(mixed) / len(probs) < 0.65
    assert np.all((mixed[:, 3] >= 0.5 - 1e-6) & (mixed[:, 3] <= 0.9 + 1e-6))
    others = (np.delete(mixed, 3, axis=1) > 0).sum(axis=1)
    assert set(others) <= {1, 2, 3} and len(set(others)) == 3
    one_hot = probs[probs[:, 3] == 1.0]
    assert np.all(np.delete(one_hot, 3, axis=1) == 0)


def test_no_mixing_with_a_single_template_or_zero_share():
    assert template_mixture(tf.constant(0), tf.constant(1, tf.int64), 1, 0.9).numpy().tolist() == [1.0]
    assert template_mixture(tf.constant(2), tf.constant(1, tf.int64), 4, 0.0).numpy().tolist() == [0, 0, 1, 0]


def test_batches_hold_shifted_targets_and_padding():
    texts = ["a b c", "a", "b c", "c c c c c"]
    tokenizer = Tokenizer(build_vocabulary(texts, min_count=1))
    ds = caption_dataset(texts, [0, 1, 0, 1], tokenizer, num_templates=2, batch_size=8, shuffle=False)
    seen = 0
    for inputs, targets in ds:
        tokens, targets = inputs["tokens"].numpy(), targets.numpy()
        assert np.all(tokens[:, 0] == START_ID)
        for row_in, row_out in zip(tokens, targets, strict=True):
            n = int((row_out != PAD_ID).sum())
            assert row_out[n - 1] == END_ID  # each target ends with <end>, then padding
            assert np.array_equal(row_in[1:n], row_out[: n - 1])  # targets are inputs shifted by one
        assert inputs["template_probs"].shape[1] == 2
        seen += len(tokens)
    assert seen == len(texts)


def test_same_seed_same_batches():
    texts = [f"w{i % 7} w{i % 3}" for i in range(50)]
    tokenizer = Tokenizer(build_vocabulary(texts, min_count=1))

    def first_batch(seed):
        ds = caption_dataset(
            texts, [i % 5 for i in range(50)], tokenizer, num_templates=5, batch_size=16, mix_share=0.5, seed=seed
        )
        inputs, _ = next(iter(ds))
        return inputs["tokens"].numpy(), inputs["template_probs"].numpy()

    a, b, c = first_batch(3), first_batch(3), first_batch(4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    same = a[0].shape == c[0].shape and np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1])
    assert not same
