"""API keys and per-key rate limits (gateway/api/access.py) on a live gateway."""

from __future__ import annotations

import pytest
from gateway_harness import gateway_settings, running_gateway

from gateway.api.access import Keys
from gateway.settings import Settings

TEMPLATE = {"template": "Grumpy-Cat", "num_beams": 2, "num_return_sequences": 1, "max_length": 4}


@pytest.fixture
def keyed(served_models_dir, loopback, tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\nteam-key 3/minute\n\nother-key\n")  # at least 8 characters each
    settings = gateway_settings(
        served_models_dir,
        "grpc",
        loopback.target,
        api_keys="listed-key",
        api_keys_file=str(keys_file),
        rate_limit="2/minute",
    )
    with running_gateway(settings) as running:
        yield running


def test_without_a_known_key_the_api_says_401(keyed):
    with keyed.client() as client:
        for headers in (
            {},
            {"X-API-Key": "wrong"},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Basic team-key"},
        ):
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
        listed = [
            client.post("/memes", json=TEMPLATE, headers={"X-API-Key": "listed-key"}).status_code for _ in range(3)
        ]
        assert listed == [200, 200, 429]  # the default, 2/minute
        refused = client.post("/memes", json=TEMPLATE, headers={"X-API-Key": "listed-key"})
        assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60
        assert "2 per 1 minute" in refused.json()["detail"]
        # Another key is counted apart, with its own limit from the keys file (3/minute).
        team = [
            client.post("/memes", json=TEMPLATE, headers={"Authorization": "Bearer team-key"}).status_code
            for _ in range(4)
        ]
        assert team == [200, 200, 200, 429]


def test_without_keys_the_limit_counts_posts_per_client_address(served_models_dir, loopback):
    settings = gateway_settings(
        served_models_dir, "grpc", loopback.target, rate_limit="1/minute", forwarded_allow_ips="127.0.0.1"
    )
    with running_gateway(settings) as running, running.client() as client:
        assert [client.post("/memes", json=TEMPLATE).status_code for _ in range(2)] == [200, 429]
        # GETs are not counted: the page's template list and thumbnails never hit the limit.
        assert [client.get("/templates").status_code for _ in range(3)] == [200] * 3
        # Behind a trusted proxy, the client's address is the one it forwards.
        other = {"X-Forwarded-For": "198.51.100.7"}
        assert [client.post("/memes", json=TEMPLATE, headers=other).status_code for _ in range(2)] == [200, 429]


def test_a_forwarded_address_from_an_untrusted_peer_is_ignored(served_models_dir, loopback):
    settings = gateway_settings(
        served_models_dir, "grpc", loopback.target, rate_limit="1/minute", forwarded_allow_ips="10.9.9.9"
    )
    with running_gateway(settings) as running, running.client() as client:
        answers = [
            client.post("/memes", json=TEMPLATE, headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code
            for i in range(2)
        ]
        assert answers == [200, 429]  # both counted as this test's own address


def test_guessing_keys_is_slowed_down(keyed):
    with keyed.client() as client:
        answers = [client.get("/templates", headers={"X-API-Key": f"guess-{i:04d}"}).status_code for i in range(21)]
    assert answers == [401] * 20 + [429]


def test_refusals_carry_the_request_id_and_the_security_headers(keyed):
    with keyed.client() as client:
        refused = client.post("/memes", json=TEMPLATE, headers={"X-Request-ID": "who-knocked"})
    assert refused.status_code == 401
    assert refused.headers["x-request-id"] == "who-knocked"
    assert refused.headers["x-content-type-options"] == "nosniff" and refused.headers["x-frame-options"] == "DENY"


def test_the_api_description_needs_no_key(keyed):
    with keyed.client() as client:
        assert client.get("/openapi.json").status_code == 200 and client.get("/docs").status_code == 200


def test_a_failing_counter_store_lets_requests_through_and_says_so(caplog):
    """Redis down: the limit is a guard, not a reason for an outage (one warning a minute)."""
    import asyncio

    import httpx
    from limits.errors import StorageError
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from gateway.api.access import AccessMiddleware

    async def work(request):
        return PlainTextResponse("done")

    middleware = AccessMiddleware(
        Starlette(routes=[Route("/work", work, methods=["POST"])]), Keys({}), "1/minute", "async+memory://"
    )

    async def broken(*args, **kwargs):
        raise StorageError(ConnectionError("redis: connection refused"))

    middleware.limiter.hit = broken

    async def three_posts() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=middleware), base_url="http://test") as client:
            return [(await client.post("/work")).status_code for _ in range(3)]

    assert asyncio.run(three_posts()) == [200, 200, 200]
    warnings = [r for r in caplog.records if "rate-limit storage failed" in r.getMessage()]
    assert len(warnings) == 1 and "connection refused" in warnings[0].getMessage()


def test_key_settings_are_checked(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("alpha-key-1 10/second  # the mobile app\nbeta#key-2\n# a comment line\n")
    loaded = Keys.load("gamma-key-3, delta-key-4", str(keys))
    assert set(loaded.limits) == {"alpha-key-1", "beta#key-2", "gamma-key-3", "delta-key-4"}
    assert str(loaded.limits["alpha-key-1"]) == "10 per 1 second" and loaded.limits["beta#key-2"] is None
    assert loaded.find("beta#key-2") == "beta#key-2" and loaded.find("beta") is None and loaded.find(None) is None
    for bad in ("short", "caf\u00e9-caf\u00e9-key"):
        with pytest.raises(ValueError, match="at least 8 printable ASCII"):
            Keys.load(bad, "")
    with pytest.raises(ValueError, match="async storage"):
        Settings.from_env({"MEMEFLY_RATE_LIMIT_STORAGE": "memory://"})
    with pytest.raises(ValueError) as raised:
        Settings.from_env({"MEMEFLY_RATE_LIMIT_STORAGE": "async+nosuch://user:secret@host"})
    assert "secret" not in str(raised.value)
    assert "listed" not in repr(Settings(api_keys="listed-key-1"))  # keys stay out of logs of the settings
    keys.write_text("alpha-key-1 ten-a-day\n")
    with pytest.raises(ValueError, match="MEMEFLY_API_KEYS_FILE line 1"):
        Settings.from_env({"MEMEFLY_API_KEYS_FILE": str(keys)})
    with pytest.raises(ValueError, match="MEMEFLY_RATE_LIMIT"):
        Settings.from_env({"MEMEFLY_RATE_LIMIT": "often"})
    with pytest.raises(ValueError, match="MEMEFLY_API_KEYS_FILE"):
        Settings.from_env({"MEMEFLY_API_KEYS_FILE": str(tmp_path / "missing")})


def test_shared_image_urls_need_no_key_but_count_per_address(served_models_dir, loopback, tiny_dataset):
    settings = gateway_settings(
        served_models_dir,
        "grpc",
        loopback.target,
        api_keys="listed-key",
        rate_limit="2/minute",
        templates_dir=tiny_dataset / "dataset" / "templates" / "img",
    )
    with running_gateway(settings) as running, running.client() as client:
        url = "/images/templates/Grumpy-Cat/no_key/needed.png"
        assert [client.get(url).status_code for _ in range(2)] == [200, 200]
        refused = client.get(url)
        assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60
        assert client.get("/templates").status_code == 401  # the rest of the API still needs a key
