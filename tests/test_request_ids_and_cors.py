"""X-Request-ID on every answer and log line, and CORS for the origins a deployment allows."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import httpx
import pytest
from gateway_harness import gateway_settings, running_gateway
from net import free_port, wait_until_ready

from gateway.settings import Settings

TEMPLATE = {"template": "Grumpy-Cat", "num_beams": 2, "num_return_sequences": 2, "max_length": 6}
MADE_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def gateway(served_models_dir, loopback):
    settings = gateway_settings(served_models_dir, "grpc", loopback.target, cors_origins="https://app.example")
    with running_gateway(settings) as running:
        yield running


def test_an_id_is_made_for_a_request_without_one(gateway):
    with gateway.client() as client:
        first, second = client.get("/healthz"), client.post("/memes", json=TEMPLATE)
    assert first.status_code == 200 and second.status_code == 200
    ids = [r.headers["x-request-id"] for r in (first, second)]
    assert all(MADE_ID.fullmatch(i) for i in ids) and ids[0] != ids[1]


@pytest.mark.parametrize(
    "method, path, body, status",
    [
        ("GET", "/healthz", None, 200),
        ("POST", "/memes", TEMPLATE, 200),
        ("POST", "/memes", {"template": "No Such Template At All"}, 422),
        ("POST", "/memes", {"num_beams": "many"}, 422),
    ],
)
def test_a_plain_id_from_the_caller_comes_back_on_every_answer(gateway, method, path, body, status):
    with gateway.client() as client:
        response = client.request(method, path, json=body, headers={"X-Request-ID": "client-42.a:b_C"})
    assert response.status_code == status
    assert response.headers["x-request-id"] == "client-42.a:b_C"


@pytest.mark.parametrize("odd", ["has space", "x" * 129, "caf\u00e9", "a\tb", "semi;colon", "<script>"])
def test_an_odd_id_is_replaced_by_a_new_one(gateway, odd):
    with gateway.client() as client:
        response = client.get("/healthz", headers={"X-Request-ID": odd.encode("utf-8")})
    assert MADE_ID.fullmatch(response.headers["x-request-id"])


def test_an_unexpected_error_still_answers_500_with_the_id(gateway, monkeypatch):
    async def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(gateway.service, "memes", broken)
    with gateway.client() as client:
        response = client.post("/memes", json=TEMPLATE, headers={"X-Request-ID": "bug-report-9"})
    assert response.status_code == 500 and response.json() == {"detail": "internal error (logged)"}
    assert response.headers["x-request-id"] == "bug-report-9"


def test_cors_for_an_allowed_origin_only(gateway):
    with gateway.client() as client:
        preflight = client.options(
            "/memes",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-api-key",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        answer = client.post("/memes", json=TEMPLATE, headers={"Origin": "https://app.example"})
        assert answer.headers["access-control-allow-origin"] == "https://app.example"
        exposed = answer.headers["access-control-expose-headers"].lower()
        assert "x-request-id" in exposed and "retry-after" in exposed
        other = client.options(
            "/memes", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        plain = client.post("/memes", json=TEMPLATE, headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in plain.headers


def test_no_cors_unless_origins_are_set(served_models_dir, loopback):
    with (
        running_gateway(gateway_settings(served_models_dir, "grpc", loopback.target)) as running,
        running.client() as client,
    ):
        preflight = client.options(
            "/memes", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in preflight.headers


def test_cors_origins_are_checked():
    assert Settings.from_env({"MEMEFLY_CORS_ORIGINS": "https://a.example, http://localhost:3000"}).cors_origin_list == [
        "https://a.example",
        "http://localhost:3000",
    ]
    assert Settings.from_env({"MEMEFLY_CORS_ORIGINS": "*"}).cors_origin_list == ["*"]
    # As browsers send them: lower-case, no default port.
    assert Settings.from_env(
        {"MEMEFLY_CORS_ORIGINS": "HTTPS://App.Example:443,http://a.example:80"}
    ).cors_origin_list == ["https://app.example", "http://a.example"]
    for bad in ("a.example", "https://a.example/path", "ftp://a.example"):
        with pytest.raises(ValueError, match="MEMEFLY_CORS_ORIGINS"):
            Settings.from_env({"MEMEFLY_CORS_ORIGINS": bad})


def test_every_log_line_of_a_request_carries_its_id(loopback, tmp_path):
    """memefly serve as deployed: uvicorn's access line and the gateway's own lines."""
    port = free_port()
    log = tmp_path / "serve.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "memefly.cli",
            "serve",
            "--port",
            str(port),
            "--backend",
            "grpc",
            "--encoder-target",
            loopback.target,
            "--decoder-target",
            loopback.target,
        ],
        env=dict(os.environ),
        stderr=log.open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, 120, log)
        ok = httpx.post(url + "/memes", json=TEMPLATE, headers={"X-Request-ID": "trace-me-1"}, timeout=60)
        gone = httpx.post(
            url + "/memes",
            json={"template": "No Such Template At All"},
            headers={"X-Request-ID": "trace-me-2"},
            timeout=60,
        )
        assert (ok.status_code, gone.status_code) == (200, 422)
    finally:
        process.terminate()
        process.wait(60)
    lines = log.read_text().splitlines()
    access = [line for line in lines if '"POST /memes HTTP/1.1"' in line]
    assert any("[trace-me-1]" in line and '" 200 ' in line for line in access), access
    assert any("[trace-me-2]" in line and '" 422 ' in line for line in access), access
    # Lines outside any request say so, in the same format.
    assert any("[-]:" in line and "ready=True" in line for line in lines), lines[-20:]
