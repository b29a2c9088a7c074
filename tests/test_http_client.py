"""memefly.http: the typed HTTP client, sync and async, against a live gateway."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys

import pytest
from gateway_harness import gateway_settings, running_gateway
from PIL import Image

from memefly.http import AsyncClient, Caption, Client, MemeAnswer, MemeflyError, Readiness, Template

TEMPLATE = "Grumpy-Cat"


@pytest.fixture(scope="module")
def gateway(served_models_dir, loopback):
    settings = gateway_settings(
        served_models_dir, "grpc", loopback.target, api_keys="client-test-key", rate_limit="1000/minute"
    )
    with running_gateway(settings) as running:
        yield running


def png(color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 80), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_memes_for_a_template_and_for_an_image(gateway, tmp_path):
    with Client(gateway.url, api_key="client-test-key") as memefly:
        answer = memefly.memes(
            template=TEMPLATE, num_beams=3, num_return_sequences=2, max_length=6, request_id="from-the-client"
        )
        assert isinstance(answer, MemeAnswer) and answer.request_id == "from-the-client"
        assert len(answer.memes) == 2 and [m.rank for m in answer.memes] == [1, 2]
        assert all(m.boxes and m.text == "\n".join(m.boxes) for m in answer.memes)
        assert answer.template.name == TEMPLATE and answer.template.known is True and answer.image_sha256 is None
        path = tmp_path / "photo.png"
        path.write_bytes(png())
        for image in (path, png()):  # a path or bytes
            uploaded = memefly.memes(image=image, num_beams=2, num_return_sequences=1, max_length=4)
            assert len(uploaded.memes) == 1 and uploaded.image_sha256 and len(uploaded.templates) == 3


def test_render_templates_and_readiness(gateway):
    with Client(gateway.url, api_key="client-test-key") as memefly:
        drawn = memefly.render(image=png(), boxes=["top", "bottom"], format="jpeg")
        assert drawn[:3] == b"\xff\xd8\xff"
        templates = memefly.templates()
        assert templates and all(isinstance(t, Template) for t in templates)
        assert TEMPLATE in {t.name for t in templates}
        state = memefly.ready()
        assert isinstance(state, Readiness) and state.ready and state.model


def test_errors_carry_status_detail_request_id_and_retry_after(gateway, served_models_dir, loopback):
    with Client(gateway.url, api_key="client-test-key") as memefly:
        with pytest.raises(MemeflyError) as raised:
            memefly.memes(template="No Such Template At All")
        assert raised.value.status == 422 and raised.value.request_id
        with pytest.raises(ValueError, match="an image or a template"):
            memefly.memes()
    with Client(gateway.url) as anonymous, pytest.raises(MemeflyError) as raised:
        anonymous.templates()
    assert raised.value.status == 401 and "API key" in raised.value.detail
    limited = gateway_settings(served_models_dir, "grpc", loopback.target, rate_limit="1/minute")
    with running_gateway(limited) as running, Client(running.url) as memefly:
        memefly.memes(template=TEMPLATE, num_beams=2, num_return_sequences=1, max_length=4)
        with pytest.raises(MemeflyError) as raised:
            memefly.memes(template=TEMPLATE, num_beams=2, num_return_sequences=1, max_length=4)
    assert raised.value.status == 429 and 1 <= raised.value.retry_after <= 60


def test_the_async_client_does_the_same(gateway):
    async def run():
        async with AsyncClient(gateway.url, api_key="client-test-key") as memefly:
            answers = await asyncio.gather(
                *(memefly.memes(template=TEMPLATE, num_beams=2, num_return_sequences=1, max_length=4) for _ in range(3))
            )
            return answers, await memefly.templates(), await memefly.ready()

    answers, templates, state = asyncio.run(run())
    assert [len(a.memes) for a in answers] == [1, 1, 1] and len({a.request_id for a in answers}) == 3
    assert templates and state.ready


def test_streamed_captions_then_the_answer_sync_and_async(gateway):
    options = dict(template=TEMPLATE, num_return_sequences=3)
    with Client(gateway.url, api_key="client-test-key") as memefly:
        events = list(memefly.memes_stream(**options))
        with pytest.raises(MemeflyError) as raised:
            list(memefly.memes_stream(template="No Such Template At All"))
    assert raised.value.status == 422
    *captions, answer = events
    assert captions and all(isinstance(c, Caption) for c in captions) and isinstance(answer, MemeAnswer)
    assert [c.index for c in captions] == list(range(len(captions)))
    assert all(m.url and m.boxes in [c.boxes for c in captions] for m in answer.memes)

    async def run():
        async with AsyncClient(gateway.url, api_key="client-test-key") as memefly:
            return [event async for event in memefly.memes_stream(**options)]

    assert asyncio.run(run())[-1].memes == answer.memes


def test_the_client_imports_neither_tensorflow_nor_the_gateway():
    code = "import sys, memefly.http; print(sorted(m for m in ('tensorflow', 'gateway', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
