"""TF Serving's PredictionService over gRPC (grpc.aio), without TensorFlow.

Every call names the model, the pinned version and the signature, carries a deadline,
and is retried with exponential backoff on UNAVAILABLE only (the server never saw it, or
is restarting): other failures would fail again, or may already have done work.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING

import grpc
import numpy as np

from gateway.backends.protos import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from gateway.backends.tensors import from_proto, to_proto
from gateway.errors import DeadlineExceeded, GatewayError, ModelError, ModelUnavailable, WrongTarget
from memefly import contract as c

if TYPE_CHECKING:  # annotations only: the gRPC path imports without pydantic (tests/test_slim_protos.py)
    from gateway.settings import Settings

# The model server is at fault (or absent) for these; anything else means the call itself
# was wrong, which is a gateway/model mismatch, never the HTTP client's fault.
_UNAVAILABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED,
}
# The settings that place each model: named in every message about a target.
_ROLES = {c.ENCODER_MODEL: "ENCODER", c.DECODER_MODEL: "DECODER"}
log = logging.getLogger(__name__)
TARGET_CHECK_TIMEOUT_S = 2.0  # a server that does not answer this soon is left to the readiness checks


def channel_options(settings: Settings) -> list[tuple[str, int | str]]:
    return [
        # Decoder batches (1024 rows x state) and encoder batches of big images exceed 4 MB.
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        # Notice a dead connection during a call; no pings when idle, which TF Serving's
        # default server settings would answer with GOAWAY (too_many_pings).
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 0),
        # A DNS name with several model-server replicas: spread calls over all of them.
        ("grpc.lb_policy_name", "round_robin"),
        # Reconnect soon after a model server comes back, however long it was away (gRPC's
        # default backoff grows to 120 s); the readiness check also starts new channels.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


class GrpcBackend:
    name = "grpc"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.version = settings.model_version
        self._targets = {c.ENCODER_MODEL: settings.encoder_target, c.DECODER_MODEL: settings.decoder_target}
        # The contract's names are the models' roles; TF Serving may serve them under others.
        self._served_names = {c.ENCODER_MODEL: settings.encoder_model, c.DECODER_MODEL: settings.decoder_model}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, prediction_service_pb2_grpc.PredictionServiceStub] = {}

    def _channel(self, target: str) -> grpc.aio.Channel:
        if target not in self._channels:
            # One channel per target (created on the running loop: grpc.aio binds to it).
            self._channels[target] = grpc.aio.insecure_channel(target, options=channel_options(self.settings))
        return self._channels[target]

    def _stub(self, model: str) -> prediction_service_pb2_grpc.PredictionServiceStub:
        target = self._targets[model]
        if target not in self._stubs:
            self._stubs[target] = prediction_service_pb2_grpc.PredictionServiceStub(self._channel(target))
        return self._stubs[target]

    async def start(self) -> None:
        """Called on every (re)connect: each target must serve its model (WrongTarget, naming the
        setting, if not); an unpinned gateway follows a rollout to the newest pair."""
        await self.check_targets()
        if self.settings.model_version is None:
            # No pinned version: pin the decoder's newest, and ask the encoder for the same.
            response = await self._call(
                c.DECODER_MODEL,
                c.METADATA_SIGNATURE,
                {c.KEYS: np.array([c.MODEL_VERSION.encode()], dtype=object)},
                None,
                pin=False,
            )
            self.version = int(response.model_spec.version.value)

    async def check_targets(self, timeout_s: float = TARGET_CHECK_TIMEOUT_S) -> list[str]:
        """Raise WrongTarget when a target answers but does not serve its model (the two
        targets swapped, or a model served under another name). A target that does not
        answer, or answers without TF Serving's ModelService, is not judged here: returns
        the settings of those that did not answer."""
        silent = []
        for model, target in self._targets.items():
            name, role = self._served_names[model], _ROLES[model]
            serves = await self._serves(target, name, timeout_s)
            if serves is None:
                silent.append(f"MEMEFLY_{role}_TARGET={target}")
            if serves is not False:
                continue
            other = next(m for m in self._served_names if m != model)
            if await self._serves(target, self._served_names[other], timeout_s):
                hint = (
                    f"; it serves {self._served_names[other]}, the {_ROLES[other].lower()}'s model: "
                    f"point MEMEFLY_{role}_TARGET at the {role.lower()}'s TF Serving"
                )
            else:
                hint = f"; point MEMEFLY_{role}_TARGET at the server of {name}, or set MEMEFLY_{role}_MODEL to its name"
            raise WrongTarget(
                f"the {role.lower()}'s model server is misconfigured",
                internal=f"MEMEFLY_{role}_TARGET={target} serves no model named {name!r} (MEMEFLY_{role}_MODEL){hint}",
            )
        return silent

    async def _serves(self, target: str, name: str, timeout_s: float) -> bool | None:
        """Whether TARGET knows model NAME (any version, loaded or loading); None: no answer."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        stub = model_service_pb2_grpc.ModelServiceStub(self._channel(target))
        try:
            await stub.GetModelStatus(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as error:
            return False if error.code() == grpc.StatusCode.NOT_FOUND else None
        return True

    async def predict(
        self, model: str, signature: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        response = await self._call(model, signature, inputs, outputs, pin=True)
        return {name: from_proto(proto) for name, proto in response.outputs.items()}

    async def _call(
        self, model: str, signature: str, inputs: dict[str, np.ndarray], outputs: list[str] | None, pin: bool
    ) -> predict_pb2.PredictResponse:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self._served_names[model]
        request.model_spec.signature_name = signature
        if pin and self.version is not None:
            request.model_spec.version.value = self.version
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(to_proto(value))
        request.output_filter.extend(outputs or [])

        stub = self._stub(model)
        attempts = self.settings.retries + 1
        for attempt in range(attempts):
            try:
                return await stub.Predict(request, timeout=self.settings.call_timeout_s)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE and attempt + 1 < attempts:
                    # Full jitter, so that many waiting calls do not come back at once.
                    await asyncio.sleep(random.uniform(0, self.settings.retry_backoff_s * 2**attempt))
                    continue
                raise self._gateway_error(error, model, signature) from None
        raise AssertionError("unreachable")

    def _gateway_error(self, error: grpc.aio.AioRpcError, model: str, signature: str) -> GatewayError:
        # The client hears which model and what kind of failure; where it runs and the server's
        # own words (addresses, internals) go to the log only.
        what = f"{self._served_names[model]} v{self.version or 'latest'} ({signature})"
        internal = f"at {self._targets[model]}: {error.details()}"
        code = error.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(f"{what}: no answer within {self.settings.call_timeout_s:g} s", internal=internal)
        if code in _UNAVAILABLE:
            return ModelUnavailable(
                f"{what}: {code.name}", retry_after_s=self.settings.retry_after_s, internal=internal
            )
        return ModelError(f"{what}: {code.name}", internal=internal)

    async def close(self) -> None:
        channels = list(self._channels.values())  # new calls open new channels meanwhile
        self._channels.clear()
        self._stubs.clear()
        for channel in channels:
            await channel.close(grace=1.0)

    async def reset(self) -> None:
        """After a failed check: the next call opens new channels (no state left from the outage)."""
        await self.close()


def check_targets_now(settings: Settings) -> None:
    """At start, before serving: raise WrongTarget if a target serves another model than its
    setting says (the gateway would otherwise start and never turn ready)."""

    async def check() -> list[str]:
        backend = GrpcBackend(settings)
        try:
            return await backend.check_targets()
        finally:
            await backend.close()

    for setting in asyncio.run(check()):  # maybe still starting: readiness waits for it, and says so
        log.warning("%s does not answer yet: not ready until it does (is the setting right?)", setting)
