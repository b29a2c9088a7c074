"""What the commands share: their one error type, TensorFlow kept quiet, the models a local run serves."""

from __future__ import annotations

import os
from pathlib import Path


class CommandError(Exception):
    """What a command says when it cannot do its job (bad arguments, missing data, models not
    found): `memefly` prints it after "error: " and exits with 2, never a traceback."""


def quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def with_built_models(settings):
    """In-process settings pinned to a served pair: the exported one, or one built now from
    the default model (model_export.first_run). A failed build is a CommandError (its message
    says which setting to point where)."""
    from model_export.first_run import BuildError, BuildSettings, ensure_models

    try:
        version = ensure_models(BuildSettings(models_dir=Path(settings.models_dir)))
    except BuildError as e:
        raise CommandError(str(e)) from e
    return settings if settings.model_version is not None else settings.replace(model_version=version)
