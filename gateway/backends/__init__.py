"""Where the two models run: TF Serving over gRPC, or the same SavedModels in this process.

Both backends offer one call, `predict(model, signature, inputs, outputs)`, with TF Serving's
meaning (named numpy inputs in, named numpy outputs out) and raise gateway errors only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # annotations only: the gRPC path imports without pydantic (tests/test_slim_protos.py)
    from gateway.settings import Settings


class Backend(Protocol):
    name: str
    version: int | None  # the pinned version of both models, once known

    async def start(self) -> None: ...

    async def predict(
        self, model: str, signature: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]: ...

    async def close(self) -> None: ...

    async def reset(self) -> None:
        """A check of the model servers failed: drop connections, so the next call starts afresh."""


def make_backend(settings: Settings) -> Backend:
    if settings.backend == "grpc":
        from gateway.backends.grpc_backend import GrpcBackend

        return GrpcBackend(settings)
    from gateway.backends.inprocess import InProcessBackend

    return InProcessBackend(settings)
