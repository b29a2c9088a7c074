"""The GPU path: tokenize here, train from token arrays with the JAX backend in a process
without TensorFlow, and the weights it writes load into the TensorFlow-backend decoder and
step exactly as JAX computed them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import tiny_train_config

from memefly import contract as c
from memefly.cli import main
from model_export import train_arrays as ta
from model_export.token_arrays import unpack

# Runs under KERAS_BACKEND=jax: trains, then writes what the JAX decoder computes for fixed inputs.
JAX_SCRIPT = """
import importlib.abc, json, sys


class NoTensorFlow(importlib.abc.MetaPathFinder):  # as on the GPU machine: TensorFlow is not installed
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r}")


sys.meta_path.insert(0, NoTensorFlow())
import numpy as np
import keras
from model_export.model import MemeDecoder
from model_export.train_arrays import train_arrays
from pathlib import Path
run = Path(sys.argv[1])
stats = train_arrays(run, verbose=0)
config = json.loads((run / "config.json").read_text())
vocab = len((run / "vocabulary.txt").read_text(encoding="utf-8").rstrip("\\n").split("\\n"))
templates = len(json.loads((run / "templates.json").read_text()))
model = MemeDecoder(vocab, templates, **config["model"]).build_for()
model.load_weights(run / "decoder.weights.h5")
probs = np.eye(templates, dtype="float32")[[0, 1, 2]]
state, context = model.init(probs)
tokens = np.array([1, 5, 6], dtype="int32")
log_probs, new_state = model.step(tokens, state, context)
np.savez(run / "jax_step.npz", log_probs=np.asarray(log_probs), state=np.asarray(new_state))
print(json.dumps({"backend": keras.backend.backend(), "tensorflow_loaded": "tensorflow" in sys.modules, **stats}))
"""


def test_the_array_trainer_uses_the_contracts_ids():
    assert (ta.PAD_ID, ta.START_ID, ta.END_ID) == (c.PAD_ID, c.START_ID, c.END_ID)


def test_batches_keep_every_caption_once_with_few_shapes(tiny_prepared, tmp_path):
    from model_export.token_arrays import write_token_arrays

    path = write_token_arrays(tiny_train_config(tiny_prepared, tmp_path / "run"))
    arrays = np.load(path)
    batches = ta.CaptionBatches(
        arrays["train_ids"],
        arrays["train_offsets"],
        arrays["train_templates"],
        num_templates=4,
        batch_size=16,
        max_len=40,
        mix_share=0.3,
        seed=0,
        shuffle=True,
    )
    seen, shapes = [], set()
    for i in range(len(batches)):
        inputs, targets = batches[i]
        shapes.add(inputs["tokens"].shape)
        assert np.allclose(inputs["template_probs"].sum(axis=1), 1.0, atol=1e-5)
        for first, row in zip(inputs["tokens"][:, 0], targets, strict=True):
            if first == c.START_ID:  # a caption row, not padding
                seen.append(tuple(row[row != c.PAD_ID]))
        assert np.array_equal(inputs["tokens"][:, 1:], targets[:, :-1])  # targets are the next tokens
    captions = unpack(arrays["train_ids"], arrays["train_offsets"])
    assert sorted(seen) == sorted(tuple(s) + (c.END_ID,) for s in captions)
    assert len(shapes) <= len(ta.LENGTHS) + 1


@pytest.mark.slow
def test_jax_trained_weights_step_the_same_in_tensorflow(tiny_prepared, tmp_path):
    from model_export.run_dir import load_run

    run = tmp_path / "gpu"
    config = tiny_train_config(tiny_prepared, run)
    args = [
        "train",
        "--run",
        str(run),
        "--prepared",
        str(tiny_prepared),
        "--tokenize-only",
        "--embed-dim",
        str(config.model.embed_dim),
        "--context-dim",
        str(config.model.context_dim),
        "--hidden-dim",
        str(config.model.hidden_dim),
        "--dropout",
        "0",
        "--vocab-min-count",
        "2",
        "--batch-size",
        "32",
        "--epochs",
        "4",
        "--learning-rate",
        "0.01",
        "--seed",
        "1",
    ]
    assert main(args) == 0
    assert (run / "tokens.npz").exists() and not (run / "decoder.weights.h5").exists()

    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT, str(run)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(c.__file__).rsplit("/memefly/", 1)[0],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats["backend"] == "jax" and not stats["tensorflow_loaded"]
    history = (run / "history.csv").read_text().strip().splitlines()
    losses = [float(line.split(",")[1]) for line in history[1:]]
    assert len(losses) == 4 and losses[-1] < losses[0]  # it learned

    trained = load_run(run)  # the TensorFlow backend, as evaluation and export load it
    expected = np.load(run / "jax_step.npz")
    probs = np.eye(len(trained.templates), dtype=np.float32)[[0, 1, 2]]
    state, context = trained.model.init(probs)
    log_probs, new_state = trained.model.step(np.array([1, 5, 6], np.int32), state, context)
    assert np.max(np.abs(log_probs.numpy() - expected["log_probs"])) < 1e-4
    assert np.max(np.abs(new_state.numpy() - expected["state"])) < 1e-5
