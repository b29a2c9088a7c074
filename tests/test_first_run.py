"""The first start: serving models built from the default decoder, reused, rebuilt when it changes,
and a clear message for every missing piece (here with the tiny run standing in for the default)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from net import free_port, unreachable_url, wait_until_ready

from memefly import contract as c
from memefly import paths
from model_export import first_run
from model_export.first_run import BuildError, BuildSettings, ensure_models, read_record


@pytest.fixture
def settings(tiny_run, tiny_dataset, feature_cache, tmp_path) -> BuildSettings:
    images = tiny_dataset / "dataset" / "templates" / "img"
    return BuildSettings(
        models_dir=tmp_path / "models",
        run=tiny_run,
        weights="random",
        seed=0,
        templates_dir=images,
        download_dir=images,
        templates_url=unreachable_url(),
        cache_dir=feature_cache,
        progress=False,
    )


def no_build(monkeypatch):
    import model_export.export

    monkeypatch.setattr(model_export.export, "export", lambda config: pytest.fail("built again"))


def changed_copy(run: Path, to: Path) -> Path:
    """The run with other weights: what a new default model release looks like."""
    from model_export.run_dir import FINAL_WEIGHTS, load_run

    shutil.copytree(run, to)
    trained = load_run(to)
    trained.model.set_weights([w * 0.9 for w in trained.model.get_weights()])
    trained.model.save_weights(to / FINAL_WEIGHTS)
    return to


def test_built_once_reused_then_rebuilt_when_the_model_changes(settings, tmp_path, monkeypatch):
    logs: list[str] = []
    assert ensure_models(settings, log=logs.append) == 1
    assert "no exported models" in logs[0]
    assert paths.exported_pairs(settings.models_dir) == {1}
    record = read_record(settings.models_dir, 1)
    assert record["version"] == 1 and record["encoder_weights"] == "random-seed0"

    with monkeypatch.context() as patch:
        no_build(patch)
        assert ensure_models(settings) == 1  # a later start: nothing to do

    changed = replace(settings, run=changed_copy(settings.run, tmp_path / "new_default"))
    assert ensure_models(changed, log=logs.append) == 2
    assert "changed" in logs[-1]
    assert paths.exported_pairs(settings.models_dir) == {1, 2}  # the one before stays for running gateways
    assert read_record(settings.models_dir, 2)["decoder_run_fingerprint"] == first_run.run_fingerprint(changed.run)

    # A new way of building the encoder (augmentations, the known-template threshold): built again.
    newer = first_run.ENCODER_RECIPE + 1
    with monkeypatch.context() as patch:
        patch.setattr(first_run, "ENCODER_RECIPE", newer)
        wanted = []
        patch.setattr(first_run, "_build", lambda settings, record: wanted.append(record) or 3)
        assert ensure_models(changed, log=logs.append) == 3
        assert wanted[0]["encoder_recipe"] == newer and "how the encoder is built" in logs[-1]

    # The user exports over the newest version number: theirs now, never rebuilt or deleted.
    for model in (c.ENCODER_MODEL, c.DECODER_MODEL):
        (settings.models_dir / model / "2" / "assets.extra" / first_run.RECORD).unlink()
    with monkeypatch.context() as patch:
        no_build(patch)
        assert ensure_models(settings) == 2


def test_models_the_user_exported_are_served_as_they_are(settings, served_models_dir, monkeypatch):
    no_build(monkeypatch)
    assert ensure_models(replace(settings, models_dir=served_models_dir)) == 1
    assert read_record(served_models_dir, 1) is None


def test_only_the_newest_builds_are_kept(tmp_path):
    models = tmp_path / "models"
    for version in (1, 2, 3, 4):
        for model in (c.ENCODER_MODEL, c.DECODER_MODEL):
            extra = models / model / str(version) / "assets.extra"
            extra.mkdir(parents=True)
            (extra.parent / "saved_model.pb").write_bytes(b"")
            if version != 1:  # version 1 is the user's own export
                (extra / first_run.RECORD).write_text(json.dumps({"version": version}))
    first_run._remove_old_builds(models)
    assert paths.exported_pairs(models) == {1, 3, 4}


def nothing_built(models_dir: Path) -> bool:
    return not paths.exported_pairs(models_dir) and not list(models_dir.glob("*/.tmp-*"))


def test_missing_template_images_offline_say_which_setting(settings, tmp_path):
    offline = replace(settings, templates_dir=tmp_path / "no_images", download_dir=tmp_path / "downloads")
    with pytest.raises(BuildError, match="template images missing.*MEMEFLY_TEMPLATES_DIR"):
        ensure_models(offline)
    assert nothing_built(settings.models_dir)
    assert not list((tmp_path / "downloads").glob("*.jpg"))


def test_a_missing_weights_file_says_which_setting(settings, tmp_path):
    with pytest.raises(BuildError, match="MEMEFLY_ENCODER_WEIGHTS"):
        ensure_models(replace(settings, weights=str(tmp_path / "inception.h5")))
    assert nothing_built(settings.models_dir)


def test_imagenet_weights_offline_say_which_setting(settings, monkeypatch):
    """Keras' download failing as it does offline (patched here: a test must not depend on
    the network, and an unreachable host can make it hang)."""
    import keras

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] name resolution")

    monkeypatch.setattr(keras.applications, "InceptionV3", offline)
    with pytest.raises(BuildError, match="MEMEFLY_ENCODER_WEIGHTS.*random"):
        ensure_models(replace(settings, weights="imagenet"))
    assert nothing_built(settings.models_dir)


def test_serve_builds_on_first_start_and_serves(settings, tmp_path):
    port = free_port()
    env = dict(
        os.environ,
        MEMEFLY_MODELS_DIR=str(settings.models_dir),
        MEMEFLY_DECODER_RUN=str(settings.run),
        MEMEFLY_ENCODER_WEIGHTS="random",
        MEMEFLY_TEMPLATES_DIR=str(settings.templates_dir),
        MEMEFLY_CACHE_DIR=str(settings.cache_dir),
        MEMEFLY_BACKEND="inprocess",
    )
    log = tmp_path / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "memefly.cli", "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", process, 300, log)
        response = httpx.post(f"http://127.0.0.1:{port}/memes", json={"template": "Sparta-Leonidas"}, timeout=60)
        assert response.status_code == 200 and len(response.json()["memes"]) == 5
        assert response.json()["model"]["version"] == "1"
    finally:
        process.terminate()
        process.wait(30)
    assert "building the serving models" in log.read_text()
    assert paths.exported_pairs(settings.models_dir) == {1}


def test_serve_offline_without_images_exits_with_the_setting_to_change(settings, tmp_path):
    env = dict(
        os.environ,
        MEMEFLY_MODELS_DIR=str(tmp_path / "empty"),
        MEMEFLY_DECODER_RUN=str(settings.run),
        MEMEFLY_ENCODER_WEIGHTS="random",
        MEMEFLY_TEMPLATES_DIR=str(tmp_path / "no_images"),
        MEMEFLY_TEMPLATES_URL=unreachable_url(),
        MEMEFLY_BACKEND="inprocess",
    )
    result = subprocess.run(
        [sys.executable, "-m", "memefly.cli", "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "MEMEFLY_TEMPLATES_DIR" in result.stderr and "Traceback" not in result.stderr


def test_run_fingerprint_follows_the_weights(tiny_run, tmp_path):
    assert first_run.run_fingerprint(tiny_run) == first_run.run_fingerprint(tiny_run)
    assert first_run.run_fingerprint(changed_copy(tiny_run, tmp_path / "c")) != first_run.run_fingerprint(tiny_run)
    with pytest.raises(BuildError, match="MEMEFLY_DECODER_RUN"):
        first_run.run_fingerprint(tmp_path)
