"""`memefly train`: prepared captions -> a trained decoder in a run directory.

Resumable: run the same command again after an interruption and Keras' BackupAndRestore
picks up at the last finished epoch, with optimizer state. The run directory's config is
authoritative on resume, except for where things are (`run`, `prepared`) and `epochs` and
`max_minutes`.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import keras
from keras import ops

from model_export import run_dir as rd


@dataclass
class ModelConfig:
    embed_dim: int = 128
    context_dim: int = 64
    hidden_dim: int = 256
    dropout: float = 0.1


@dataclass
class TrainConfig:
    prepared: str
    run: str
    model: ModelConfig = field(default_factory=ModelConfig)
    vocab_min_count: int = 5
    vocab_max_size: int = 12000
    max_len: int = 40  # caption tokens; longer ones are cut
    batch_size: int = 128
    epochs: int = 20
    steps_per_epoch: int | None = None  # None: one pass over the training split
    validation_steps: int | None = None  # None: the whole validation split
    learning_rate: float = 2e-3
    patience: int = 3  # early stopping on validation loss
    mix_share: float = 0.3  # share of examples conditioned on a soft template mixture
    exclude_offensive: bool = False
    max_train_captions: int | None = None  # cap for quick experiments (a fixed, seeded subset)
    max_minutes: float | None = None  # stop after this much training time (ends the epoch early)
    # Halve the learning rate when validation loss has not improved for this many epochs (0: off).
    lr_decay_patience: int = 1
    # Start from this trained run's weights (same vocabulary and templates): a longer run
    # continues a shorter one instead of starting again.
    init_from: str | None = None
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        data = dict(data)
        data["model"] = ModelConfig(**data.get("model", {}))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class TargetTokens(keras.metrics.Metric):
    """Counts real (non-padding) target tokens: the history logs it per epoch."""

    def __init__(self, name="tokens", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.total.assign_add(ops.sum(ops.cast(ops.not_equal(y_true, 0), "float32")))

    def result(self):
        # A copy: handing out the variable itself lets validation overwrite the training
        # value already placed in the epoch's logs.
        return ops.copy(self.total)


class RunCompleteError(Exception):
    """The run directory holds a finished run; training it again would start from scratch."""


def split_texts(
    captions, split: str, template_index: dict[str, int], exclude_offensive: bool
) -> tuple[list[str], list[int]]:
    from model_export.text import join_boxes

    rows = [
        c
        for c in captions
        if c.split == split and c.template in template_index and not (exclude_offensive and c.offensive)
    ]
    return [join_boxes(c.boxes) for c in rows], [template_index[c.template] for c in rows]


class TimeLimit(keras.callbacks.Callback):
    """Stops training once the time budget is spent (checked after every batch)."""

    def __init__(self, minutes: float):
        super().__init__()
        self.minutes = minutes

    def on_train_begin(self, logs=None):
        self.deadline = time.monotonic() + self.minutes * 60

    def on_train_batch_end(self, batch, logs=None):
        if time.monotonic() > self.deadline:
            self.model.stop_training = True


class StepCounter(keras.callbacks.Callback):
    """Counts training steps and the time spent in them (for tokens/s)."""

    def __init__(self):
        super().__init__()
        self.steps, self.seconds = 0, 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        self.seconds += time.perf_counter() - self._started


def prepare_run(config: TrainConfig) -> tuple[TrainConfig, list[str], list[dict]]:
    """Create the run directory (vocabulary, template list, config) or reopen it on resume."""
    from model_export.prepare import load_captions, load_templates
    from model_export.text import build_vocabulary, join_boxes, load_vocabulary, save_vocabulary

    run = Path(config.run)
    if (run / rd.FINAL_WEIGHTS).exists():
        raise RunCompleteError(
            f"{run} is already trained ({rd.FINAL_WEIGHTS} exists); choose a new --run to train again"
        )
    if (run / rd.CONFIG).exists():
        saved = TrainConfig.from_dict(json.loads((run / rd.CONFIG).read_text()))
        # Where things are is the command line's to say (a run or data folder may have moved).
        saved.run, saved.prepared = config.run, config.prepared
        saved.epochs, saved.max_minutes = config.epochs, config.max_minutes
        templates = json.loads((run / rd.TEMPLATES).read_text())
        return saved, load_vocabulary(run / rd.VOCABULARY), templates

    captions = load_captions(config.prepared)
    train_templates = {c.template for c in captions if c.split == "train"}
    templates = [
        {"name": t["name"], "title": t["title"], "box_count": t["box_count"]}
        for t in load_templates(config.prepared)
        if t["name"] in train_templates
    ]
    if not templates:
        raise ValueError(f"{config.prepared} has no training captions")
    train_texts = [join_boxes(c.boxes) for c in captions if c.split == "train"]
    vocabulary = build_vocabulary(train_texts, config.vocab_min_count, config.vocab_max_size)
    run.mkdir(parents=True, exist_ok=True)
    save_vocabulary(vocabulary, run / rd.VOCABULARY)
    (run / rd.TEMPLATES).write_text(json.dumps(templates, indent=1, ensure_ascii=False))
    from model_export.caption_stats import annotate

    annotate(run, captions)
    templates = json.loads((run / rd.TEMPLATES).read_text())
    (run / rd.CONFIG).write_text(json.dumps(asdict(config), indent=1))
    return config, vocabulary, templates


def seeded_subset(texts, ids, limit: int | None, seed: int):
    if limit is None or limit >= len(texts):
        return texts, ids
    import numpy as np

    keep = np.sort(np.random.default_rng(seed).choice(len(texts), limit, replace=False))
    return [texts[i] for i in keep], [ids[i] for i in keep]


def _load_initial_weights(model, source: Path, vocabulary: list[str], templates: list[dict]) -> None:
    """Load a trained run's decoder weights into MODEL; its vocabulary and templates must be ours."""
    from model_export.text import load_vocabulary

    if load_vocabulary(source / rd.VOCABULARY) != vocabulary:
        raise ValueError(f"--init-from {source}: its vocabulary differs from this run's")
    if [t["name"] for t in json.loads((source / rd.TEMPLATES).read_text())] != [t["name"] for t in templates]:
        raise ValueError(f"--init-from {source}: its templates differ from this run's")
    model.load_weights(source / rd.FINAL_WEIGHTS)


def train(config: TrainConfig, extra_callbacks=(), verbose: int = 1) -> Path:
    import numpy as np
    import tensorflow as tf

    from memefly.contract import UNK_ID
    from model_export.model import MemeDecoder
    from model_export.pipeline import caption_dataset
    from model_export.prepare import load_captions
    from model_export.text import Tokenizer

    config, vocabulary, templates = prepare_run(config)
    run = Path(config.run)
    keras.utils.set_random_seed(config.seed)
    index = {t["name"]: i for i, t in enumerate(templates)}
    captions = load_captions(config.prepared)
    train_texts, train_ids = seeded_subset(
        *split_texts(captions, "train", index, config.exclude_offensive), config.max_train_captions, config.seed
    )
    val_texts, val_ids = split_texts(captions, "validation", index, config.exclude_offensive)
    tokenizer = Tokenizer(vocabulary)
    common = dict(num_templates=len(templates), batch_size=config.batch_size, max_len=config.max_len)
    train_ds = caption_dataset(
        train_texts, train_ids, tokenizer, shuffle=True, mix_share=config.mix_share, seed=config.seed, **common
    )
    val_ds = caption_dataset(val_texts, val_ids, tokenizer, shuffle=False, **common)
    if config.steps_per_epoch:
        train_ds = train_ds.repeat()

    model = MemeDecoder(len(vocabulary), len(templates), **asdict(config.model)).build_for()
    if config.init_from and not (run / rd.BACKUP).exists():  # on resume the backup has newer weights
        _load_initial_weights(model, Path(config.init_from), vocabulary, templates)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate, clipnorm=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0),
        metrics=[TargetTokens()],
    )
    counter = StepCounter()
    callbacks = [
        keras.callbacks.BackupAndRestore(str(run / rd.BACKUP)),
        keras.callbacks.ModelCheckpoint(
            str(run / rd.BEST_WEIGHTS), monitor="val_loss", save_best_only=True, save_weights_only=True
        ),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True),
        keras.callbacks.CSVLogger(str(run / rd.HISTORY), append=True),
        keras.callbacks.TensorBoard(str(run / rd.TENSORBOARD), write_graph=False),
        counter,
        *extra_callbacks,
    ]
    if config.lr_decay_patience:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=0.5, patience=config.lr_decay_patience, min_lr=1e-5, verbose=verbose
            )
        )
    if config.max_minutes:
        callbacks.append(TimeLimit(config.max_minutes))

    started = time.perf_counter()
    with warnings.catch_warnings():
        # The dataset is shuffled by tf.data, and bucketing leaves its length unknown, which
        # makes Keras warn that the input "ran out of data" at the end of each pass.
        warnings.filterwarnings("ignore", message=".*ran out of data.*")
        history = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.epochs,
            steps_per_epoch=config.steps_per_epoch,
            validation_steps=config.validation_steps,
            callbacks=callbacks,
            shuffle=False,
            verbose=verbose,
        )
    wall = time.perf_counter() - started
    if (run / rd.BEST_WEIGHTS).exists():  # EarlyStopping restores only when it triggers
        model.load_weights(run / rd.BEST_WEIGHTS)
    # The final file holds the model's weights only (no optimizer state): a third of the size.
    final = MemeDecoder(len(vocabulary), len(templates), **asdict(config.model)).build_for()
    final.set_weights(model.get_weights())
    final.save_weights(run / rd.FINAL_WEIGHTS)

    val_tokens = tokenizer.encode(tf.constant(val_texts)).flat_values.numpy() if val_texts else np.zeros(0)
    trained_tokens = sum(history.history.get("tokens", []))
    stats = {
        "train_captions": len(train_texts),
        "validation_captions": len(val_texts),
        "vocabulary_size": len(vocabulary),
        # Coverage: the share of validation tokens the vocabulary does not know.
        "validation_unk_rate": round(float(np.mean(val_tokens == UNK_ID)), 4) if val_tokens.size else None,
        "templates": len(templates),
        "parameters": int(final.count_params()),
        "epochs_run": len(history.history.get("loss", [])),
        "train_steps": counter.steps,
        "train_seconds": round(counter.seconds, 1),
        "wall_seconds": round(wall, 1),
        "train_tokens": int(trained_tokens),  # real target tokens (no padding) this session
        "tokens_per_second": round(trained_tokens / max(counter.seconds, 1e-9)),
        "weights_bytes": (run / rd.FINAL_WEIGHTS).stat().st_size,
    }
    (run / rd.TRAIN_STATS).write_text(json.dumps(stats, indent=1))
    return run
