"""MEMEFLY_WIRE_STATE=float16: the decoder's GRU state and context on the wire at half size."""

from __future__ import annotations

import numpy as np
from gateway_harness import gateway_settings, running_gateway

from memefly import contract as c

TEMPLATE = {"template": "Grumpy-Cat", "num_beams": 2, "num_return_sequences": 2, "max_length": 6}


def test_the_state_travels_as_float16_when_asked(served_models_dir, loopback):
    """MEMEFLY_WIRE_STATE=float16: every step call is the decoder's step_float16, with the same
    memes for a seeded request as the float32 wire on this model."""
    answers = {}
    for wire in ("float32", "float16"):
        loopback.reset()
        settings = gateway_settings(served_models_dir, "grpc", loopback.target, wire_state=wire)
        with running_gateway(settings) as gateway, gateway.client() as client:
            loopback.reset()
            response = client.post("/memes", json={**TEMPLATE, "num_beams": 4, "num_return_sequences": 3})
            assert response.status_code == 200, response.text
            answers[wire] = [m["boxes"] for m in response.json()["memes"]]
        steps = {
            call.signature for call in loopback.calls if call.signature in (c.STEP_SIGNATURE, c.STEP_FLOAT16_SIGNATURE)
        }
        assert steps == {c.STEP_FLOAT16_SIGNATURE if wire == "float16" else c.STEP_SIGNATURE}
    assert answers["float16"] == answers["float32"]


def test_a_decoder_without_the_float16_step_is_not_ready_with_the_setting(served_models_dir, loopback):
    from gateway.backends.grpc_backend import GrpcBackend

    class Older(GrpcBackend):  # a decoder exported before step_float16: no such metadata key
        async def predict(self, model, signature, inputs, outputs=None):
            out = await super().predict(model, signature, inputs, outputs)
            if model == c.DECODER_MODEL and signature == c.METADATA_SIGNATURE:
                keys = [k.decode() for k in inputs[c.KEYS]]
                out[c.VALUES] = np.array(
                    [b"" if k == c.WIRE_DTYPES else v for k, v in zip(keys, out[c.VALUES], strict=True)], dtype=object
                )
            return out

    settings = gateway_settings(served_models_dir, "grpc", loopback.target, wire_state="float16")
    with running_gateway(settings, backend=Older(settings), wait=False) as gateway:
        body = gateway.wait_ready(ready=False, timeout_s=10)
        assert "no float16 step" in body["reason"] and "MEMEFLY_WIRE_STATE" in body["reason"]
    settings = gateway_settings(served_models_dir, "grpc", loopback.target)
    with running_gateway(settings, backend=Older(settings)) as gateway:  # float32: older decoders still serve
        assert gateway.service.readiness.ready
