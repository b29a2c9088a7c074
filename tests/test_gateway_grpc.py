"""The gRPC backend when TF Serving misbehaves: retries, deadlines, errors, readiness, disconnects."""

from __future__ import annotations

import asyncio
import socket
import time

import grpc
import numpy as np
import pytest
from gateway_harness import gateway_settings, running_gateway

from gateway.backends.grpc_backend import GrpcBackend
from memefly import contract as c
from model_export.loopback_serving import start_loopback_server

TEMPLATE = {"template": "Grumpy-Cat", "num_beams": 2, "num_return_sequences": 2, "max_length": 6}


@pytest.fixture
def serving(served_models_dir, loopback):
    """A loopback TF Serving of our own (a test may stop it), sharing the session's loaded models."""
    server = start_loopback_server(loopback.models)
    yield server
    server.close()


def settings_for(served_models_dir, server, **overrides):
    return gateway_settings(served_models_dir, "grpc", server.target, **overrides)


def eventually(condition, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_unavailable_is_retried(served_models_dir, serving):
    with running_gateway(settings_for(served_models_dir, serving, retries=3)) as gateway, gateway.client() as client:
        serving.reset()
        serving.fail_next(grpc.StatusCode.UNAVAILABLE, count=2, model=c.DECODER_MODEL, rpc="Predict")
        response = client.post("/memes", json=TEMPLATE)
        assert response.status_code == 200, response.text
        inits = [call for call in serving.calls if call.signature == c.INIT_SIGNATURE]
        assert len(inits) == 3  # two refused, the third served


def test_persistent_unavailability_is_503_with_retry_after(served_models_dir, serving):
    with (
        running_gateway(settings_for(served_models_dir, serving, retries=1, retry_after_s=7)) as gateway,
        gateway.client() as client,
    ):
        serving.fail_next(grpc.StatusCode.UNAVAILABLE, count=2, model=c.DECODER_MODEL, rpc="Predict")
        response = client.post("/memes", json=TEMPLATE)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "7"
        assert "UNAVAILABLE" in response.json()["detail"]


def test_model_side_errors_are_502_never_500(served_models_dir, serving, caplog):
    with running_gateway(settings_for(served_models_dir, serving)) as gateway, gateway.client() as client:
        serving.fail_next(
            grpc.StatusCode.INVALID_ARGUMENT, count=1, model=c.DECODER_MODEL, rpc="Predict", details="bad tensor"
        )
        response = client.post("/memes", json=TEMPLATE)
        assert response.status_code == 502
        detail = response.json()["detail"]
        assert "INVALID_ARGUMENT" in detail and c.DECODER_MODEL in detail
        # Where the model server runs and what it said stay in the log.
        assert serving.target not in detail and "bad tensor" not in detail
        assert any(serving.target in r.getMessage() and "bad tensor" in r.getMessage() for r in caplog.records)
        assert client.post("/memes", json=TEMPLATE).status_code == 200  # one failure, not a broken gateway


def test_a_slow_model_server_gives_504(served_models_dir, serving):
    settings = settings_for(served_models_dir, serving, call_timeout_s=0.3, retries=0)
    with running_gateway(settings) as gateway, gateway.client() as client:
        serving.set_delay(1.0, model=c.DECODER_MODEL)
        response = client.post("/memes", json=TEMPLATE)
        serving.set_delay(0.0)
        assert response.status_code == 504
        assert "0.3 s" in response.json()["detail"]


def test_request_deadline_gives_504_and_frees_the_beams(served_models_dir, serving):
    settings = settings_for(served_models_dir, serving, request_timeout_s=0.5)
    with running_gateway(settings) as gateway, gateway.client() as client:
        serving.set_delay(0.05, model=c.DECODER_MODEL)  # ~20 steps take ~1 s, over the 0.5 s deadline
        response = client.post("/memes", json={**TEMPLATE, "max_length": 20, "min_length": 20})
        assert response.status_code == 504
        assert eventually(lambda: gateway.service.scheduler.depth == 0)
        serving.set_delay(0.0)


def test_a_client_that_disconnects_frees_its_beams(served_models_dir, serving):
    with running_gateway(settings_for(served_models_dir, serving)) as gateway:
        serving.set_delay(0.1, model=c.DECODER_MODEL)
        host, port = gateway.url.removeprefix("http://").split(":")
        body = b'{"template": "Grumpy-Cat", "max_length": 30, "min_length": 30}'
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                b"POST /memes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            assert eventually(lambda: gateway.service.scheduler.depth == 1)
        # Gone long before its 31 steps (>= 3 s at 0.1 s a step) could have finished.
        assert eventually(lambda: gateway.service.scheduler.depth == 0, timeout_s=2.0)
        serving.set_delay(0.0)


def test_readiness_follows_the_model_servers(served_models_dir, serving):
    with running_gateway(settings_for(served_models_dir, serving)) as gateway, gateway.client() as client:
        serving.stop()
        body = gateway.wait_ready(ready=False, timeout_s=20)
        assert "UNAVAILABLE" in body["reason"]
        response = client.post("/memes", json=TEMPLATE)
        assert response.status_code == 503 and "retry-after" in response.headers
        assert client.get("/readyz").status_code == 503
        serving.start()
        gateway.wait_ready(ready=True, timeout_s=30)
        assert client.post("/memes", json=TEMPLATE).status_code == 200


def test_ready_again_within_two_seconds_of_the_model_server_whatever_the_outage(served_models_dir, serving):
    """gRPC's own reconnect backoff grows to minutes; the gateway must not wait for it."""
    import time

    with running_gateway(settings_for(served_models_dir, serving, health_interval_s=5.0)) as gateway:
        serving.stop()
        gateway.wait_ready(ready=False, timeout_s=20)
        time.sleep(8)  # long enough for a default backoff to have grown past several seconds
        serving.start()
        back = time.monotonic()
        gateway.wait_ready(ready=True, timeout_s=30)
        assert time.monotonic() - back <= 2.0


def test_not_ready_until_the_models_are_there(served_models_dir, serving):
    settings = settings_for(served_models_dir, serving, model_version=7)
    with running_gateway(settings, wait=False) as gateway:
        assert eventually(lambda: "NOT_FOUND" in gateway.service.readiness.reason)
        body = gateway.wait_ready(ready=False, timeout_s=5)
        assert "NOT_FOUND" in body["reason"] and "v7" in body["reason"]


class MismatchedTemplates(GrpcBackend):
    """TF Serving serving an encoder exported for other templates (as after a half-done upgrade)."""

    async def predict(self, model, signature, inputs, outputs=None):
        out = await super().predict(model, signature, inputs, outputs)
        if model == c.ENCODER_MODEL and signature == c.METADATA_SIGNATURE:
            keys = [k.decode() for k in inputs[c.KEYS]]
            out[c.VALUES] = np.array(
                [b"0" * 64 if k == c.TEMPLATE_FINGERPRINT else v for k, v in zip(keys, out[c.VALUES], strict=True)],
                dtype=object,
            )
        return out


def test_template_fingerprint_mismatch_is_not_ready(served_models_dir, serving):
    settings = settings_for(served_models_dir, serving)
    with running_gateway(settings, backend=MismatchedTemplates(settings), wait=False) as gateway:
        assert eventually(lambda: "do not belong together" in gateway.service.readiness.reason)
        assert "000000000000" in gateway.service.readiness.reason
        with gateway.client() as client:
            assert client.get("/readyz").status_code == 503
            assert client.post("/memes", json=TEMPLATE).status_code == 503


def test_replies_in_tensor_content_are_read_too(served_models_dir, serving):
    with running_gateway(settings_for(served_models_dir, serving)) as gateway, gateway.client() as client:
        plain = client.post("/memes", json=TEMPLATE).json()["memes"]
        serving.tensor_content = True
        assert client.post("/memes", json=TEMPLATE).json()["memes"] == plain


def test_unpinned_version_pins_the_decoders_newest(served_models_dir, serving):
    async def pinned():
        backend = GrpcBackend(settings_for(served_models_dir, serving, model_version=None))
        await backend.start()
        out = await backend.predict(
            c.ENCODER_MODEL, c.METADATA_SIGNATURE, {c.KEYS: np.array([b"model_version"], dtype=object)}
        )
        await backend.close()
        return backend.version, out[c.VALUES][0]

    version, encoder_version = asyncio.run(pinned())
    assert version == 1 and encoder_version == b"1"
    assert serving.calls[-1].version == 1


def test_warm_up_runs_before_ready(served_models_dir, serving):
    serving.reset()
    with running_gateway(settings_for(served_models_dir, serving)):
        # No request was made: every call so far is start-up's, and readiness waited for them.
        called = {(call.model, call.signature) for call in serving.calls}
    assert {
        (c.ENCODER_MODEL, c.ENCODER_BYTES_SIGNATURE),
        (c.DECODER_MODEL, c.INIT_SIGNATURE),
        (c.DECODER_MODEL, c.STEP_SIGNATURE),
        (c.DECODER_MODEL, c.VOCABULARY_SIGNATURE),
        (c.DECODER_MODEL, c.TEMPLATES_SIGNATURE),
    } <= called


def test_one_overloaded_call_does_not_take_the_gateway_out_of_rotation(served_models_dir, serving):
    with running_gateway(settings_for(served_models_dir, serving, retries=0)) as gateway, gateway.client() as client:
        serving.fail_next(grpc.StatusCode.RESOURCE_EXHAUSTED, count=1, model=c.DECODER_MODEL, rpc="Predict")
        response = client.post("/memes", json=TEMPLATE)
        assert response.status_code == 503 and "RESOURCE_EXHAUSTED" in response.json()["detail"]
        # The monitor checks the servers at once; they answer, so the gateway stays in rotation.
        assert eventually(lambda: client.get("/readyz").status_code == 200)
        assert client.post("/memes", json=TEMPLATE).status_code == 200


def test_channel_options_allow_big_batches_and_spare_idle_pings():
    from gateway.backends.grpc_backend import channel_options
    from gateway.settings import Settings

    options = dict(channel_options(Settings(max_message_bytes=123 << 20)))
    assert options["grpc.max_send_message_length"] == options["grpc.max_receive_message_length"] == 123 << 20
    assert options["grpc.keepalive_permit_without_calls"] == 0  # TF Serving answers idle pings with GOAWAY
    assert options["grpc.keepalive_time_ms"] > 0
