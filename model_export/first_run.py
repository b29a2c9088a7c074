"""Serving models for `memefly serve` and `memefly generate` when none were exported.

With no exported pair in the models folder, the shipped default decoder (or
$MEMEFLY_DECODER_RUN) is exported together with an InceptionV3 encoder, fetching the
template images first when they are not there. Each build carries a record of what it was
made from inside its own version folders (`assets.extra/default_build.json`, written before
the versions are renamed into place, so a version has its record from its first moment or
is not there at all). A later start serves the newest pair: if it is a build whose record
matches, as it is; if it is a build whose decoder or encoder weights changed, after
building the next version. A pair without a record (`memefly export`, even over a built
version number) is the user's and is served as it is, never rebuilt or deleted.

Every failure says which setting to point where; `export` writes into hidden folders and
renames at the end, so a failed build leaves no version behind. A lock file keeps two
starts from building at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from memefly import contract as c
from memefly import paths
from model_export import run_dir as rd

RECORD = "default_build.json"  # in assets.extra/ of both models' version folders
# Fewer views than `memefly export` (20/6/18): a first start must finish in minutes on a
# laptop. Most of them go to fitting, which is what recognition gains from; two held-out
# views per template still give each kind ~20 for the log.
FIT_VIEWS, CALIBRATION_VIEWS, TEST_VIEWS = 16, 3, 2
KEEP_BUILDS = 2  # the new build and the one before it (a running gateway may still serve it)
# Bumped when how the encoder is built changes (augmentations, views, the known-template threshold):
# a build made before is built again at the next start, as a changed default model is.
ENCODER_RECIPE = 5


class BuildError(Exception):
    pass


@dataclass
class BuildSettings:
    models_dir: Path = field(default_factory=paths.models_dir)
    run: Path = field(default_factory=paths.decoder_run)
    weights: str = field(default_factory=paths.encoder_weights)
    seed: int = 0
    templates_dir: Path = field(default_factory=paths.templates_dir)  # read from here if complete
    download_dir: Path = field(default_factory=paths.templates_download_dir)  # else fetch into here
    templates_url: str = field(default_factory=paths.templates_url)
    cache_dir: Path = field(default_factory=paths.cache_dir)
    progress: bool = True


def run_fingerprint(run: Path) -> str:
    """SHA-256 over what defines a trained decoder: its settings, vocabulary, templates, weights,
    training-caption fingerprints."""
    weights = run / rd.FINAL_WEIGHTS if (run / rd.FINAL_WEIGHTS).exists() else run / rd.BEST_WEIGHTS
    digest = hashlib.sha256()
    for path in (run / rd.CONFIG, run / rd.VOCABULARY, run / rd.TEMPLATES, weights):
        if not path.is_file():
            raise BuildError(
                f"{run} is not a trained decoder ({path.name} missing): point MEMEFLY_DECODER_RUN "
                "at a `memefly train` run, or unset it for the shipped default model"
            )
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    if (run / rd.TRAINING_CAPTIONS).is_file():  # optional: runs made before it have none
        digest.update(rd.TRAINING_CAPTIONS.encode() + b"\0" + (run / rd.TRAINING_CAPTIONS).read_bytes())
    return digest.hexdigest()


def _wanted(settings: BuildSettings) -> dict:
    from model_export.encoder import weights_id

    try:
        weights = weights_id(settings.weights, settings.seed)
    except OSError:
        raise BuildError(
            f"InceptionV3 weights file not found: {settings.weights}: set MEMEFLY_ENCODER_WEIGHTS to "
            "an existing no-top weights file, `imagenet` (Keras' download) or `random`"
        ) from None
    return {
        "decoder_run_fingerprint": run_fingerprint(Path(settings.run)),
        "encoder_weights": weights,
        "encoder_recipe": ENCODER_RECIPE,
    }


def read_record(models_dir: Path, version: int) -> dict | None:
    """The build record of a version, if both of its models carry the same one."""
    records = []
    for model in (c.ENCODER_MODEL, c.DECODER_MODEL):
        try:
            records.append(json.loads((Path(models_dir) / model / str(version) / "assets.extra" / RECORD).read_text()))
        except (OSError, ValueError):
            return None
    return records[0] if records[0] == records[1] else None


@contextmanager
def _build_lock(models_dir: Path):
    models_dir.mkdir(parents=True, exist_ok=True)
    with (models_dir / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second start waits here, then finds the build done
        yield


def ensure_models(settings: BuildSettings, log: Callable[[str], None] = print) -> int:
    """The version to serve from settings.models_dir, building it first if needed."""
    models_dir = Path(settings.models_dir)
    pairs = paths.exported_pairs(models_dir)
    if pairs and read_record(models_dir, max(pairs)) is None:
        return max(pairs)  # the user's own export: served as it is
    wanted = _wanted(settings)
    try:
        with _build_lock(models_dir):
            pairs = paths.exported_pairs(models_dir)  # again: another start may have built meanwhile
            record = read_record(models_dir, max(pairs)) if pairs else None
            if pairs and (record is None or all(record.get(k) == v for k, v in wanted.items())):
                return max(pairs)
            reason = (
                "the default model, the encoder weights or how the encoder is built changed"
                if pairs
                else f"no exported models in {models_dir}"
            )
            log(
                f"building the serving models ({reason}): decoder {settings.run}, encoder weights "
                f"{wanted['encoder_weights']}"
            )
            return _build(settings, wanted)
    except OSError as error:  # a read-only or full models folder
        raise BuildError(
            f"cannot build into {models_dir} ({error}): set MEMEFLY_MODELS_DIR to a writable folder"
        ) from None


def _build(settings: BuildSettings, wanted: dict) -> int:
    from model_export.export import ExportConfig, ExportError, export

    models_dir = Path(settings.models_dir)
    names = rd.read_template_names(settings.run)
    templates_dir = ensure_template_images(settings, names)
    taken = paths.exported_versions(models_dir, c.ENCODER_MODEL) | paths.exported_versions(models_dir, c.DECODER_MODEL)
    version = max(taken, default=0) + 1
    record = {**wanted, "version": version, "decoder_run": str(settings.run)}
    config = ExportConfig(
        run=str(settings.run),
        models_dir=str(models_dir),
        version=version,
        weights=settings.weights,
        seed=settings.seed,
        templates_dir=str(templates_dir),
        fit_views=FIT_VIEWS,
        calibration_views=CALIBRATION_VIEWS,
        test_views=TEST_VIEWS,
        cache_dir=str(settings.cache_dir),
        progress=settings.progress,
        describe=False,  # `memefly export` writes that description; a first start need not wait
        extra_assets={RECORD: json.dumps(record, indent=1)},
    )
    try:
        export(config)
    except (ExportError, RuntimeError, OSError) as error:
        raise BuildError(_explain(error, settings)) from None
    _remove_old_builds(models_dir)
    return version


def _remove_old_builds(models_dir: Path) -> None:
    """Builds (never user exports) beyond the newest KEEP_BUILDS."""
    builds = sorted(v for v in paths.exported_pairs(models_dir) if read_record(models_dir, v) is not None)
    for version in builds[:-KEEP_BUILDS]:
        for model in (c.ENCODER_MODEL, c.DECODER_MODEL):
            shutil.rmtree(models_dir / model / str(version), ignore_errors=True)


def ensure_template_images(settings: BuildSettings, names: list[str]) -> Path:
    """A folder holding <Name>.jpg|png for every template: the templates folder, else the
    download folder, fetching what is missing."""
    from model_export.download import DownloadError, download_templates
    from model_export.export import ExportError, find_template_images

    for folder in dict.fromkeys((Path(settings.templates_dir), Path(settings.download_dir))):
        try:
            find_template_images(names, folder)
            return folder
        except ExportError:
            continue
    try:
        download_templates(settings.download_dir, settings.templates_url, names, progress=settings.progress)
    except (DownloadError, OSError) as error:
        raise BuildError(
            f"template images missing in {settings.templates_dir}, and downloading them into "
            f"{settings.download_dir} failed: {error}"
        ) from None
    return Path(settings.download_dir)


def _explain(error: Exception, settings: BuildSettings) -> str:
    if settings.weights == "imagenet" and "ImageNet" in str(error):
        return (
            "could not get Keras' ImageNet InceptionV3 weights (offline?): set MEMEFLY_ENCODER_WEIGHTS to a "
            "local no-top weights file, or to `random` (seeded; templates are still recognised)"
        )
    return f"building the serving models failed: {error}"
