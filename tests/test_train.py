"""Training: the loss falls, the run directory is complete, an interrupted run resumes."""

import csv
import json

import keras
import pytest
from conftest import tiny_train_config

from memefly.cli import main
from memefly.contract import UNK_ID
from model_export import run_dir as rd
from model_export.train import train


def history(run):
    with open(run / rd.HISTORY) as f:
        return list(csv.DictReader(f))


def test_tiny_run_learns(tiny_run):
    rows = history(tiny_run)
    assert len(rows) == 4
    assert float(rows[-1]["loss"]) < 0.9 * float(rows[0]["loss"])
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])


def test_tokens_are_counted_exactly(tiny_run, tiny_prepared):
    import numpy as np

    from model_export.prepare import load_captions
    from model_export.text import Tokenizer, join_boxes, load_vocabulary

    tokenizer = Tokenizer(load_vocabulary(tiny_run / rd.VOCABULARY))
    config = json.loads((tiny_run / rd.CONFIG).read_text())
    templates = {t["name"] for t in json.loads((tiny_run / rd.TEMPLATES).read_text())}
    captions = load_captions(tiny_prepared)

    def target_tokens(split):  # words (cut at max_len) + <end>, per caption
        texts = [join_boxes(c.boxes) for c in captions if c.split == split and c.template in templates]
        return sum(min(len(ids), config["max_len"]) + 1 for ids in tokenizer.encode_texts(texts))

    rows = history(tiny_run)
    assert all(float(r["tokens"]) == target_tokens("train") for r in rows)  # one full pass per epoch
    assert all(float(r["val_tokens"]) == target_tokens("validation") for r in rows)
    assert target_tokens("train") != target_tokens("validation")

    # Coverage reported by train: the share of validation tokens outside the vocabulary.
    val_texts = [join_boxes(c.boxes) for c in captions if c.split == "validation" and c.template in templates]
    ids = np.concatenate(tokenizer.encode_texts(val_texts))
    stats = json.loads((tiny_run / rd.TRAIN_STATS).read_text())
    assert stats["validation_unk_rate"] == round(float(np.mean(ids == UNK_ID)), 4)


def test_run_directory_holds_everything_needed(tiny_run):
    for name in (
        rd.CONFIG,
        rd.VOCABULARY,
        rd.TEMPLATES,
        rd.FINAL_WEIGHTS,
        rd.BEST_WEIGHTS,
        rd.TRAIN_STATS,
        rd.TENSORBOARD,
    ):
        assert (tiny_run / name).exists(), name
    templates = json.loads((tiny_run / rd.TEMPLATES).read_text())
    assert [t["name"] for t in templates] == sorted(t["name"] for t in templates)
    assert all(t["box_count"] >= 1 for t in templates)
    stats = json.loads((tiny_run / rd.TRAIN_STATS).read_text())
    assert stats["tokens_per_second"] > 0 and stats["parameters"] > 0
    assert not (tiny_run / rd.BACKUP).exists()  # a finished run leaves no resume state


class InterruptAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt("simulated Ctrl-C")


@pytest.mark.slow
def test_interrupted_run_resumes_where_it_stopped(tiny_prepared, tmp_path):
    config = tiny_train_config(tiny_prepared, tmp_path / "run", epochs=4, max_train_captions=200)
    with pytest.raises(KeyboardInterrupt):
        train(config, extra_callbacks=[InterruptAfterEpoch(1)], verbose=0)
    assert (tmp_path / "run" / rd.BACKUP).exists()
    assert [r["epoch"] for r in history(tmp_path / "run")] == ["0", "1"]

    train(config, verbose=0)  # the same command again
    assert [r["epoch"] for r in history(tmp_path / "run")] == ["0", "1", "2", "3"]
    stats = json.loads((tmp_path / "run" / rd.TRAIN_STATS).read_text())
    assert stats["epochs_run"] == 2  # only the missing epochs ran


@pytest.mark.slow
def test_resume_keeps_the_saved_settings(tiny_prepared, tmp_path):
    first = tiny_train_config(tiny_prepared, tmp_path / "run", epochs=2, max_train_captions=100)
    with pytest.raises(KeyboardInterrupt):
        train(first, extra_callbacks=[InterruptAfterEpoch(0)], verbose=0)
    changed = tiny_train_config(tiny_prepared, tmp_path / "run", epochs=2, vocab_min_count=50, max_train_captions=100)
    train(changed, verbose=0)
    saved = json.loads((tmp_path / "run" / rd.CONFIG).read_text())
    assert saved["vocab_min_count"] == first.vocab_min_count


def test_a_finished_run_is_not_trained_again_from_scratch(tiny_run, capsys):
    before = (tiny_run / rd.FINAL_WEIGHTS).stat().st_mtime_ns
    assert (
        main(
            ["train", "--run", str(tiny_run), "--prepared", json.loads((tiny_run / rd.CONFIG).read_text())["prepared"]]
        )
        == 2
    )
    assert "already trained" in capsys.readouterr().err
    assert (tiny_run / rd.FINAL_WEIGHTS).stat().st_mtime_ns == before
