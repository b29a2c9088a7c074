"""API keys and per-key rate limits (gateway/access.py) on a live gateway."""

from __future__ import annotations

import pytest

from gateway.access import Keys
from gateway.settings import Settings
from gateway_harness import gateway_settings, running_gateway

TEMPLATE = {"template": "Grumpy-Cat", "num_beams": 2, "num_return_sequences": 1, "max_length": 4}


@pytest.fixture
def keyed(served_models_dir, loopback, tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\nteam-key 3/minute\n\nother-key\n")
    settings = gateway_settings(served_models_dir, "grpc", loopback.target, api_keys="listed-key",
                                api_keys_file=str(keys_file), rate_limit="2/minute")
    with running_gateway(settings) as running:
        yield running


def test_without_a_known_key_the_api_says_401(keyed):
    with keyed.client() as client:
        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic team-key"}):
            response = client.post("/memes", json=TEMPLATE, headers=headers)
            assert response.status_code == 401, headers
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "API key" in response.json()["detail"]
        assert client.get("/templates").status_code == 401


def test_a_key_in_either_header_is_let_in(keyed):
    with keyed.client() as client:
        assert client.post("/memes", json=TEMPLATE, headers={"X-API-Key": "listed-key"}).status_code == 200
        assert client.post("/memes", json=TEMPLATE, headers={"Authorization": "Bearer other-key"}).status_code == 200


def test_probes_metrics_and_the_page_need_no_key(keyed):
    with keyed.client() as client:
        for path in ("/healthz", "/readyz", "/metrics", "/"):
            assert client.get(path).status_code == 200, path
        page = client.get("/").text
        static = [p for p in ("/static/app.js", "/static/page.js", "/static/style.css") if p.split("/")[-1] in page]
        assert static and all(client.get(p).status_code == 200 for p in static)


def test_each_key_has_its_own_limit_then_429_with_retry_after(keyed):
    with keyed.client() as client:
        listed = [client.post("/memes", json=TEMPLATE, headers={"X-API-Key": "listed-key"}).status_code for _ in range(3)]
        assert listed == [200, 200, 429]  # the default, 2/minute
        refused = client.post("/memes", json=TEMPLATE, headers={"X-API-Key": "listed-key"})
        assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60
        assert "2 per 1 minute" in refused.json()["detail"]
        # Another key is counted apart, with its own limit from the keys file (3/minute).
        team = [client.post("/memes", json=TEMPLATE, headers={"Authorization": "Bearer team-key"}).status_code
                for _ in range(4)]
        assert team == [200, 200, 200, 429]


def test_without_keys_the_limit_counts_per_client_address(served_models_dir, loopback):
    settings = gateway_settings(served_models_dir, "grpc", loopback.target, rate_limit="1/minute")
    with running_gateway(settings) as running, running.client() as client:
        assert [client.post("/memes", json=TEMPLATE).status_code for _ in range(2)] == [200, 429]
        assert client.get("/healthz").status_code == 200


def test_key_settings_are_checked(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("a 10/second\nb\n")
    loaded = Keys.load("c, d", str(keys))
    assert set(loaded.limits) == {"a", "b", "c", "d"} and str(loaded.limits["a"]) == "10 per 1 second"
    assert loaded.find("b") == "b" and loaded.find("e") is None and loaded.find(None) is None
    keys.write_text("a ten-a-day\n")
    with pytest.raises(ValueError, match="MEMEFLY_API_KEYS_FILE line 1"):
        Settings.from_env({"MEMEFLY_API_KEYS_FILE": str(keys)})
    with pytest.raises(ValueError, match="MEMEFLY_RATE_LIMIT"):
        Settings.from_env({"MEMEFLY_RATE_LIMIT": "often"})
    with pytest.raises(ValueError, match="MEMEFLY_API_KEYS_FILE"):
        Settings.from_env({"MEMEFLY_API_KEYS_FILE": str(tmp_path / "missing")})
