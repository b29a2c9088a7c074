"""Train a run's decoder from its token arrays with any Keras 3 backend; no TensorFlow needed.

The GPU path (docs/training.md): tokenize here, train where the GPU is, evaluate and export here.

    memefly train --run runs/gpu --tokenize-only ...          # this machine: RUN/tokens.npz
    KERAS_BACKEND=jax python -m model_export.train_arrays runs/gpu   # the GPU machine
    memefly evaluate runs/gpu                                   # back here (TensorFlow backend)

It reads RUN/config.json (what `memefly train` wrote: sizes, batch, learning rate, epochs...)
and writes what `memefly train` writes: best.weights.h5, decoder.weights.h5 (weights only),
history.csv, train_stats.json. Keras 3 weight files do not depend on the backend that wrote
them (tests/test_train_arrays.py checks the step parity across backends).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import keras
import numpy as np

from model_export.model import MemeDecoder

# Run-directory names, as model_export.run_dir has them (that module imports TensorFlow).
CONFIG, VOCABULARY, TEMPLATES = "config.json", "vocabulary.txt", "templates.json"
BEST, FINAL, HISTORY, STATS, BACKUP, TOKENS = (
    "best.weights.h5",
    "decoder.weights.h5",
    "history.csv",
    "train_stats.json",
    "backup-arrays",
    "tokens.npz",
)
START_ID, END_ID, PAD_ID = 1, 2, 0  # memefly.contract's ids (checked by a test)
# Padded lengths (with <start>/<end>): few shapes, so a compiling backend compiles few programs.
LENGTHS = (10, 14, 18, 22, 30, 42)


def template_mixture(template_id: int, rng: np.random.Generator, num_templates: int, mix_share: float) -> np.ndarray:
    """One-hot, or with probability mix_share a mixture led by the true template (0.5-0.9),
    the rest over 1-3 others: as model_export.pipeline does in TensorFlow."""
    probs = np.zeros(num_templates, np.float32)
    probs[template_id] = 1.0
    others_max = min(3, num_templates - 1)
    if others_max < 1 or mix_share <= 0 or rng.random() >= mix_share:
        return probs
    true_weight = rng.uniform(0.5, 0.9)
    others = rng.choice(
        np.delete(np.arange(num_templates), template_id), rng.integers(1, others_max + 1), replace=False
    )
    share = rng.uniform(0.1, 1.0, len(others))
    probs *= true_weight
    probs[others] = share / share.sum() * (1.0 - true_weight)
    return probs


class CaptionBatches(keras.utils.PyDataset):
    """Batches of ({"template_probs": [B, T], "tokens": [B, L]}, targets [B, L]), captions of
    similar length together, padded to a few fixed lengths; reshuffled each epoch."""

    def __init__(
        self,
        ids,
        offsets,
        templates,
        *,
        num_templates: int,
        batch_size: int,
        max_len: int,
        mix_share: float,
        seed: int,
        shuffle: bool,
    ):
        super().__init__()
        self.ids, self.offsets, self.templates = ids, offsets, templates
        self.num_templates, self.batch_size, self.max_len = num_templates, batch_size, max_len
        self.mix_share, self.shuffle = mix_share, shuffle
        self.rng = np.random.default_rng(seed)
        self.lengths = np.minimum(np.diff(offsets), max_len) + 2
        self.tokens = 0  # real target tokens handed out (tokens/s)
        self._plan()

    def _plan(self) -> None:
        order = self.rng.permutation(len(self.templates)) if self.shuffle else np.arange(len(self.templates))
        limits = [n for n in LENGTHS if n < self.max_len + 2] + [self.max_len + 2]
        bucket = np.searchsorted(limits, self.lengths[order])
        batches = []
        for b in range(len(limits)):
            members = order[bucket == b]
            batches += [(limits[b], members[i : i + self.batch_size]) for i in range(0, len(members), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in self.rng.permutation(len(batches))]
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        width, members = self.batches[index]
        sequences = np.full((self.batch_size, width), PAD_ID, np.int32)  # unused rows stay padding
        probs = np.zeros((self.batch_size, self.num_templates), np.float32)
        for row, i in enumerate(members):
            words = self.ids[self.offsets[i] : self.offsets[i + 1]][: self.max_len]
            sequences[row, : len(words) + 2] = np.concatenate([[START_ID], words, [END_ID]])
            probs[row] = template_mixture(int(self.templates[i]), self.rng, self.num_templates, self.mix_share)
        probs[len(members) :, 0] = 1.0  # padding rows: a valid template vector, no targets
        targets = sequences[:, 1:]
        self.tokens += int((targets != PAD_ID).sum())
        return {"template_probs": probs, "tokens": sequences[:, :-1]}, targets

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self._plan()


class TimeLimit(keras.callbacks.Callback):
    def __init__(self, minutes: float):
        super().__init__()
        self.deadline = time.monotonic() + minutes * 60

    def on_train_batch_end(self, batch, logs=None):
        if time.monotonic() > self.deadline:
            self.model.stop_training = True


def _load_initial(model, source: Path, run: Path) -> None:
    if (source / VOCABULARY).read_text(encoding="utf-8") != (run / VOCABULARY).read_text(encoding="utf-8"):
        raise ValueError(f"init_from {source}: its vocabulary differs from this run's")
    mine = [t["name"] for t in json.loads((run / TEMPLATES).read_text())]
    if [t["name"] for t in json.loads((source / TEMPLATES).read_text())] != mine:
        raise ValueError(f"init_from {source}: its templates differ from this run's")
    model.load_weights(source / FINAL)


def train_arrays(run: Path, verbose: int = 2, max_minutes: float | None = None, epochs: int | None = None) -> dict:
    config = json.loads((run / CONFIG).read_text())
    vocabulary_size = len((run / VOCABULARY).read_text(encoding="utf-8").rstrip("\n").split("\n"))
    num_templates = len(json.loads((run / TEMPLATES).read_text()))
    arrays = np.load(run / TOKENS)
    keras.utils.set_random_seed(config["seed"])
    common = dict(num_templates=num_templates, batch_size=config["batch_size"], max_len=config["max_len"])
    train = CaptionBatches(
        arrays["train_ids"],
        arrays["train_offsets"],
        arrays["train_templates"],
        shuffle=True,
        mix_share=config["mix_share"],
        seed=config["seed"],
        **common,
    )
    validation = CaptionBatches(
        arrays["validation_ids"],
        arrays["validation_offsets"],
        arrays["validation_templates"],
        shuffle=False,
        mix_share=0.0,
        seed=config["seed"],
        **common,
    )

    model = MemeDecoder(vocabulary_size, num_templates, **config["model"]).build_for()
    if config.get("init_from") and not (run / BACKUP).exists():
        _load_initial(model, Path(config["init_from"]), run)
    model.compile(
        optimizer=keras.optimizers.Adam(config["learning_rate"], clipnorm=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD_ID),
    )
    callbacks = [
        keras.callbacks.BackupAndRestore(str(run / BACKUP)),
        keras.callbacks.ModelCheckpoint(
            str(run / BEST), monitor="val_loss", save_best_only=True, save_weights_only=True
        ),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config["patience"], restore_best_weights=True),
        keras.callbacks.CSVLogger(str(run / HISTORY), append=True),
    ]
    if config.get("lr_decay_patience"):
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=0.5, patience=config["lr_decay_patience"], min_lr=1e-5
            )
        )
    minutes = max_minutes if max_minutes is not None else config.get("max_minutes")
    if minutes:
        callbacks.append(TimeLimit(minutes))
    started = time.perf_counter()
    history = model.fit(
        train,
        validation_data=validation,
        epochs=epochs or config["epochs"],
        steps_per_epoch=config.get("steps_per_epoch"),
        validation_steps=config.get("validation_steps"),
        callbacks=callbacks,
        verbose=verbose,
    )
    seconds = time.perf_counter() - started
    if (run / BEST).exists():
        model.load_weights(run / BEST)
    final = MemeDecoder(vocabulary_size, num_templates, **config["model"]).build_for()
    final.set_weights(model.get_weights())
    final.save_weights(run / FINAL)
    stats = {
        "backend": keras.backend.backend(),
        "train_captions": len(arrays["train_templates"]),
        "validation_captions": len(arrays["validation_templates"]),
        "vocabulary_size": vocabulary_size,
        "templates": num_templates,
        "parameters": int(final.count_params()),
        "epochs_run": len(history.history.get("loss", [])),
        "best_val_loss": float(min(history.history.get("val_loss", [float("nan")]))),
        "wall_seconds": round(seconds, 1),
        "train_tokens": train.tokens,  # real target tokens of the training batches handed out
        "tokens_per_second": round(train.tokens / max(seconds, 1e-9)),
        "weights_bytes": (run / FINAL).stat().st_size,
    }
    (run / STATS).write_text(json.dumps(stats, indent=1))
    return stats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run directory with tokens.npz (memefly train --tokenize-only)")
    parser.add_argument("--max-minutes", type=float, help="override the run's time budget")
    parser.add_argument("--epochs", type=int, help="override the run's epochs")
    args = parser.parse_args(argv)
    if not (args.run / TOKENS).exists():
        print(
            f"error: no {TOKENS} in {args.run}: run `memefly train --run {args.run} --tokenize-only` first",
            file=sys.stderr,
        )
        return 2
    if (args.run / FINAL).exists():
        print(f"error: {args.run} is already trained ({FINAL} exists)", file=sys.stderr)
        return 2
    print(
        json.dumps(
            train_arrays(
                args.run, verbose=1 if sys.stdout.isatty() else 2, max_minutes=args.max_minutes, epochs=args.epochs
            ),
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
