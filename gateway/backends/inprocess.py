"""The two SavedModels loaded with TensorFlow in this process: for a machine without Docker.

Signatures run on worker threads (TensorFlow releases the GIL), never on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from gateway.errors import ModelError, ModelUnavailable
from gateway.settings import Settings
from memefly import contract as c
from memefly.paths import exported_pairs

MODELS = (c.ENCODER_MODEL, c.DECODER_MODEL)


def pick_version(models_dir: Path, wanted: int | None) -> int:
    """The pinned version if both models have it, else the newest version both have."""
    common = exported_pairs(models_dir)
    if wanted is not None:
        if wanted not in common:
            raise ModelUnavailable(
                f"models version {wanted} is not in {models_dir} for both models "
                f"(found {sorted(common) or 'none'}); run `memefly export --version {wanted}`"
            )
        return wanted
    if not common:
        raise ModelUnavailable(
            f"no exported model pair in {models_dir}: run `memefly export` (or set MEMEFLY_MODELS_DIR)"
        )
    return max(common)


class InProcessBackend:
    name = "inprocess"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.version: int | None = None
        self._signatures: dict[str, dict[str, Any]] = {}  # TensorFlow's concrete functions, by model and name
        self._modules: list[Any] = []
        # One thread per model: a long encoder batch never delays a decoder step, and the
        # decoder's thread stays warm for the step-after-step loop.
        self._executors = {model: ThreadPoolExecutor(max_workers=1, thread_name_prefix=model) for model in MODELS}

    async def start(self) -> None:
        if self._signatures:
            return
        version = pick_version(Path(self.settings.models_dir), self.settings.model_version)
        loop = asyncio.get_running_loop()
        self._signatures = await loop.run_in_executor(self._executors[c.DECODER_MODEL], self._load, version)
        self.version = version

    def _load(self, version: int) -> dict[str, dict[str, Any]]:
        import tensorflow as tf

        loaded = {}
        for model in MODELS:
            saved = tf.saved_model.load(str(Path(self.settings.models_dir) / model / str(version)))
            self._modules.append(saved)  # the signatures need their module (variables) alive
            loaded[model] = dict(saved.signatures)
        return loaded

    async def predict(
        self, model: str, signature: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        if not self._signatures:
            raise ModelUnavailable("models are not loaded yet", retry_after_s=self.settings.retry_after_s)
        function = self._signatures[model].get(signature)
        if function is None:
            raise ModelError(f"{model} v{self.version} has no signature {signature!r}")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executors[model], _run, function, model, signature, inputs, outputs)

    async def reset(self) -> None:
        """Nothing to reconnect: the models live in this process."""

    async def close(self) -> None:
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)


def _run(
    function: Callable[..., Any], model: str, signature: str, inputs: dict[str, np.ndarray], outputs: list[str] | None
) -> dict[str, np.ndarray]:
    import tensorflow as tf

    try:
        result = function(**{name: tf.constant(value) for name, value in inputs.items()})
    except (TypeError, ValueError, tf.errors.OpError) as error:  # as TF Serving would answer: a model error
        raise ModelError(f"{model} ({signature}) rejected the call: {str(error)[:500]}") from None
    wanted = outputs or list(result)
    return {name: result[name].numpy() for name in wanted}
