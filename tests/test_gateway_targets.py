"""Where the gateway finds its models over gRPC: the two targets, the served model names, and
the start-up check that refuses a swapped or misnamed target with the setting to fix."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from gateway_harness import gateway_settings, running_gateway
from net import free_port

from gateway.backends.grpc_backend import check_targets_now
from gateway.errors import WrongTarget
from gateway.settings import Settings
from memefly import contract as c
from model_export.loopback_serving import start_loopback_server

TEMPLATE = {"template": "Grumpy-Cat", "num_beams": 2, "num_return_sequences": 2, "max_length": 6}


@pytest.fixture(scope="module")
def split_servers(loopback):
    """The compose layout: one TF Serving for the encoder, another for the decoder."""
    encoder = start_loopback_server(loopback.models, model_names=[c.ENCODER_MODEL])
    decoder = start_loopback_server(loopback.models, model_names=[c.DECODER_MODEL])
    yield encoder, decoder
    encoder.close()
    decoder.close()


@pytest.fixture(scope="module")
def kserve_named(loopback):
    """Both models under names without underscores, as KServe serves an InferenceService's model."""
    models = {"memefly-encoder": loopback.models[c.ENCODER_MODEL], "memefly-decoder": loopback.models[c.DECODER_MODEL]}
    server = start_loopback_server(models)
    yield server
    server.close()


def test_the_default_targets_are_the_ports_compose_publishes():
    settings = Settings.from_env({})
    assert (settings.encoder_target, settings.decoder_target) == ("localhost:8500", "localhost:8510")
    assert (settings.encoder_model, settings.decoder_model) == (c.ENCODER_MODEL, c.DECODER_MODEL)
    named = Settings.from_env({"MEMEFLY_ENCODER_MODEL": "memefly-encoder", "MEMEFLY_DECODER_MODEL": "memefly-decoder"})
    assert (named.encoder_model, named.decoder_model) == ("memefly-encoder", "memefly-decoder")


def test_separate_servers_serve_memes(served_models_dir, split_servers):
    encoder, decoder = split_servers
    settings = gateway_settings(served_models_dir, "grpc", encoder_target=encoder.target, decoder_target=decoder.target)
    check_targets_now(settings)
    with running_gateway(settings) as gateway, gateway.client() as client:
        assert client.post("/memes", json=TEMPLATE).status_code == 200


@pytest.mark.parametrize("swap", ["both", "decoder"])
def test_a_swapped_target_is_refused_naming_the_setting(served_models_dir, split_servers, swap):
    encoder, decoder = split_servers
    targets = (decoder.target, encoder.target) if swap == "both" else (encoder.target, encoder.target)
    settings = gateway_settings(served_models_dir, "grpc", encoder_target=targets[0], decoder_target=targets[1])
    with pytest.raises(WrongTarget) as raised:
        check_targets_now(settings)
    role, served = ("ENCODER", c.DECODER_MODEL) if swap == "both" else ("DECODER", c.ENCODER_MODEL)
    message = raised.value.logged
    assert f"MEMEFLY_{role}_TARGET={targets[0] if role == 'ENCODER' else targets[1]}" in message
    assert f"it serves {served}" in message
    # The client-facing text says what is wrong, not where.
    assert encoder.target not in raised.value.detail and decoder.target not in raised.value.detail


def test_a_misnamed_model_is_refused_naming_the_model_setting(served_models_dir, kserve_named):
    settings = gateway_settings(served_models_dir, "grpc", kserve_named.target)
    with pytest.raises(WrongTarget) as raised:
        check_targets_now(settings)
    assert f"serves no model named '{c.ENCODER_MODEL}'" in raised.value.logged
    assert "set MEMEFLY_ENCODER_MODEL to its name" in raised.value.logged


def test_model_names_are_settings(served_models_dir, kserve_named):
    settings = gateway_settings(
        served_models_dir, "grpc", kserve_named.target, encoder_model="memefly-encoder", decoder_model="memefly-decoder"
    )
    check_targets_now(settings)
    kserve_named.reset()
    with running_gateway(settings) as gateway, gateway.client() as client:
        response = client.post("/memes", json=TEMPLATE)
        assert response.status_code == 200, response.text
    assert {call.model for call in kserve_named.calls} == {"memefly-encoder", "memefly-decoder"}


def test_a_target_that_does_not_answer_is_left_to_readiness_with_the_setting_logged(
    served_models_dir, split_servers, caplog
):
    encoder, _ = split_servers
    silent = f"127.0.0.1:{free_port()}"
    settings = gateway_settings(served_models_dir, "grpc", encoder_target=encoder.target, decoder_target=silent)
    check_targets_now(settings)  # no verdict: the server may still be starting
    (record,) = [r for r in caplog.records if "does not answer" in r.getMessage()]
    assert f"MEMEFLY_DECODER_TARGET={silent}" in record.getMessage()


def test_a_target_swapped_later_makes_the_gateway_not_ready(served_models_dir, split_servers):
    """Checked again on every reconnect: not ready, with the reason, rather than calling the wrong model."""
    encoder, _ = split_servers
    settings = gateway_settings(served_models_dir, "grpc", encoder_target=encoder.target, decoder_target=encoder.target)
    with running_gateway(settings, wait=False) as gateway:
        body = gateway.wait_ready(ready=False, timeout_s=10)
        assert "decoder's model server is misconfigured" in body["reason"]


def test_serve_exits_at_once_with_the_setting_to_fix(split_servers):
    encoder, _ = split_servers
    env = dict(os.environ, MEMEFLY_ENCODER_TARGET=encoder.target, MEMEFLY_DECODER_TARGET=encoder.target)
    result = subprocess.run(
        [sys.executable, "-m", "memefly.cli", "serve", "--backend", "grpc", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"MEMEFLY_DECODER_TARGET={encoder.target}" in last
    assert f"it serves {c.ENCODER_MODEL}" in last
