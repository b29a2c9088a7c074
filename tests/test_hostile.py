"""Every case of the hostile corpus (tests/hostile/cases.py) against a live gateway: the expected
4xx (never a 5xx), within the time limit, nothing leaked or echoed, no injected header, and
the gateway still answers /healthz right after."""

from __future__ import annotations

import time

import pytest
from hostile.cases import CASES, TIME_LIMIT_S


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request_gets_a_clear_4xx_fast(site, case):
    request = case.build()
    with site.client(timeout=60) as client:
        started = time.perf_counter()
        response = client.request(case.method, case.path, **request)
        took = time.perf_counter() - started
        assert response.status_code in case.expect, (response.status_code, response.text[:300])
        assert took < TIME_LIMIT_S, f"{took:.1f} s"
        for text in case.not_in_body:
            assert text not in response.text
        assert "x-injected" not in response.headers
        if response.status_code >= 400:
            assert response.headers["content-type"].startswith("application/json")
        assert client.get("/healthz").status_code == 200
