"""Shared fixtures: a tiny dataset in the ImgFlip575K layout, prepared once, and a tiny trained run.

The tiny dataset takes a few templates from ../shared when that copy is present (read into a
temporary folder, never into the project), else generates captions with template-specific
words, so every test runs on a fresh machine too.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# CI (.ci/run) runs the property tests on hypothesis' fixed examples (derandomize: the same
# inputs every run, so a commit passes or fails on its code, not on the draw) and without the
# per-example deadline a loaded runner misses; everyone else's runs explore new inputs.
hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
# Gateways the tests start keep their uploads and URL secret here, not in the user's data folder.
os.environ.setdefault("MEMEFLY_DATA_DIR", tempfile.mkdtemp(prefix="memefly-tests-"))

from memefly import paths  # noqa: E402

TINY_TEMPLATES = ("Drake-Hotline-Bling", "Grumpy-Cat", "Mocking-Spongebob", "Sparta-Leonidas")
CAPTIONS_PER_TEMPLATE = 300


def shared_dataset_or_skip() -> Path:
    root = paths.dataset_dir()
    if not (root / "dataset" / "memes").is_dir():
        pytest.skip(f"ImgFlip575K copy not found at {root} (set MEMEFLY_DATASET_DIR)")
    return root


def _synthetic_captions(name: str, n: int, rng: random.Random) -> list[dict]:
    """Captions with template-specific words, varied enough to survive de-duplication."""
    topics = {
        "Drake-Hotline-Bling": (
            ["homework", "vegetables", "sleeping early", "taxes"],
            ["memes", "pizza", "gaming all night", "naps"],
        ),
        "Grumpy-Cat": (
            ["i had fun once", "they said smile", "monday again"],
            ["it was awful", "no", "go away", "never"],
        ),
        "Mocking-Spongebob": (
            ["you should study", "eat your greens", "be on time"],
            ["yOu ShOuLd StUdY", "wE nEeD tO tAlK", "bE oN tImE"],
        ),
        "Sparta-Leonidas": (["this is", "tonight we dine in", "madness?"], ["sparta!", "madness?", "my house", "hell"]),
    }
    tops, bottoms = topics.get(name, (["top"], ["bottom"]))
    when = ["", "today", "again", "on friday", "at school", "at work", "in 2020", "every day"]
    who = ["", "me", "my dad", "my teacher", "the cat", "everyone", "my friends"]
    # Bottom boxes vary too: two memes with the same bottom box and another top are one meme
    # told twice (memefly.decoding.distinct), and the answer needs five that are not.
    then = ["", "instead", "all day", "forever", "with friends", "right now", "obviously", "for real"]
    out = []
    for i in range(n):
        top = " ".join(w for w in (rng.choice(tops), rng.choice(when), rng.choice(who)) if w)
        bottom = " ".join(w for w in (rng.choice(bottoms), rng.choice(then)) if w)
        out.append({"post": f"https://example.invalid/{name}/{i}", "url": "", "metadata": {}, "boxes": [top, bottom]})
    return out


def _synthetic_template_image(k: int):
    """A distinct picture per template: shapes at seeded places, so views stay recognisable."""
    from PIL import Image, ImageDraw

    rng = random.Random(k)
    image = Image.new("RGB", (240, 200), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randrange(200), rng.randrange(160)
        box = (x, y, x + rng.randrange(20, 90), y + rng.randrange(20, 90))
        fill = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    return image


def build_tiny_imgflip(root: Path, per_template: int = CAPTIONS_PER_TEMPLATE) -> Path:
    """Write a small ImgFlip575K-layout dataset under root and return root."""
    from PIL import Image

    rng = random.Random(0)
    shared = paths.dataset_dir() / "dataset"
    have_shared = (shared / "memes").is_dir()
    (root / "dataset" / "memes").mkdir(parents=True)
    (root / "dataset" / "templates" / "img").mkdir(parents=True)
    for k, name in enumerate(TINY_TEMPLATES):
        if have_shared and (shared / "memes" / f"{name}.json").exists():
            memes = json.loads((shared / "memes" / f"{name}.json").read_text(encoding="utf-8"))
            memes = rng.sample(memes, min(per_template, len(memes)))
        else:
            memes = _synthetic_captions(name, per_template, rng)
        (root / "dataset" / "memes" / f"{name}.json").write_text(json.dumps(memes))
        meta = {"title": f"{name.replace('-', ' ')} Meme Template", "template_id": str(k)}
        (root / "dataset" / "templates" / f"{name}.json").write_text(json.dumps(meta))
        image_path = shared / "templates" / "img" / f"{name}.jpg"
        image = Image.open(image_path) if image_path.exists() else _synthetic_template_image(k)
        image.convert("RGB").save(root / "dataset" / "templates" / "img" / f"{name}.jpg")
    return root


# Fixtures that train, export, or start a model server: a test that uses one is `slow`, and
# `make test-fast` (pytest -m "not slow") leaves it out. Tests that start processes or a
# browser on their own carry the mark themselves.
SLOW_FIXTURES = frozenset({"tiny_run", "tiny_export", "served_models_dir", "loopback", "site"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return build_tiny_imgflip(tmp_path_factory.mktemp("tiny_imgflip"))


@pytest.fixture(scope="session")
def tiny_prepared(tiny_dataset, tmp_path_factory) -> Path:
    from model_export.prepare import prepare

    out = tmp_path_factory.mktemp("prepared")
    prepare(tiny_dataset, out, progress=False)
    return out


def tiny_train_config(prepared: Path, run: Path, **overrides):
    from model_export.train import ModelConfig, TrainConfig

    settings = dict(
        prepared=str(prepared),
        run=str(run),
        model=ModelConfig(embed_dim=32, context_dim=16, hidden_dim=48, dropout=0.0),
        vocab_min_count=2,
        batch_size=32,
        epochs=4,
        learning_rate=1e-2,
        patience=10,
        seed=1,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="session")
def tiny_run(tiny_prepared, tmp_path_factory) -> Path:
    from model_export.train import train

    return train(tiny_train_config(tiny_prepared, tmp_path_factory.mktemp("runs") / "tiny"), verbose=0)


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("feature_cache")


def tiny_export_config(run: Path, dataset: Path, models: Path, cache: Path, **overrides):
    from model_export.export import ExportConfig

    settings = dict(
        run=str(run),
        models_dir=str(models),
        version=1,
        weights="random",
        seed=0,
        templates_dir=str(dataset / "dataset" / "templates" / "img"),
        fit_views=6,
        calibration_views=3,
        test_views=18,
        non_template_views=24,
        cache_dir=str(cache),
        progress=False,
    )
    settings.update(overrides)
    return ExportConfig(**settings)


@pytest.fixture(scope="session")
def tiny_export(tiny_run, tiny_dataset, feature_cache, tmp_path_factory) -> dict:
    """Both SavedModels of the tiny run, exported once with seeded random InceptionV3 weights."""
    from model_export.export import export

    models = tmp_path_factory.mktemp("models")
    return export(tiny_export_config(tiny_run, tiny_dataset, models, feature_cache))


@pytest.fixture(scope="session")
def served_models_dir(tiny_export) -> Path:
    """ROOT with memefly_encoder/1 and memefly_decoder/1: the tiny export, as a model server sees it."""
    return Path(tiny_export["models"]["memefly_decoder"]).parents[1]


@pytest.fixture(scope="session")
def loopback(served_models_dir):
    """One loopback TF Serving (model_export/loopback_serving.py) over the tiny export for the session."""
    from model_export.loopback_serving import start_loopback_server

    server = start_loopback_server(served_models_dir)
    yield server
    server.close()


@pytest.fixture(scope="module")
def site(served_models_dir, tiny_dataset):
    """A live gateway on the tiny export, in-process, with the template images for rendering."""
    from gateway_harness import gateway_settings, running_gateway

    settings = gateway_settings(
        served_models_dir, "inprocess", templates_dir=tiny_dataset / "dataset" / "templates" / "img"
    )
    with running_gateway(settings) as running:
        yield running
