"""A run's training and validation captions as token arrays (RUN/tokens.npz), tokenized here with
the project's tokenizer, for `model_export.train_arrays` on a machine with another Keras
backend and no TensorFlow (a GPU machine with JAX).

tokens.npz: for each split, `{split}_ids` (int32, all captions' tokens end to end, no
<start>/<end>), `{split}_offsets` (int64, caption i is ids[offsets[i]:offsets[i+1]]) and
`{split}_templates` (int32 template ids).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

TOKENS = "tokens.npz"


def pack(sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = np.concatenate(sequences).astype(np.int32) if sequences else np.zeros(0, np.int32)
    return ids, offsets


def unpack(ids: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [ids[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def write_token_arrays(config) -> Path:
    """Create (or reopen) the run for CONFIG (a TrainConfig), then write RUN/tokens.npz."""
    from model_export.prepare import load_captions
    from model_export.text import Tokenizer
    from model_export.train import prepare_run, seeded_subset, split_texts

    config, vocabulary, templates = prepare_run(config)
    index = {t["name"]: i for i, t in enumerate(templates)}
    captions = load_captions(config.prepared)
    tokenizer = Tokenizer(vocabulary)
    arrays: dict[str, Any] = {}  # Any: numpy's stub would match **arrays against savez's allow_pickle: bool
    for split in ("train", "validation"):
        texts, ids = split_texts(captions, split, index, config.exclude_offensive)
        if split == "train":
            texts, ids = seeded_subset(texts, ids, config.max_train_captions, config.seed)
        sequences = [s[: config.max_len] for s in tokenizer.encode_texts(texts)]
        arrays[f"{split}_ids"], arrays[f"{split}_offsets"] = pack(sequences)
        arrays[f"{split}_templates"] = np.asarray(ids, np.int32)
    path = Path(config.run) / TOKENS
    np.savez_compressed(path, **arrays)
    return path
