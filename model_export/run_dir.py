"""The layout of a training run directory, and loading a trained decoder back from it.

RUN/
  config.json          every training setting (TrainConfig)
  vocabulary.txt       one token per line; line number = id
  templates.json       ordered template list: name, title, box_count, box_counts (allowed; line order = template id)
  training_captions.npy  sorted fingerprints of the training captions (model_export.caption_stats)
  backup/              Keras BackupAndRestore state: resume after an interruption
  best.weights.h5      best weights by validation loss (updated every epoch)
  decoder.weights.h5   final weights (the best epoch's), written when training ends
  history.csv          per-epoch loss and perplexity (appended on resume)
  tensorboard/         TensorBoard logs
  train_stats.json     wall time, tokens/s, parameter count, size
  metrics.json         written by `memefly evaluate`
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_export.text import Tokenizer, load_vocabulary

CONFIG = "config.json"
VOCABULARY = "vocabulary.txt"
TEMPLATES = "templates.json"
BACKUP = "backup"
BEST_WEIGHTS = "best.weights.h5"
FINAL_WEIGHTS = "decoder.weights.h5"
HISTORY = "history.csv"
TENSORBOARD = "tensorboard"
TRAIN_STATS = "train_stats.json"
METRICS = "metrics.json"
TRAINING_CAPTIONS = "training_captions.npy"  # fingerprints of the training captions (caption_stats)


@dataclass
class TrainedRun:
    path: Path
    config: dict
    vocabulary: list[str]
    templates: list[dict]
    tokenizer: Tokenizer
    model: object  # MemeDecoder
    training_captions: np.ndarray  # sorted int64 fingerprints (empty for a run made before them)

    @property
    def template_names(self) -> list[str]:
        return [t["name"] for t in self.templates]


def read_template_names(path: str | Path) -> list[str]:
    """A run's template names, in order, without loading its model."""
    return [t["name"] for t in json.loads((Path(path) / TEMPLATES).read_text())]


def load_run(path: str | Path) -> TrainedRun:
    from model_export.model import MemeDecoder

    path = Path(path)
    weights = path / FINAL_WEIGHTS
    if not weights.exists():
        weights = path / BEST_WEIGHTS
    if not weights.exists():
        raise FileNotFoundError(f"{path} holds no trained weights ({FINAL_WEIGHTS} or {BEST_WEIGHTS})")
    config = json.loads((path / CONFIG).read_text())
    vocabulary = load_vocabulary(path / VOCABULARY)
    templates = json.loads((path / TEMPLATES).read_text())
    model = MemeDecoder(len(vocabulary), len(templates), **config["model"]).build_for()
    model.load_weights(weights)
    fingerprints = path / TRAINING_CAPTIONS
    training = np.load(fingerprints) if fingerprints.exists() else np.zeros(0, np.int64)
    return TrainedRun(path, config, vocabulary, templates, Tokenizer(vocabulary), model, training)


def template_fingerprint(names: list[str]) -> str:
    """Both exported models carry it; the gateway serves a pair only if they agree."""
    return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()


def weights_fingerprint(model) -> str:
    """SHA-256 of the decoder's weights as float32: the same for an .h5 stored in float16 or 32."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w, dtype=np.float32).tobytes())
    return digest.hexdigest()
